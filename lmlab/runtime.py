"""What a run computes on, decided once: the device, the precision, whether the step is compiled,
the order of the attention backends and the device's peak FLOP/s. `resolve_runtime` turns the
config into one `Runtime`, which the trainer, the evaluation and the bench all take."""
from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
import torch

from lmlab.errors import ConfigError
from lmlab.flops import peak_flops

log = logging.getLogger(__name__)

# train.precision=auto on a CPU with native bf16 (AVX-512 BF16 here, 2 threads or 1, loaded
# machine): bf16 autocast trained d_model 128-256 models 1.44-1.7x faster than fp32 (vocabulary
# 8192), d_model 96 1.14x, and the tiny ones 0.55-0.61x (d_model 32-64, vocabulary 512), where the
# casts around every small matmul cost more than the matmul saves. docs/speed.md has the rows.
CPU_BF16_MIN_D_MODEL = 128


def resolve_device(name: str, local_gpu: int | None = None) -> torch.device:
    """train.device as a device; CUDA's is GPU `local_gpu` when given (under several processes,
    each local rank's own: `Ranks.local_gpu`; the CPU is shared)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device", "cuda was asked for but no CUDA device is available")
    if name == "cuda" and local_gpu is not None:
        return torch.device("cuda", local_gpu)
    return torch.device(name)


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX), from the flags Linux lists
    in /proc/cpuinfo; elsewhere no: without it torch emulates bf16 matmuls, slower than fp32."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(device: torch.device, precision: str, d_model: int) -> str:
    """bf16 or fp32. `auto` is bf16 on CUDA, and on a CPU with native bf16 for models at least
    CPU_BF16_MIN_D_MODEL wide (where it was measured faster); fp32 elsewhere."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if d_model >= CPU_BF16_MIN_D_MODEL and cpu_has_native_bf16() else "fp32"


def use_compile(setting: str, device: torch.device) -> bool:
    """train.compile: auto compiles on CUDA only. On 2 CPU cores compiling the small model took
    ~35 s and won 3% (5.8k -> 6.0k tokens/s), which a run of a few hundred steps never pays back."""
    setting = str(setting).lower()  # `train.compile=true` reaches a str field as "True"
    return device.type == "cuda" if setting == "auto" else setting == "true"


def attention_order(setting: str, deterministic: bool, device: torch.device) -> tuple | None:
    """SDPA's backends in the order train.attention asks for; None: PyTorch's own. `auto` prefers
    cuDNN's kernels on Hopper, where they ran training shapes 1.7-2.3x faster than FlashAttention-2
    (PyTorch's first choice) in transformers#48163, and the math kernels under train.deterministic,
    whose backward has no atomics."""
    from torch.nn.attention import SDPBackend

    order = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    if setting == "auto":
        if deterministic:
            setting = "math"
        elif device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9:
            setting = "cudnn"
        else:
            return None
    first = order.pop(setting)
    return (first, *order.values())


def device_peak(device: torch.device, precision: str, peak_tflops: float | None) -> tuple[str, float | None]:
    """The device's name and its dense peak FLOP/s at `precision` (None: unknown)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if precision == "fp32" and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        precision = "tf32"
    peak = peak_flops(name, precision, peak_tflops)
    if peak is None:
        log.info("MFU unknown: no %s peak known for %s; set train.peak_tflops to report it", precision, name)
    return name, peak


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str = "fp32"  # bf16 (autocast) | fp32
    compiled: bool = False  # the forward and the loss go through torch.compile
    compile_mode: str | None = None
    attention: tuple | None = None  # SDPA backends in order of preference; None: PyTorch's own
    device_name: str = "cpu"
    peak: float | None = None  # dense FLOP/s at this precision; None: unknown (no MFU)

    def context(self) -> ExitStack:
        """What every forward pass runs under, in training and evaluation alike: bf16 autocast
        where the precision says so (the loss upcasts the logits to fp32 itself), and the
        attention backends' order."""
        from torch.nn.attention import sdpa_kernel

        stack = ExitStack()
        if self.precision == "bf16":
            stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
        if self.attention is not None:
            stack.enter_context(sdpa_kernel(list(self.attention), set_priority=True))
        return stack


def resolve_runtime(tcfg, d_model: int, local_gpu: int | None = None) -> Runtime:
    """The Runtime of a run's train config (`tcfg`) for a model `d_model` wide, on GPU
    `local_gpu` if CUDA's (see `resolve_device`)."""
    device = resolve_device(tcfg.device, local_gpu)
    precision = resolve_precision(device, tcfg.precision, d_model)
    name, peak = device_peak(device, precision, tcfg.peak_tflops)
    return Runtime(device, precision, use_compile(tcfg.compile, device), tcfg.compile_mode,
                   attention_order(tcfg.attention, tcfg.deterministic, device), name, peak)
