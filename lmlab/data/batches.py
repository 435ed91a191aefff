"""Rows cut from a token stream, and batches built from rows.

A row is (start, end, score_from) into the stream: the model reads tokens[start:end-1], predicts
tokens[start+1:end], and only predictions of tokens at index >= score_from count. One mechanism
serves packed training windows, one-document-per-row batches and strided evaluation, and every
token after the first is predicted exactly once: nothing is truncated or dropped.
"""
from __future__ import annotations

import numpy as np

IGNORE = -100  # cross_entropy's ignore_index


def _chunk(start: int, end: int, seq_len: int) -> np.ndarray:
    """Windows of seq_len + 1 tokens over [start, end), overlapping by one token."""
    starts = np.arange(start, end - 1, seq_len, dtype=np.int64)
    return np.stack([starts, np.minimum(starts + seq_len + 1, end), starts + 1], axis=1)


def packed_rows(n_tokens: int, seq_len: int) -> np.ndarray:
    return _chunk(0, n_tokens, seq_len)


def document_rows(tokens: np.ndarray, eos_id: int, seq_len: int) -> np.ndarray:
    """One document per row (long ones split). A row starts at the previous document's EOS,
    which plays the part of a beginning-of-text token, so each document's first token is scored."""
    ends = np.flatnonzero(np.asarray(tokens) == eos_id) + 1
    starts = np.concatenate([[0], ends[:-1] - 1])
    chunks = [_chunk(int(s), int(e), seq_len) for s, e in zip(starts, ends)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 3), dtype=np.int64)


def strided_rows(n_tokens: int, seq_len: int, stride: int) -> np.ndarray:
    """Sliding windows for evaluation: each window scores only tokens no earlier window scored,
    so every token but the first few is predicted with at least seq_len - stride tokens of context."""
    rows, scored_to, start = [], 1, 0
    while scored_to < n_tokens:
        end = min(start + seq_len + 1, n_tokens)
        rows.append((start, end, scored_to))
        scored_to, start = end, start + stride
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def scored_targets(rows: np.ndarray) -> int:
    """How many targets `collate` leaves unmasked in these rows: end - score_from for each."""
    return int((rows[:, 1] - rows[:, 2]).sum())


def collate(tokens: np.ndarray, rows: np.ndarray, eos_id: int, segments: bool = False) -> dict:
    """Right-padded batch: x, y (IGNORE where padded or not scored), pad_mask, optional segments.

    segments[b, t] counts the EOS tokens up to and including position t: an EOS opens the next
    document, as the beginning-of-text token that `document_rows` and generation also put first,
    so under a document mask nothing from the EOS on sees the previous document.
    """
    width = int((rows[:, 1] - rows[:, 0]).max()) - 1
    x = np.full((len(rows), width), eos_id, dtype=np.int64)
    y = np.full((len(rows), width), IGNORE, dtype=np.int64)
    pad = np.zeros((len(rows), width), dtype=bool)
    for i, (start, end, score_from) in enumerate(rows):
        seq = np.asarray(tokens[start:end], dtype=np.int64)
        n = len(seq) - 1
        x[i, :n], y[i, :n], pad[i, :n] = seq[:-1], seq[1:], True
        y[i, :max(0, score_from - start - 1)] = IGNORE
    import torch  # here alone: the rest of lmlab.data (token caches, floors) runs without it

    batch = {"x": torch.from_numpy(x), "y": torch.from_numpy(y), "pad_mask": torch.from_numpy(pad)}
    if segments:
        batch["segments"] = torch.cumsum(torch.from_numpy(x == eos_id).long(), dim=1)
    return batch


def with_seed_bugs(batch: dict, bugs, eos_id: int) -> dict:
    """A training batch from `collate` with the seed's bugs that `bugs` (the `bugs` config node)
    turns on put back; the batch itself when `bugs` is None or every switch is off.
    drop_eos_targets: no EOS is a target, so the model never learns to end a document.
    no_pad_mask: the pad mask is dropped, so padded keys are attended to, and every padded
    position is scored with the pad token (EOS) as its target."""
    if bugs is not None and bugs.drop_eos_targets:
        batch["y"][batch["y"] == eos_id] = IGNORE
    if bugs is not None and bugs.no_pad_mask:
        batch["y"][~batch.pop("pad_mask")] = eos_id
    return batch


class Sampler:
    """Rows in a fresh seeded permutation each epoch. Its state (epoch, cursor) is the data
    position a checkpoint stores, so a resumed run sees exactly the batches it would have seen."""

    def __init__(self, rows: np.ndarray, batch_size: int, seed: int, epoch: int = 0, cursor: int = 0):
        if batch_size > len(rows):
            raise ValueError(f"train.batch_size={batch_size} is larger than the {len(rows)} rows of training data")
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.epoch, self.cursor = epoch, cursor
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.rows))

    def next_rows(self) -> np.ndarray:
        if self.cursor + self.batch_size > len(self.rows):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation()
        idx = self._order[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return self.rows[idx]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}
