"""What a split's summed NLL means: loss per token, perplexity, word-level perplexity, bits per byte.

Pure arithmetic (no torch), shared by the model's evaluation (lmlab/evaluate.py) and the
reference floors (lmlab/data/floors.py), so both report the same numbers the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


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
