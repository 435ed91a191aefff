"""Perplexity over a whole split: exp(total NLL / total tokens), never a mean of batch perplexities."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager

import numpy as np
import torch
from tqdm import tqdm

from lmlab.data import Split, collate, scored_targets
from lmlab.distributed import Ranks, all_reduce_sum
from lmlab.metrics import EvalResult
from lmlab.step import batch_loss


@torch.inference_mode()
def evaluate(model, split: Split, rows: np.ndarray, eos_id: int, batch_size: int, device,
             context: Callable[[], ContextManager] = nullcontext, segments: bool = False,
             max_batches: int | None = None, ranks: Ranks = Ranks(), train_mode: bool = False) -> EvalResult:
    """Score `rows` of `split` in eval mode (dropout off), each forward under a fresh `context()`
    (see step.compute_context); the caller's train/eval mode is restored. With several ranks each
    scores every world-th batch and the sums are added up, so the whole split is scored once.
    The NLL is summed on the device and read once at the end. `train_mode=True` is the seed's bug
    (bugs.eval_in_train_mode): dropout stays on."""
    device = torch.device(device)
    was_training = model.training
    model.train(train_mode)
    try:
        all_starts = range(0, len(rows), batch_size)
        starts = list(all_starts)[:max_batches]
        whole = len(starts) == len(all_starts)
        mine = starts[ranks.rank::ranks.world]
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # NLL, scored targets
        # tqdm stays quiet when stderr is not a terminal (logs, sweeps, tests), and off other ranks.
        with tqdm(total=sum(scored_targets(rows[i:i + batch_size]) for i in mine),
                  desc=f"eval {split.name}", unit="tok", unit_scale=True, leave=False,
                  disable=None if ranks.main else True) as bar:
            for i in mine:
                batch = collate(split.tokens, rows[i:i + batch_size], eos_id, segments)
                with context():
                    sums[0] += batch_loss(model, batch, device, reduction="sum")
                scored = scored_targets(rows[i:i + batch_size])
                sums[1] += scored
                bar.update(scored)
        nll, n_tokens = all_reduce_sum(sums).tolist()
    finally:
        model.train(was_training)
    return EvalResult(nll, int(n_tokens), split.n_words if whole else None, split.n_bytes if whole else None)
