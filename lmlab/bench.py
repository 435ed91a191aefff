"""`python -m lmlab.bench [trainer overrides] [bench.*=...]`: the trainer's own step, timed.

Composed from the trainer's config groups (`model=optionC tokenizer=gpt2 train.batch_size=16`),
it builds the run's model, optimizer and `TrainStep` and feeds it random tokens through the
trainer's own data path (`device_batches`). Warm-up steps (compilation) are left out; each timed
window ends with one device sync and the median window is reported. One table row per
configuration (`-m` runs several), optionally with Hugging Face GPT-2 on the same shapes
(`bench.compare=hf`, alternated with lmlab's windows), the data path (`bench.data=true`), a
checkpoint save (`bench.checkpoint=true`) and where the step's time goes (`bench.profile=true`).
"""
from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import lmlab.conf  # noqa: F401  registers the trainer's schema now, so `cli` can put the bench's in its place
from lmlab.config import ModelConfig, gpt_config, register_configs, to_container, validate

LR = 1e-4  # any small rate: the time of a step does not depend on it


class Bench:
    """The run's model, optimizer and TrainStep, built as the trainer builds them, on random tokens."""

    def __init__(self, cfg: DictConfig):
        import numpy as np
        import torch

        from lmlab.data import Sampler, packed_rows
        from lmlab.model import GPT
        from lmlab.step import TrainStep, make_optimizer, resolve_device

        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        torch.manual_seed(cfg.train.seed)
        self.model = GPT(gpt_config(cfg, cfg.tokenizer.vocab_size)).to(self.device)
        self.opt = make_optimizer(self.model, cfg.train, fused=self.device.type == "cuda")
        self.step = TrainStep(self.model, self.opt, self.device, cfg.train)
        rows = 4 * cfg.train.batch_size * cfg.train.grad_accum
        self.tokens = np.random.default_rng(0).integers(0, cfg.tokenizer.vocab_size,
                                                        rows * cfg.model.max_seq_len + 1).astype(np.int64)
        self.sampler = Sampler(packed_rows(len(self.tokens), cfg.model.max_seq_len), cfg.train.batch_size,
                               cfg.train.seed)
        self.tokens_per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.max_seq_len

    def run(self, steps: int) -> float:
        """Seconds per step over `steps` trainer steps, ended by one device sync."""
        from lmlab.step import device_batches

        started = time.perf_counter()
        for _ in range(steps):
            batches, _ = device_batches(self.tokens, self.sampler, self.cfg.train.grad_accum, 0,
                                        self.cfg.model.doc_mask, self.device)
            loss = self.step(batches, LR)
        loss.item()
        return (time.perf_counter() - started) / steps

    def tokens_per_s(self) -> float:
        """Of the median of bench.windows windows."""
        return self.tokens_per_step / statistics.median(self.run(self.cfg.bench.steps)
                                                        for _ in range(self.cfg.bench.windows))


def hf_tokens_per_s(cfg: DictConfig, vocab: int, device_type: str, compiled: bool) -> float:
    """One run of the Hugging Face GPT-2 baseline on the same shapes, in a fresh process."""
    m = cfg.model
    cmd = [sys.executable, cfg.bench.hf_script, "--device", device_type, "--n-layer", str(m.n_layers),
           "--n-head", str(m.n_heads), "--d-model", str(m.d_model), "--d-ff", str(ModelConfig.d_ff(m)),
           "--seq", str(m.max_seq_len), "--batch", str(cfg.train.batch_size * cfg.train.grad_accum),
           "--vocab", str(vocab), "--steps", str(cfg.bench.steps * cfg.bench.windows),
           "--warmup", str(cfg.bench.warmup_steps), *(["--compile"] if compiled else [])]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"]


def peak_memory_gib(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB: peak RSS


def bench_step(cfg: DictConfig) -> dict:
    from lmlab.flops import mfu, model_flops_per_token
    from lmlab.step import resolve_precision
    from lmlab.train import device_peak

    b = Bench(cfg)
    device_name, peak = device_peak(b.device, cfg.train)
    warmup_s = b.run(cfg.bench.warmup_steps) * cfg.bench.warmup_steps if cfg.bench.warmup_steps else 0.0
    row = {"model": cfg.model.name, "d_model": cfg.model.d_model, "n_layers": cfg.model.n_layers,
           "seq": cfg.model.max_seq_len, "batch": cfg.train.batch_size * cfg.train.grad_accum,
           "vocab": cfg.tokenizer.vocab_size, "padded_vocab": b.model.cfg.padded_vocab_size,
           "device": device_name, "precision": resolve_precision(b.device, cfg.train.precision),
           "compiled": b.step.compiled, "warmup_s": round(warmup_s, 1)}
    if cfg.bench.compare == "hf":
        ours, theirs = [], []
        for _ in range(cfg.bench.pairs):  # alternated, so a drift in the machine's speed hits both
            ours.append(b.tokens_per_s())
            theirs.append(hf_tokens_per_s(cfg, b.model.cfg.padded_vocab_size, b.device.type, b.step.compiled))
        ratios = [a / h for a, h in zip(ours, theirs)]
        row.update(tokens_per_s=statistics.median(ours), hf_tokens_per_s=statistics.median(theirs),
                   ratio=statistics.median(ratios), ratios=[round(r, 3) for r in ratios])
    else:
        row["tokens_per_s"] = b.tokens_per_s()
    row.update(ms_per_step=1e3 * b.tokens_per_step / row["tokens_per_s"],
               mfu=mfu(model_flops_per_token(b.model), row["tokens_per_s"], peak),
               peak_mem_gib=peak_memory_gib(b.device))
    if cfg.bench.checkpoint:
        row.update(checkpoint_times(b))
    if cfg.bench.profile:
        print(kernel_profile(b))
    return row


def checkpoint_times(b: Bench) -> dict:
    """A blocking save, then the trainer's background save: how long training waits (the stall),
    how long the write takes behind it, and the step time meanwhile."""
    from lmlab.checkpoint import CheckpointWriter, checkpoint_payload, save_checkpoint

    config = to_container(b.cfg)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        save_checkpoint(Path(tmp) / "blocking.pt", b.model, {"kind": "none"}, {}, config, b.opt)
        blocking_s = time.perf_counter() - started
        writer = CheckpointWriter(Path(tmp), keep=1)
        writer.save(1, lambda: checkpoint_payload(b.model, {"kind": "none"}, {}, config, b.opt), best=False)
        step_s = b.run(b.cfg.bench.steps)
        writer.wait()
    return {"ckpt_blocking_s": blocking_s, "ckpt_stall_s": writer.stalls[0], "ckpt_write_s": writer.writes[0],
            "tokens_per_s_while_saving": b.tokens_per_step / step_s}


# First match wins: Inductor's fused kernels are named after the ops they fuse (triton_..._log_softmax_...).
KERNEL_KINDS = [("loss (log-softmax, NLL)", r"log_softmax|nll|cross_entropy"),
                ("matmul", r"gemm|gemv|cutlass|xmma|nvjet|cublas|addmm|\bmm\b|linear"),
                ("attention", r"flash|fmha|cudnn|attention|sdpa"),
                ("optimizer", r"adam|foreach|multi_tensor"),
                ("copy", r"memcpy|memset|aten::copy_"),
                ("fused elementwise (Inductor)", r"triton")]


def kernel_profile(b: Bench) -> str:
    """Where one window's device time goes, by kind of kernel, and its top kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = b.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        b.run(b.cfg.bench.steps)
    events = [e for e in prof.key_averages() if (e.self_device_time_total if cuda else e.self_cpu_time_total) > 0]
    if cuda:  # device kernels only: CPU-side ops would count their kernels' time twice
        events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.self_device_time_total if cuda else e.self_cpu_time_total for e in events)
    kinds: dict[str, float] = {}
    for e in events:
        kind = next((k for k, pattern in KERNEL_KINDS if re.search(pattern, e.key, re.IGNORECASE)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + (e.self_device_time_total if cuda else e.self_cpu_time_total)
    per_step = 1e-3 / b.cfg.bench.steps
    lines = [f"where a step's {'device' if cuda else 'CPU'} time goes ({busy * per_step:.2f} ms busy per step):"]
    lines += [f"  {kind:<30} {t * per_step:8.2f} ms  {100 * t / busy:5.1f}%"
              for kind, t in sorted(kinds.items(), key=lambda kv: -kv[1])]
    if cuda:  # a step that takes longer than its kernels is waiting on the host: where its time goes
        host = sum(e.self_cpu_time_total for e in prof.key_averages())
        lines.append(f"host time in ops: {host * per_step:.2f} ms per step")
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    return "\n".join(lines) + "\n" + prof.key_averages().table(sort_by=sort, row_limit=12, max_name_column_width=60)


def data_path(cfg: DictConfig) -> dict:
    """BPE encoding speed of the cache's own encoder, the warm cache's load time, and a one-step run
    (one evaluation batch) on that warm cache: launch to the end of its first step (its summary's
    startup_s, counted from its first line of lmlab) and launch to exit."""
    from lmlab.data import load_splits
    from lmlab.data.sources import split_text
    from lmlab.data.tokens import write_tokens

    load_splits(cfg.data, cfg.tokenizer)  # builds the cache if it is cold
    started = time.perf_counter()
    tok, _ = load_splits(cfg.data, cfg.tokenizer)
    load_s = time.perf_counter() - started
    text = split_text(cfg.data, "train")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        write_tokens(tok, text.documents, Path(tmp) / "train.bin", "train")
        encode_s = time.perf_counter() - started
        overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith("bench.")]
        cmd = [sys.executable, "-m", "lmlab", *overrides, "train.max_steps=1", "eval.max_batches=1",
               "eval.sample_tokens=0", "logger=none", f"hydra.run.dir={tmp}/run"]
        started = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        launch_s = time.perf_counter() - started
        startup_s = json.loads((Path(tmp) / "run" / "summary.json").read_text())["startup_s"]
    return {"bpe_encode_mb_s": text.n_bytes / 1e6 / encode_s, "train_mb": text.n_bytes / 1e6,
            "cache_load_s": load_s, "launch_to_first_step_s": startup_s, "launch_to_exit_1_step_s": launch_s}


def format_row(row: dict) -> str:
    def num(key, fmt):
        return format(row[key], fmt) if row.get(key) is not None else "-"

    head = ["model", "shape (d x L, seq x batch, vocab)", "device", "compiled", "tokens/s", "ms/step", "MFU",
            "peak GiB", "HF tokens/s", "lmlab/HF (pairs)"]
    cells = [row["model"], f"{row['d_model']}x{row['n_layers']}, {row['seq']}x{row['batch']}, {row['vocab']}"
             f"{'->' + str(row['padded_vocab']) if row['padded_vocab'] != row['vocab'] else ''}",
             f"{row['device']} {row['precision']}", str(row["compiled"]), num("tokens_per_s", ",.0f"),
             num("ms_per_step", ".1f"), num("mfu", ".1%"), num("peak_mem_gib", ".2f"), num("hf_tokens_per_s", ",.0f"),
             f"{row['ratio']:.3f} ({', '.join(map(str, row['ratios']))})" if "ratio" in row else "-"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), "| " + " | ".join(cells) + " |"]
    extra = {k: v for k, v in row.items() if k.startswith(("ckpt_", "tokens_per_s_while", "bpe_", "train_mb",
                                                           "cache_", "launch_"))}
    if extra:
        lines.append("  " + ", ".join(f"{k}={v:.3g}" for k, v in extra.items()))
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="pkg://lmlab.conf", config_name="bench")
def main(cfg: DictConfig) -> float:
    from lmlab.errors import exit_for

    try:
        validate(cfg)
        row = bench_step(cfg)
        if cfg.bench.data:
            row.update(data_path(cfg))
    except Exception as e:
        exit_for(e, "lmlab.bench")
        raise
    print(format_row(row), flush=True)
    if cfg.bench.out:
        with open(cfg.bench.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    return row["tokens_per_s"]


def cli() -> None:
    from lmlab.errors import report_errors

    register_configs(bench=True)
    report_errors(main, prog="lmlab.bench")


if __name__ == "__main__":
    cli()
