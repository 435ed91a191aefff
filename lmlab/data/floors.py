"""Reference floors: the test loss of n-gram models counted on the training split, their smoothing
tuned on validation. A transformer that does not beat them has learned nothing a table of token
n-grams could not hold; "the floor" is the strongest of them (lowest test loss), the one to beat.

- unigram (order 1): add-alpha (Lidstone) counts, alpha tuned on validation;
- interpolated bigram (order 2, Jelinek-Mercer): lambda x the pair's relative frequency
  + (1 - lambda) x the unigram, lambda tuned on validation;
- Kneser-Ney bigram, 3-, 4- and 5-gram (orders 2..5): interpolated Kneser-Ney (Chen & Goodman
  1999). The top level discounts the raw count of (history, token) and gives the discounted mass
  to the level below, which drops the history's oldest token; every lower level does the same
  with continuation counts N1+(. h w) (in how many distinct contexts h w follows a token) in place
  of raw counts; the unigram level gives its discounted mass to the uniform distribution, so no
  token gets probability 0. A history never seen (or, below the top, never seen after a token)
  passes all of its mass down. Discounts: one per level and count bucket (1, 2, 3+: "modified"
  KN), all of a model's tuned jointly on validation by L-BFGS-B (exact gradient) from Chen &
  Goodman's estimates. Modified pays: on WikiText-2-mini it scores validation 0.017-0.032
  nats/token below one tuned discount per level for orders 3-5 at BPE-384 and BPE-8192 (the
  bigram: 0.002 at 384, 0.024 at 8192).

They score what the model's evaluation scores: every token of the split's stream after the first,
given the tokens before it (across document boundaries too, as the model's windows do), and
report the same metrics (lmlab.metrics). A split's first tokens have fewer than n - 1 tokens
before them: target j (j < n - 1) is scored as if its longer histories were unseen, i.e. by the
level-(j + 1) distribution the model interpolates, given the j tokens there are.

The counts come from lmlab/data/ngrams.py, which sorts the training positions once per order
and keeps no table of the training k-grams: only the counts at validation's and test's targets
and the counts of counts, in about 7 bytes per training token (no Python loop runs over tokens).
Computed once per token cache (the data package never imports the model) and stored beside the
cache as floors.json.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from threadpoolctl import threadpool_limits

from lmlab.atomic import file_lock, write_text
from lmlab.data.ngrams import BUCKETS, MAX_ORDER, NgramCounts, Targets, count_ngrams
from lmlab.data.tokens import Split, cache_dir
from lmlab.metrics import EvalResult

log = logging.getLogger(__name__)
FLOORS_FILE = "floors.json"
FLOORS_VERSION = 2  # bump when the estimators change: a cached floors.json of another version is recomputed
KN_ORDERS = (3, 4, 5)


def unigram_probs(counts: NgramCounts, alpha: float) -> np.ndarray:
    """Add-alpha probability of every token of the vocabulary."""
    c = counts.unigram
    return (c + alpha) / (c.sum() + alpha * counts.vocab_size)


def interpolated_bigram_probs(counts: NgramCounts, targets: Targets, alpha: float, lam: float) -> np.ndarray:
    pair = targets.raw[1]
    relative = np.divide(pair.count, pair.total, out=np.zeros(len(pair.count)), where=pair.total > 0)
    weight = np.where(pair.total > 0, lam, 0.0)  # an unseen context has only the unigram to go on
    return weight * relative + (1 - weight) * unigram_probs(counts, alpha)[targets.next]


def kneser_ney_probs(targets: Targets, order: int, discounts) -> np.ndarray:
    """Interpolated Kneser-Ney of `order` at every target. discounts: one per level (lowest
    first), or (order, 3) for modified KN (level k's D for counts 1, 2, 3+)."""
    return _kneser_ney_levels(targets, order, _discount_table(discounts, order))[-1]


def _discount_table(discounts, order: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(discounts, dtype=float).reshape(order, -1), (order, BUCKETS))


def _kneser_ney_levels(targets: Targets, order: int, discounts: np.ndarray) -> list[np.ndarray]:
    """p_0 (uniform), p_1, ..., p_order at every target: the top level from raw counts, those
    below from continuation counts; an unseen history (unseen = 1) passes p_(k-1) on unchanged."""
    probs = [np.full(len(targets.next), 1.0 / targets.vocab_size)]
    for k, d in enumerate(discounts, 1):
        count_share, buckets, types_share, unseen = _counts_at(targets, k, order).linear
        probs.append(count_share - _combine(d, buckets) + (_combine(d, types_share) + unseen) * probs[-1])
    return probs


def _counts_at(source: Targets | NgramCounts, k: int, order: int):
    """Level k of a Kneser-Ney model of `order`: raw counts at the top, continuation counts below."""
    return (source.raw if k == order else source.continuation)[k - 1]


def _combine(d: np.ndarray, per_bucket: np.ndarray) -> np.ndarray:
    """d @ per_bucket for (3,) by (3, targets): einsum, 5x faster here than matmul's BLAS call."""
    return np.einsum("b,bt->t", d, per_bucket)


def kneser_ney_loss_and_gradient(targets: Targets, order: int, discounts: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean NLL of the targets and its gradient in the (order, 3) discounts, for tuning. With
    p_k = a_k + b_k p_(k-1): dp_order/dD_k = b_order ... b_(k+1) (types_share p_(k-1) - buckets)."""
    probs = _kneser_ney_levels(targets, order, discounts)
    weight = 1.0 / (len(probs[-1]) * probs[-1])  # -d(mean NLL)/dp_order, times b_order ... b_(k+1) below
    gradient = np.empty_like(discounts)
    for k in range(order, 0, -1):
        _, buckets, types_share, unseen = _counts_at(targets, k, order).linear
        gradient[k - 1] = buckets @ weight - types_share @ (weight * probs[k - 1])
        weight = weight * (_combine(discounts[k - 1], types_share) + unseen)
    return float(-np.log(probs[-1]).mean()), gradient


def estimated_discounts(counts: NgramCounts, order: int) -> np.ndarray:
    """Chen & Goodman's estimates from the counts of counts n1..n4 at each level (where to start
    tuning): Y = n1 / (n1 + 2 n2), D_c = c - (c + 1) Y n_(c+1) / n_c."""
    rows = []
    for k in range(1, order + 1):
        n = _counts_at(counts, k, order)[1:].astype(float) + 1  # +1: never divide by 0
        y = n[0] / (n[0] + 2 * n[1])
        rows.append([c - (c + 1) * y * n[c] / n[c - 1] for c in (1, 2, 3)])
    return np.clip(rows, *_bounds_of(order).T.reshape(2, order, BUCKETS))


def _bounds_of(order: int) -> np.ndarray:
    """D_c in (0, c): a count keeps some probability and gives some to the level below."""
    return np.array([(1e-3, c - 1e-3) for _ in range(order) for c in (1, 2, 3)])


def tune_kneser_ney(counts: NgramCounts, val: Targets, order: int) -> np.ndarray:
    """The (order, 3) discounts minimising validation NLL."""
    def objective(x):
        loss, gradient = kneser_ney_loss_and_gradient(val, order, x.reshape(order, BUCKETS))
        return loss, gradient.ravel()

    start = estimated_discounts(counts, order).ravel()
    # L-BFGS-B's small solves and the gradient's (3, targets) products each wake every BLAS thread:
    # on one thread tuning orders 2-5 took 1.8-2.0 s CPU against 4.2-4.6 (WikiText-2-mini at
    # BPE-8192, two cores shared with other jobs), to the same bits.
    with threadpool_limits(limits=1, user_api="blas"):
        tuned = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=_bounds_of(order)).x
    return tuned.reshape(order, BUCKETS)


def _nll(probs: np.ndarray) -> float:
    return float(-np.log(probs).sum())


def _tune(objective, low: float, high: float) -> float:
    """The argument in [low, high] minimising `objective` (a validation NLL); scipy's bounded
    Brent search, for the smoothings with one parameter."""
    return float(minimize_scalar(objective, bounds=(low, high), method="bounded", options={"xatol": 1e-4}).x)


def _metrics(probs_of, targets: dict[str, Targets], splits: dict[str, Split]) -> dict:
    """val_* and test_* metrics of a model given as probs_of(targets)."""
    metrics = {}
    for name, prefix in (("validation", "val"), ("test", "test")):
        split = splits[name]
        result = EvalResult(_nll(probs_of(targets[name])), len(split.tokens) - 1, split.n_words, split.n_bytes)
        metrics.update(result.metrics(prefix))
    return metrics


def kneser_ney_name(order: int) -> str:
    return "kneser_ney_bigram" if order == 2 else f"kneser_ney_{order}gram"


def compute_floors(splits: dict[str, Split], vocab_size: int) -> dict:
    """Each reference model's validation and test metrics (named as the model's val_* and test_*),
    its tuned smoothing and its order; `floor` names the one with the lowest test loss.
    Validation scores are a little flattering, the smoothing having been tuned there: they are
    for drawing beside validation curves; test is the number to compare."""
    scored = ("validation", "test")
    counts, looked_up = count_ngrams(splits["train"].tokens, vocab_size, [splits[name].tokens for name in scored])
    targets = dict(zip(scored, looked_up))
    val = targets["validation"]
    # alpha is searched on a log scale: its useful values span orders of magnitude.
    alpha = 10 ** _tune(lambda x: _nll(unigram_probs(counts, 10 ** x)[val.next]), -4.0, 2.0)
    lam = _tune(lambda x: _nll(interpolated_bigram_probs(counts, val, alpha, x)), 0.0, 1.0 - 1e-6)
    floors = {
        "unigram": {**_metrics(lambda t: unigram_probs(counts, alpha)[t.next], targets, splits),
                    "alpha": alpha, "order": 1},
        "interpolated_bigram": {**_metrics(lambda t: interpolated_bigram_probs(counts, t, alpha, lam), targets, splits),
                                "lambda": lam, "alpha": alpha, "order": 2},
    }
    for order in (2, *KN_ORDERS):
        discounts = tune_kneser_ney(counts, val, order)
        floors[kneser_ney_name(order)] = {
            **_metrics(lambda t: kneser_ney_probs(t, order, discounts), targets, splits),
            "discounts": discounts.tolist(), "order": order}
    floors["floor"] = min(floors, key=lambda name: floors[name]["test_loss"])
    return floors


def load_floors(data_cfg, tok_cfg, splits: dict[str, Split], vocab_size: int) -> dict:
    """The floors of this token cache: read from its floors.json, or computed once and stored
    there (under the cache's lock, so parallel jobs compute them once)."""
    folder = cache_dir(data_cfg, tok_cfg)
    path = folder / FLOORS_FILE
    with file_lock(folder / ".lock"):
        stored = _read(path)
        if stored is not None:
            return stored
        log.info("computing the n-gram reference floors (orders 1 to %d) into %s", MAX_ORDER, path)
        floors = {"version": FLOORS_VERSION, **compute_floors(splits, vocab_size)}
        write_text(path, json.dumps(floors, indent=1))
    return floors


def _read(path: Path) -> dict | None:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return stored if stored.get("version") == FLOORS_VERSION else None
