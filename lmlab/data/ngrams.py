"""The n-gram counts the reference floors (lmlab/data/floors.py) need, in a few bytes per
training token: a training stream's k-grams for k = 1..MAX_ORDER, and at every target of other
streams (validation, test) the counts its k-gram models read there.

One array holds every training position, sorted by the k-gram starting there; each order refines
it: within each run of equal (k-1)-grams, positions are sorted by their next token, and by the
token before them, which gives at once the k-grams' counts (run lengths), their continuation
counts N1+(. g) (distinct tokens before g) and their histories' totals (the run). The array is
refined a window at a time, a window being whole runs, so all of a window's sort keys (run,
next token, token before, position in the window) pack into one int64 and one `np.sort` does the
work of an argsort. What is kept of each order is its counts of counts (where the discounts'
tuning starts) and the counts at the other streams' targets, looked up while their window is in
hand; no table of the training k-grams outlives its window. Memory: the position array (4 bytes
a token), its run starts (1), the tokens with sentinels (2) and one window's keys; 12 bytes a
token while the first sort's int64 result is turned into the position array.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

MAX_ORDER = 5
BUCKETS = 3  # count buckets with their own discount: 1, 2, 3+
COUNTS_OF_COUNTS = 5  # how many k-grams have count 0..4: Chen & Goodman's discount estimates read n1..n4


@dataclass
class Level:
    """What level k of a Kneser-Ney model needs at each target: the count of the k-gram ending
    there (its last k - 1 tokens of history, then the target), and of its history h."""
    count: np.ndarray  # c(h w) of the target w (0: unseen)
    total: np.ndarray  # sum over w' of c(h w') (0: h never seen with a follower)
    types: np.ndarray  # (3, targets): how many distinct w' follow h with count 1, 2, 3+

    @cached_property
    def linear(self) -> tuple[np.ndarray, ...]:
        """The level as p_k = count_share - D @ buckets + (D @ types_share + unseen) x p_(k-1) in its
        discounts D (3,): precomputed once, since tuning evaluates it hundreds of times."""
        share = np.divide(1.0, self.total, out=np.zeros(len(self.total)), where=self.total > 0)
        buckets = np.minimum(self.count, BUCKETS)
        return (self.count * share, np.stack([(buckets == b) * share for b in range(1, BUCKETS + 1)]),
                self.types * share, (self.total == 0).astype(float))


@dataclass
class Targets:
    """Every token of a stream after the first (`next`), with its k-gram counts at each level k:
    `raw[k - 1]` from raw counts, `continuation[k - 1]` from continuation counts (k < MAX_ORDER)."""
    next: np.ndarray
    raw: list[Level]
    continuation: list[Level]
    vocab_size: int


@dataclass
class NgramCounts:
    """What the models read of the training split as a whole: each token's count, and for each
    order k its counts of counts (`raw[k - 1][c]`: the distinct k-grams seen c times, c < 5;
    `continuation[k - 1][c]`: those seen after c distinct tokens, k < MAX_ORDER)."""
    vocab_size: int
    unigram: np.ndarray
    raw: list[np.ndarray]
    continuation: list[np.ndarray]


def count_ngrams(tokens: np.ndarray, vocab_size: int, streams=(),
                 max_order: int = MAX_ORDER) -> tuple[NgramCounts, list[Targets]]:
    """The training stream's counts, and every target of each of `streams` looked up in them."""
    tokens = np.asarray(tokens)
    n, v = len(tokens), vocab_size
    unigram = np.bincount(tokens, minlength=v)
    # Positions sorted by token: numpy's stable sort of 16-bit keys is a radix sort.
    order = np.argsort(tokens, kind="stable").astype(np.uint32 if n < 1 << 32 else np.int64)
    starts = np.zeros(n, dtype=bool)  # where a run of equal k-grams begins in `order`
    offset = np.cumsum(unigram) - unigram
    starts[offset[unigram > 0]] = True
    # Token i - 1 at index i: the token before a position and the one k - 1 after it, v past either end.
    padded = np.concatenate([[v], tokens, np.full(max_order, v)]).astype(np.uint16 if v < 1 << 16 else np.uint32)
    lookups = [_Lookup(np.asarray(s, dtype=np.int64), max_order) for s in streams]
    for q in lookups:
        q.group = np.where(unigram[q.tokens] > 0, offset[q.tokens], -1)
        q.raw[0] = _unigram_columns(unigram, q.tokens)
    raw_coc, cont_coc = [_counts_of_counts(unigram)], [None]
    follows = np.zeros(v, dtype=np.int64)  # N1+(. w): distinct bigrams ending in w
    for k in range(2, max_order + 1):
        raw_coc.append(np.zeros(COUNTS_OF_COUNTS, dtype=np.int64))
        cont_coc.append(np.zeros(COUNTS_OF_COUNTS, dtype=np.int64))
        for q in lookups:
            q.start(k)
        for a, b in _windows(starts, _window_cap(v)):
            w = _Window(order, starts, padded, k, a, b, v)
            raw_coc[-1] += _counts_of_counts(w.raw)
            cont_coc[-1] += _counts_of_counts(w.continuation)
            if k == 2:
                follows += np.bincount(w.last[w.raw > 0], minlength=v)
            for q in lookups:
                q.look_up(w, k)
    del order, starts, padded
    cont_coc[0] = _counts_of_counts(follows)
    for q in lookups:
        q.continuation[0] = _unigram_columns(follows, q.tokens)
    counts = NgramCounts(v, unigram.astype(float), raw_coc, cont_coc[:-1])  # the top order has no continuation level
    return counts, [q.targets(v) for q in lookups]


def _unigram_columns(counts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Level 1's columns at `tokens`: every token has the one empty history."""
    everywhere = np.zeros(len(tokens), dtype=np.int64)
    return _columns(counts[tokens], _per_history(np.zeros(len(counts), dtype=np.int64), counts, 1), everywhere)


def _counts_of_counts(counts: np.ndarray) -> np.ndarray:
    return np.bincount(counts[counts < COUNTS_OF_COUNTS], minlength=COUNTS_OF_COUNTS)


def _per_history(history: np.ndarray, counts: np.ndarray, n_histories: int) -> np.ndarray:
    """(4, histories): each history's total count and its followers with count 1, 2, 3+."""
    buckets = np.minimum(counts, BUCKETS)
    return np.stack([np.bincount(history, weights=counts, minlength=n_histories)]
                    + [np.bincount(history[buckets == b], minlength=n_histories) for b in range(1, BUCKETS + 1)])


def _columns(count: np.ndarray, per_history: np.ndarray, history: np.ndarray) -> np.ndarray:
    """(5, n): a k-gram's count, then its history's total and types."""
    return np.vstack([count, per_history[:, history]])


def _window_cap(vocab_size: int) -> int:
    """The most positions a window of many runs may hold: a key packs the run, two tokens
    (0..V, V marking past the end) and the position in the window into 63 bits."""
    return 1 << (63 - 2 * int(vocab_size).bit_length()) // 2


def _windows(starts: np.ndarray, cap: int):
    """(a, b) cutting `order` into windows of whole runs, of about `cap` positions (a longer run
    alone)."""
    a, n = 0, len(starts)
    while a < n:
        b = min(a + cap, n)
        if b < n and not starts[b]:
            inside = np.flatnonzero(starts[a + 1:b])
            if len(inside):
                b = a + 1 + int(inside[-1])
            else:  # one run longer than cap: argmax of booleans stops at the first True
                after = b + int(np.argmax(starts[b:]))
                b = after if starts[after] else n
        yield a, b
        a = b


class _Window:
    """One window of `order` at level k, sorted: its runs (the (k-1)-grams) split into groups
    (the k-grams), each group's count and continuation count, each run's totals."""

    def __init__(self, order, starts, padded, k: int, a: int, b: int, v: int):
        positions = order[a:b].astype(np.int64)
        run = np.cumsum(starts[a:b], dtype=np.int64) - 1
        self.bits = int(v).bit_length()
        position_bits = int(b - a - 1).bit_length()
        assert int(run[-1]).bit_length() + 2 * self.bits + position_bits <= 63
        key = ((run << self.bits | padded[positions + k]) << self.bits | padded[positions]) << position_bits
        key |= np.arange(b - a)
        key.sort()
        order[a:b] = positions[key & ((1 << position_bits) - 1)]
        key >>= position_bits  # (run, next token, token before)
        kgram = key >> self.bits
        starts[a] = True
        np.not_equal(kgram[1:], kgram[:-1], out=starts[a + 1:b])
        self.first = np.flatnonzero(starts[a:b])
        self.kgram = kgram[self.first]
        self.last = self.kgram & ((1 << self.bits) - 1)
        real = self.last != v  # a run's last position may have no next token: not a k-gram
        self.raw = np.where(real, np.diff(self.first, append=b - a), 0)
        before = np.ones(b - a, dtype=bool)
        np.not_equal(key[1:], key[:-1], out=before[1:])
        before &= (key & ((1 << self.bits) - 1)) != v
        group = np.cumsum(starts[a:b]) - 1
        self.continuation = np.where(real, np.bincount(group[before], minlength=len(self.first)), 0)
        self.run_of_group = self.kgram >> self.bits
        self.runs = int(run[-1]) + 1
        self.run_at = run  # the run of each original offset in the window: runs do not move
        self.a, self.b = a, b
        self._per_run = {}

    def per_run(self, name: str) -> np.ndarray:
        """(4, runs): each run's total `name` count ("raw" or "continuation") and its groups with 1, 2, 3+."""
        if name not in self._per_run:
            self._per_run[name] = _per_history(self.run_of_group, getattr(self, name), self.runs)
        return self._per_run[name]


class _Lookup:
    """One stream's targets, looked up level by level: `group` is the offset in `order` of the
    run holding the k-gram starting at each position (-1: unseen)."""

    def __init__(self, tokens: np.ndarray, max_order: int):
        self.tokens, self.max_order = tokens, max_order
        self.raw = [None] * max_order
        self.continuation = [None] * (max_order - 1)
        self.group = None

    def start(self, k: int):
        m = max(len(self.tokens) - k + 1, 0)
        self.k, self.previous = k, self.group[:m]
        self.seen = np.flatnonzero(self.previous >= 0)
        self.seen = self.seen[np.argsort(self.previous[self.seen], kind="stable")]
        self.seen_groups = self.previous[self.seen]
        self.group = np.full(m, -1, dtype=np.int64)
        self.raw[k - 1] = np.zeros((1 + 1 + BUCKETS, m))
        if k < self.max_order:
            self.continuation[k - 1] = np.zeros((1 + 1 + BUCKETS, m))

    def look_up(self, w: _Window, k: int):
        here = self.seen[np.searchsorted(self.seen_groups, w.a):np.searchsorted(self.seen_groups, w.b)]
        if not len(here):
            return
        run = w.run_at[self.previous[here] - w.a]
        code = run << w.bits | self.tokens[here + k - 1]
        at = np.minimum(np.searchsorted(w.kgram, code), len(w.kgram) - 1)
        found = w.kgram[at] == code
        self.group[here[found]] = w.a + w.first[at[found]]
        levels = [(self.raw, "raw")] + [(self.continuation, "continuation")] * (k < self.max_order)
        for columns, name in levels:
            counts = getattr(w, name)
            columns[k - 1][:, here] = _columns(np.where(found, counts[at], 0), w.per_run(name), run)

    def targets(self, v: int) -> Targets:
        """The looked-up columns as Levels, aligned with the targets; each level's columns are let
        go as its Level is made, so the two are never all held at once."""
        n_targets = len(self.tokens) - 1

        def levels(columns: list):  # target j ends the k-gram starting at j - k + 1
            for k in range(1, len(columns) + 1):
                c, columns[k - 1] = columns[k - 1], None
                aligned = [np.concatenate([np.zeros(max(k - 2, 0)), row[max(2 - k, 0):]])[:n_targets] for row in c]
                yield Level(aligned[0], aligned[1], np.stack(aligned[2:]))

        return Targets(self.tokens[1:], list(levels(self.raw)), list(levels(self.continuation)), v)
