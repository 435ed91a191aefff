"""Reference floors: the test loss of models that know only how often each token occurs (unigram)
or only the previous token (bigram), counted on the training split with their smoothing tuned on
validation. A transformer that does not beat the better bigram, "the floor", has learned nothing
a table of token pairs could not hold.

- unigram: add-alpha (Lidstone) counts, alpha tuned on validation;
- interpolated bigram (Jelinek-Mercer): lambda x the pair's relative frequency + (1 - lambda) x the
  unigram, lambda tuned on validation;
- Kneser-Ney bigram (interpolated, one discount D tuned on validation): the discounted pair count,
  plus the discounted mass spread over a continuation unigram (in how many contexts a token
  follows), itself interpolated with the uniform distribution, so no token gets probability 0.

They score what the model's evaluation scores: every token of the split's stream after the first,
given the one before it (across document boundaries too, as the model's windows do), and report
the same metrics (lmlab.metrics). Computed once per token cache with numpy (the data package
never imports the model) and stored beside the cache as floors.json.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from lmlab.atomic import file_lock, write_text
from lmlab.data.tokens import Split, cache_dir
from lmlab.metrics import EvalResult

log = logging.getLogger(__name__)
FLOORS_FILE = "floors.json"
FLOORS_VERSION = 1  # bump when the estimators change: a cached floors.json of another version is recomputed
BIGRAMS = ("interpolated_bigram", "kneser_ney_bigram")


def pairs(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(previous, next) for every token after the first: what a bigram predicts and from what."""
    tokens = np.asarray(tokens, dtype=np.int64)
    return tokens[:-1], tokens[1:]


@dataclass
class BigramCounts:
    """Counts from the training split: of each token, of each token as a context, of each distinct
    pair (sorted codes prev * V + next), and the two Kneser-Ney type counts."""
    vocab_size: int
    unigram: np.ndarray  # c(w): occurrences of w among the predicted tokens
    context: np.ndarray  # c(a): pairs that start with a
    pair_codes: np.ndarray  # sorted distinct a * V + b
    pair_counts: np.ndarray  # c(a, b), aligned with pair_codes
    followers: np.ndarray  # N1+(a .): distinct tokens seen after a
    continuation: np.ndarray  # N1+(. b): distinct tokens seen before b

    @classmethod
    def of(cls, tokens: np.ndarray, vocab_size: int) -> BigramCounts:
        prev, nxt = pairs(tokens)
        codes, counts = np.unique(prev * vocab_size + nxt, return_counts=True)
        return cls(vocab_size, np.bincount(nxt, minlength=vocab_size), np.bincount(prev, minlength=vocab_size),
                   codes, counts, np.bincount(codes // vocab_size, minlength=vocab_size),
                   np.bincount(codes % vocab_size, minlength=vocab_size))

    def pair_count(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """c(a, b) of each given pair (0 when never seen in training)."""
        codes = prev * self.vocab_size + nxt
        at = np.minimum(np.searchsorted(self.pair_codes, codes), len(self.pair_codes) - 1)
        return np.where(self.pair_codes[at] == codes, self.pair_counts[at], 0)


def unigram_probs(counts: BigramCounts, alpha: float) -> np.ndarray:
    return (counts.unigram + alpha) / (counts.unigram.sum() + alpha * counts.vocab_size)


def interpolated_bigram_probs(counts: BigramCounts, prev, nxt, alpha: float, lam: float) -> np.ndarray:
    c_ab, c_a = counts.pair_count(prev, nxt), counts.context[prev]
    relative = np.divide(c_ab, c_a, out=np.zeros(len(prev)), where=c_a > 0)
    weight = np.where(c_a > 0, lam, 0.0)  # an unseen context has only the unigram to go on
    return weight * relative + (1 - weight) * unigram_probs(counts, alpha)[nxt]


def kneser_ney_probs(counts: BigramCounts, prev, nxt, discount: float) -> np.ndarray:
    # Continuation unigram, discounted in turn and interpolated with the uniform distribution.
    types = counts.continuation.sum()
    continuation = (np.maximum(counts.continuation - discount, 0)
                    + discount * np.count_nonzero(counts.continuation) / counts.vocab_size) / types
    c_ab, c_a = counts.pair_count(prev, nxt), counts.context[prev]
    seen = c_a > 0
    safe = np.where(seen, c_a, 1)
    bigram = np.maximum(c_ab - discount, 0) / safe + discount * counts.followers[prev] / safe * continuation[nxt]
    return np.where(seen, bigram, continuation[nxt])


def _nll(probs: np.ndarray) -> float:
    return float(-np.log(probs).sum())


def _tune(objective, low: float, high: float) -> float:
    """The argument in [low, high] minimising `objective` (a validation NLL); scipy's bounded
    Brent search, since every smoothing here has one parameter."""
    return float(minimize_scalar(objective, bounds=(low, high), method="bounded", options={"xatol": 1e-4}).x)


def _metrics(probs_of, splits: dict[str, Split]) -> dict:
    """val_* and test_* metrics of a model given as probs_of(previous, next)."""
    metrics = {}
    for name, prefix in (("validation", "val"), ("test", "test")):
        split = splits[name]
        nll = _nll(probs_of(*pairs(split.tokens)))
        metrics.update(EvalResult(nll, len(split.tokens) - 1, split.n_words, split.n_bytes).metrics(prefix))
    return metrics


def compute_floors(splits: dict[str, Split], vocab_size: int) -> dict:
    """Each reference model's validation and test metrics (named as the model's val_* and test_*)
    and its tuned smoothing; `floor` names the better bigram on test. Validation scores are a
    little flattering, the smoothing having been tuned there: they are for drawing beside
    validation curves; test is the number to compare."""
    counts = BigramCounts.of(splits["train"].tokens, vocab_size)
    val = pairs(splits["validation"].tokens)
    # alpha is searched on a log scale: its useful values span orders of magnitude.
    alpha = 10 ** _tune(lambda x: _nll(unigram_probs(counts, 10 ** x)[val[1]]), -4.0, 2.0)
    lam = _tune(lambda x: _nll(interpolated_bigram_probs(counts, *val, alpha, x)), 0.0, 1.0 - 1e-6)
    discount = _tune(lambda x: _nll(kneser_ney_probs(counts, *val, x)), 1e-6, 1.0 - 1e-6)
    floors = {
        "unigram": {**_metrics(lambda prev, nxt: unigram_probs(counts, alpha)[nxt], splits), "alpha": alpha},
        "interpolated_bigram": {**_metrics(lambda prev, nxt: interpolated_bigram_probs(counts, prev, nxt, alpha, lam),
                                           splits), "lambda": lam, "alpha": alpha},
        "kneser_ney_bigram": {**_metrics(lambda prev, nxt: kneser_ney_probs(counts, prev, nxt, discount), splits),
                              "discount": discount},
    }
    floors["floor"] = min(BIGRAMS, key=lambda name: floors[name]["test_loss"])
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
        log.info("computing the unigram and bigram reference floors into %s", path)
        floors = {"version": FLOORS_VERSION, **compute_floors(splits, vocab_size)}
        write_text(path, json.dumps(floors, indent=1))
    return floors


def _read(path: Path) -> dict | None:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return stored if stored.get("version") == FLOORS_VERSION else None
