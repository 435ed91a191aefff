"""Perplexity over a whole split: exp(total NLL / total tokens), never a mean of batch perplexities;
and where that NLL fell, per document and per window position (what test_scores.json holds). The
trainer, `python -m lmlab.evaluate`, the bench and lm-eval's adapter all score through `evaluate`."""
from __future__ import annotations

import hashlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from lmlab.data import IGNORE, Split, collate, packed_rows, scored_targets, strided_rows
from lmlab.distributed import Ranks, all_reduce_sum
from lmlab.metrics import EvalResult
from lmlab.rng import own_stream
from lmlab.runtime import Runtime
from lmlab.step import loss_function, to_device

@dataclass
class SplitScores(EvalResult):
    """An EvalResult and where its NLL fell: summed per document of the split (EOS-delimited, in
    stream order; the EOS ending a document is that document's) and per position in the window."""
    doc_nll: list[float] = field(default_factory=list)
    doc_tokens: list[int] = field(default_factory=list)
    position_nll: list[float] = field(default_factory=list)  # index t: targets at window position t + 1
    position_tokens: list[int] = field(default_factory=list)
    doc_hash: list[str] = field(default_factory=list)  # each document's identity: a hash of its token ids
    eos_nll: float = 0.0  # summed over the scored EOS targets: the documents' ends
    eos_tokens: int = 0

    def metrics(self, prefix: str) -> dict:
        """EvalResult's, and the mean log P(EOS) where a document ends (None where no end was scored):
        the model's readiness to stop, the seed's "never stops" symptom."""
        eos_logp = -self.eos_nll / self.eos_tokens if self.eos_tokens else None
        return {**super().metrics(prefix), f"{prefix}_eos_logp": eos_logp}

    def scores(self) -> dict:
        """test_scores.json's fields for these windows (a position never scored has loss None)."""
        return {"window": len(self.position_nll), "doc_nll": self.doc_nll, "doc_tokens": self.doc_tokens,
                "doc_hash": self.doc_hash,
                "position_loss": [nll / n if n else None for nll, n in zip(self.position_nll, self.position_tokens)],
                "position_tokens": self.position_tokens}


def document_hashes(tokens: np.ndarray, eos_id: int) -> list[str]:
    """A short hash of each document's token ids, its ending EOS included (the last one may have
    none), in stream order: the report pairs documents across runs by it, and never compares runs
    scored on other text."""
    array = np.asarray(tokens, dtype=np.int64)
    ends = list(np.flatnonzero(array == eos_id) + 1) + ([len(array)] if len(array) and array[-1] != eos_id else [])
    return [hashlib.blake2b(array[start:end].tobytes(), digest_size=8).hexdigest()
            for start, end in zip([0, *ends[:-1]], ends)]


def eval_rows(n_tokens: int, window: int, stride: int | None) -> np.ndarray:
    """Evaluation windows of `window` tokens: non-overlapping, or sliding by `stride` (eval.stride)."""
    return strided_rows(n_tokens, window, stride) if stride else packed_rows(n_tokens, window)


@torch.inference_mode()
def evaluate(model, split: Split, rows: np.ndarray, eos_id: int, batch_size: int, runtime: Runtime | str,
             segments: bool = False, max_batches: int | None = None, ranks: Ranks = Ranks(),
             train_mode: bool = False, dropout_seed: int = 0) -> SplitScores:
    """Score `rows` of `split` in eval mode (dropout off) on the run's `runtime` (its precision,
    attention backends, and compiled where training is), or on a device given by name, eagerly in
    fp32; the caller's train/eval mode is restored. With several ranks each
    scores every world-th batch and the sums are added up, so the whole split is scored once.
    Per-target NLLs are summed by document and by window position on the device, in one buffer
    read once at the end. `train_mode=True` is the seed's bug (bugs.eval_in_train_mode): dropout stays on,
    its masks drawn from a stream of their own seeded by `dropout_seed` (lmlab.rng.own_stream)."""
    runtime = runtime if isinstance(runtime, Runtime) else Runtime(torch.device(runtime))
    device, loss_fn = runtime.device, loss_function(runtime)
    was_training = model.training
    model.train(train_mode)
    eos_at = np.flatnonzero(np.asarray(split.tokens) == eos_id)
    n_docs = len(eos_at) + int(len(split.tokens) > 0 and split.tokens[-1] != eos_id)
    width = int((rows[:, 1] - rows[:, 0]).max()) - 1 if len(rows) else 0
    # Slots: in all | at EOS targets | per document, then one for unscored targets | per window
    # position. The NLL is summed on the device, the targets are counted on the host from the rows
    # alone; one all-reduce adds up the ranks' shares, and the sums are read once at the end.
    nll_sums = torch.zeros(2 + n_docs + 1 + width, dtype=torch.float64, device=device)
    counts = np.zeros(len(nll_sums))
    doc_slots, position_slots = slice(2, n_docs + 3), slice(n_docs + 3, None)
    try:
        all_starts = range(0, len(rows), batch_size)
        starts = list(all_starts)[:max_batches]
        whole = len(starts) == len(all_starts)
        mine = starts[ranks.rank::ranks.world]
        # tqdm stays quiet when stderr is not a terminal (logs, sweeps, tests), and off other ranks.
        with (own_stream(dropout_seed, device) if train_mode else nullcontext(),
              tqdm(total=sum(scored_targets(rows[i:i + batch_size]) for i in mine), desc=f"eval {split.name}",
                   unit="tok", unit_scale=True, leave=False, disable=None if ranks.main else True) as bar):
            for i in mine:
                batch_rows = rows[i:i + batch_size]
                batch = collate(split.tokens, batch_rows, eos_id, segments)
                scored = batch["y"].numpy() != IGNORE
                # A target at stream index j is in the document of the EOS tokens before j.
                targets = batch_rows[:, :1] + 1 + np.arange(scored.shape[1])
                docs = np.where(scored, np.searchsorted(eos_at, targets), n_docs)
                with runtime.context():
                    nll = loss_fn(model, **to_device(batch, device), reduction="none").view(scored.shape).double()
                nll_sums[0] += nll.sum()
                ends = scored & (batch["y"].numpy() == eos_id)
                on_device = to_device({"docs": torch.from_numpy(docs), "ends": torch.from_numpy(ends)}, device)
                nll_sums[doc_slots].index_add_(0, on_device["docs"].flatten(), nll.flatten())
                nll_sums[1] += (nll * on_device["ends"]).sum()
                counts[1] += ends.sum()
                nll_sums[position_slots][:scored.shape[1]] += nll.sum(0)
                counts[doc_slots] += np.bincount(docs.ravel(), minlength=n_docs + 1)
                counts[position_slots][:scored.shape[1]] += scored.sum(0)
                bar.update(scored_targets(batch_rows))
        counts[0] = counts[doc_slots][:n_docs].sum()
        totals = all_reduce_sum(torch.stack([nll_sums, torch.from_numpy(counts).to(device)])).tolist()
    finally:
        model.train(was_training)
    (nll, eos_nll, *doc_nll), (n_tokens, eos_tokens, *doc_tokens) = (t[:n_docs + 2] for t in totals)
    positions = [t[position_slots] for t in totals]
    return SplitScores(nll, int(n_tokens), split.n_words if whole else None, split.n_bytes if whole else None,
                       doc_nll, [int(n) for n in doc_tokens], positions[0], [int(n) for n in positions[1]],
                       document_hashes(split.tokens, eos_id), eos_nll, int(eos_tokens))


def score_split(evaluate_rows: Callable[[np.ndarray], SplitScores], n_tokens: int, window: int, eval_cfg,
                prefix: str = "test") -> tuple[dict, dict]:
    """A split's summary metrics (`prefix`_loss, ...) on `window`-token windows, and also on
    eval.common_window-token ones when set (`prefix`_common_loss, ..., common_window); and the
    scores file's content ({"window", "doc_nll", ..., "common": null | the same on common windows}).
    `evaluate_rows(rows)` scores the split's rows."""
    result = evaluate_rows(eval_rows(n_tokens, window, eval_cfg.stride))
    metrics, scores = result.metrics(prefix), {**result.scores(), "common": None}
    if eval_cfg.common_window:
        common = evaluate_rows(eval_rows(n_tokens, eval_cfg.common_window, eval_cfg.stride))
        metrics.update(common.metrics(f"{prefix}_common"), common_window=eval_cfg.common_window)
        scores["common"] = common.scores()
    return metrics, scores
