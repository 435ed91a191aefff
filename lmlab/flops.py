"""FLOPs per token, tokens/s and the peak of the device in use: MFU, by arithmetic alone (no torch).

MFU = FLOPs per token x tokens/s / the device's dense peak for the precision in use. The peak
comes from `train.peak_tflops` when set, else from the datasheet table below, matched on the name
the driver reports; a device that is not in the table has no MFU (None), never a guessed one.
"""
from __future__ import annotations

import math
import re
import time


def flops_per_token(n_params_non_embedding: int, d_model: int, vocab_size: int, n_layers: int,
                    seq_len: int) -> int:
    """Training FLOPs per token (forward + backward, Kaplan et al. / PaLM appendix B): 6 per
    non-embedding parameter, 6 x d_model x vocab for the (tied) head, and 12 x layers x d_model x
    context for the attention scores and their weighted sum. The real vocabulary counts, not the
    padded one: padded rows are work the model does, not work it needs."""
    return 6 * n_params_non_embedding + 6 * d_model * vocab_size + 12 * n_layers * d_model * seq_len


def model_flops_per_token(model) -> int:
    """`flops_per_token` of a built model (lmlab.model.GPT, read by its attributes alone): its
    shapes and its real vocabulary."""
    c = model.cfg
    return flops_per_token(model.n_params(non_embedding=True), c.d_model, c.vocab_size, c.n_layers, c.max_seq_len)


def token_budget(max_tokens: int | None, max_flops: float | None, flops_per_tok: int) -> int | None:
    """The training tokens a run may see: train.max_tokens, or fewer where train.max_flops ends it
    first (at the first token count whose flops_per_tok x tokens reaches it); None: neither is set."""
    limits = [limit for limit in (max_tokens, math.ceil(max_flops / flops_per_tok) if max_flops else None) if limit]
    return min(limits, default=None)


# Dense (no sparsity) tensor-core peaks in TFLOP/s from the vendors' datasheets, by precision.
# Matched as whole words of the device name, first match wins ("H100 PCIe" before "H100"), so an
# A10G or an L40S is unknown rather than mistaken for an A10 or an L4.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bf16": 756.5, "tf32": 378.0}),
    ("H100 NVL", {}),  # lower clocks than the SXM part, no figure we trust: unknown
    ("H200 NVL", {}),
    ("GH200", {"bf16": 989.5, "tf32": 494.7}),
    ("H200", {"bf16": 989.5, "tf32": 494.7}),
    ("H100", {"bf16": 989.5, "tf32": 494.7}),  # SXM, what "NVIDIA H100 80GB HBM3" is
    ("A100", {"bf16": 312.0, "tf32": 156.0}),
    ("A10", {"bf16": 125.0, "tf32": 62.5}),
    ("L4", {"bf16": 121.0, "tf32": 60.0}),
]


def peak_flops(device_name: str, precision: str, override_tflops: float | None = None) -> float | None:
    """FLOP/s the device can do at `precision` (bf16 | tf32 | fp32), or None when unknown."""
    if override_tflops is not None:
        return override_tflops * 1e12
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(rf"\b{pattern}\b", device_name):
            return peaks[precision] * 1e12 if precision in peaks else None
    return None


def mfu(flops_per_tok: int, tokens_per_s: float | None, peak: float | None) -> float | None:
    if tokens_per_s is None or peak is None:
        return None
    return flops_per_tok * tokens_per_s / peak


class Throughput:
    """Training tokens per second, measured between reads of the loss: evaluation and checkpoints
    are left out, and so are this process's first steps (compilation, allocator warm-up make them
    several times slower)."""

    def __init__(self, step: int, total: int):
        self.skip = step + min(5, total // 10)
        self.tokens, self.seconds = 0, 0.0
        self.restart(step)

    def restart(self, step: int) -> None:
        """A new window, from the step after `step`."""
        self.window_start, self.window_tokens, self.window_first = time.perf_counter(), 0, step + 1

    def add(self, n_tokens: int) -> None:
        self.window_tokens += n_tokens

    def read(self) -> float | None:
        """Close the window; tokens/s over every window past the first steps (None: none yet)."""
        if self.window_first > self.skip:
            self.tokens += self.window_tokens
            self.seconds += time.perf_counter() - self.window_start
        return self.tokens / self.seconds if self.seconds else None
