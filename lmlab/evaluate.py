"""Perplexity over a whole split: exp(total NLL / total tokens), never a mean of batch perplexities."""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lmlab.data import IGNORE, Split, collate


@dataclass
class EvalResult:
    nll: float  # summed over every scored token, in nats
    n_tokens: int
    n_words: int | None  # None unless the whole split was scored
    n_bytes: int | None

    @property
    def loss(self) -> float:
        return self.nll / self.n_tokens

    @property
    def ppl(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def word_ppl(self) -> float | None:
        return math.exp(min(self.nll / self.n_words, 700.0)) if self.n_words else None

    @property
    def bpb(self) -> float | None:
        return self.nll / (math.log(2) * self.n_bytes) if self.n_bytes else None

    def metrics(self, prefix: str) -> dict:
        return {f"{prefix}_loss": self.loss, f"{prefix}_ppl": self.ppl,
                f"{prefix}_word_ppl": self.word_ppl, f"{prefix}_bpb": self.bpb}


def batch_loss(model, batch: dict, device, autocast=nullcontext(), reduction="mean") -> torch.Tensor:
    """Cross-entropy of one batch from `collate`; pad and unscored targets are ignored."""
    kwargs = {"pad_mask": batch["pad_mask"].to(device)} if not bool(batch["pad_mask"].all()) else {}
    if "segments" in batch:
        kwargs["segments"] = batch["segments"].to(device)
    with autocast:
        logits = model(batch["x"].to(device), **kwargs)
    return F.cross_entropy(logits.float().flatten(0, 1), batch["y"].to(device).flatten(),
                           ignore_index=IGNORE, reduction=reduction)


@torch.no_grad()
def evaluate(model, split: Split, rows: np.ndarray, eos_id: int, batch_size: int, device,
             autocast=nullcontext(), segments: bool = False, max_batches: int | None = None) -> EvalResult:
    """Score `rows` of `split` in eval mode (dropout off); the caller's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        nll, n_tokens = 0.0, 0
        starts = range(0, len(rows), batch_size)
        whole = max_batches is None or max_batches >= len(starts)
        for i in list(starts)[:max_batches]:
            batch = collate(split.tokens, rows[i:i + batch_size], eos_id, segments)
            nll += batch_loss(model, batch, device, autocast, reduction="sum").item()
            n_tokens += int((batch["y"] != IGNORE).sum())
    finally:
        model.train(was_training)
    return EvalResult(nll, n_tokens, split.n_words if whole else None, split.n_bytes if whole else None)
