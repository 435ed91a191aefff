"""Perplexity over a whole split: exp(total NLL / total tokens), never a mean of batch perplexities."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager

import numpy as np
import torch
from tqdm import tqdm

from lmlab.data import IGNORE, Split, collate
from lmlab.metrics import EvalResult
from lmlab.step import batch_loss


@torch.inference_mode()
def evaluate(model, split: Split, rows: np.ndarray, eos_id: int, batch_size: int, device,
             context: Callable[[], ContextManager] = nullcontext, segments: bool = False,
             max_batches: int | None = None, train_mode: bool = False) -> EvalResult:
    """Score `rows` of `split` in eval mode (dropout off), each forward under a fresh `context()`
    (see step.compute_context); the caller's train/eval mode is restored. The NLL is summed on the
    device and read once at the end. `train_mode=True` is the seed's bug (bugs.eval_in_train_mode):
    dropout stays on."""
    device = torch.device(device)
    was_training = model.training
    model.train(train_mode)
    try:
        all_starts = range(0, len(rows), batch_size)
        starts = list(all_starts)[:max_batches]
        whole = len(starts) == len(all_starts)
        scored_rows = rows[:len(starts) * batch_size]
        nll, n_tokens = torch.zeros((), dtype=torch.float64, device=device), 0
        # tqdm stays quiet when stderr is not a terminal (logs, sweeps, tests).
        with tqdm(total=int((scored_rows[:, 1] - scored_rows[:, 2]).sum()), desc=f"eval {split.name}",
                  unit="tok", unit_scale=True, leave=False, disable=None) as bar:
            for i in starts:
                batch = collate(split.tokens, rows[i:i + batch_size], eos_id, segments)
                with context():
                    nll += batch_loss(model, batch, device, reduction="sum")
                scored = int((batch["y"] != IGNORE).sum())
                n_tokens += scored
                bar.update(scored)
        nll = nll.item()
    finally:
        model.train(was_training)
    return EvalResult(nll, n_tokens, split.n_words if whole else None, split.n_bytes if whole else None)
