"""Tokenizers: a byte-level BPE trained on the training split (default, offline) or GPT-2's.

A tokenizer is described by a small dict (`ref`) that a checkpoint stores, so a model can be
rebuilt and sampled from the checkpoint file alone.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

from lmlab.atomic import write_text
from lmlab.data.sources import DataError

EOS = "<|endoftext|>"


class Tokenizer:
    """Wraps an HF `tokenizers.Tokenizer` or a tiktoken encoding behind encode/decode."""

    def __init__(self, ref: dict):
        self.ref = ref
        if ref["kind"] == "bpe":
            from tokenizers import Tokenizer as HFTokenizer

            self._hf = HFTokenizer.from_str(ref["json"])
            self.eos_id = self._hf.token_to_id(EOS)
            self.vocab_size = self._hf.get_vocab_size()
        elif ref["kind"] == "gpt2":
            self._tt = _tiktoken_gpt2()
            self.eos_id = self._tt.eot_token
            self.vocab_size = self._tt.n_vocab
        else:
            raise ValueError(f"unknown tokenizer kind {ref['kind']!r}")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.ref["kind"] == "bpe":  # the fast variant leaves out the character offsets, which nothing here reads
            return [e.ids for e in self._hf.encode_batch_fast(texts, add_special_tokens=False)]
        return self._tt.encode_ordinary_batch(texts)

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def decode(self, ids: list[int]) -> str:
        if self.ref["kind"] == "bpe":
            return self._hf.decode(ids, skip_special_tokens=False)
        return self._tt.decode(ids)


def _tiktoken_gpt2():
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # tiktoken downloads its BPE files on first use
        raise DataError(
            f"tokenizer=gpt2 needs tiktoken's GPT-2 files, which could not be fetched "
            f"({type(e).__name__}); use the default tokenizer=bpe offline") from None


def train_bpe(texts: Iterable[str], vocab_size: int) -> dict:
    """Train a byte-level BPE (GPT-2's pre-tokenizer) whose only special token is EOS."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # The trainer's own progress bars (counting words, then merges) on a terminal, as tqdm's are.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=sys.stderr.isatty(),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return {"kind": "bpe", "json": tok.to_str()}


def load_or_train(kind: str, vocab_size: int, train_texts, path: Path) -> Tokenizer:
    """The cached tokenizer at `path`, trained from `train_texts()` the first time."""
    if kind == "gpt2":
        return Tokenizer({"kind": "gpt2"})
    if not path.is_file():
        write_text(path, train_bpe(train_texts(), vocab_size)["json"])
    return Tokenizer({"kind": "bpe", "json": path.read_text(encoding="utf-8")})
