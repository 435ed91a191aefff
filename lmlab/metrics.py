"""What a split's summed NLL means: loss per token, perplexity, word-level perplexity, bits per byte.

Pure arithmetic (no torch), shared by the model's evaluation (lmlab/scoring.py) and the
reference floors (lmlab/data/floors.py), so both report the same numbers the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

REPEAT_N = 4  # n of the samples' repeated n-gram share (summary.json's sample_repeated_4grams)


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


def repeated_ngram_share(tokens: list[int], n: int = REPEAT_N) -> float | None:
    """The share of a sequence's n-grams that already occurred earlier in it (1 - distinct-n):
    0 for text that never repeats itself, near 1 for a loop; None for fewer than n + 1 tokens."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if len(grams) > 1 else None
