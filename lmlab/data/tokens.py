"""Tokenized splits, cached as memmaps keyed by source, config and tokenizer.

Layout: <cache_dir>/<data.name>-<source key>/<tokenizer>/{tokenizer.json, <split>.bin, <split>.json}.
The .json beside each .bin records its dtype, length, checksum and the split's word and byte
counts (for word-level perplexity and bits per byte). Files are written then renamed, and a
job builds the folder under a lock on its `.lock` file: parallel jobs that need the same cache
wait for the first to build it, then read it, so none sees a half-written file or repeats the work.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lmlab.atomic import atomic_path, file_lock, write_text
from lmlab.data.sources import SPLITS, SplitText, source_key, split_texts
from lmlab.data.tokenizer import Tokenizer, load_or_train

log = logging.getLogger(__name__)
ENCODE_BATCH = 256  # documents per call of the tokenizer, which encodes them on all cores at once


@dataclass
class Split:
    name: str
    tokens: np.ndarray  # 1-D memmap; every document ends in EOS
    n_docs: int
    n_words: int  # WikiText convention: whitespace words + one per line
    n_bytes: int  # UTF-8 bytes of the split's text


def cache_dir(data_cfg, tok_cfg) -> Path:
    tok_name = "gpt2" if tok_cfg.kind == "gpt2" else f"bpe{tok_cfg.vocab_size}"
    root = Path(data_cfg.cache_dir).expanduser() / f"{data_cfg.name}-{source_key(data_cfg)}"
    return root / tok_name


def _checksum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_cached(folder: Path, split: str) -> Split | None:
    meta_path, bin_path = folder / f"{split}.json", folder / f"{split}.bin"
    if not (meta_path.is_file() and bin_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    if bin_path.stat().st_size != meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize or \
            _checksum(bin_path) != meta["sha256"]:
        log.warning("token cache %s is corrupted (checksum mismatch); rebuilding it", bin_path)
        return None
    tokens = np.memmap(bin_path, dtype=meta["dtype"], mode="r", shape=(meta["n_tokens"],))
    return Split(split, tokens, meta["n_docs"], meta["n_words"], meta["n_bytes"])


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def write_tokens(tok: Tokenizer, docs: list[str], path: Path, split: str) -> int:
    """Encode `docs` into `path` as one stream, each document ended by EOS; returns its length.
    Batches of documents go to the tokenizer's threads and straight to the file, so memory holds
    one batch of ids, never the whole split's."""
    dtype = token_dtype(tok.vocab_size)
    eos = np.array([tok.eos_id], dtype=dtype)
    n_tokens = 0
    with open(path, "wb") as f, tqdm(total=sum(map(len, docs)), desc=f"tokenizing {split}", unit="char",
                                     unit_scale=True, leave=False, disable=None) as bar:
        for i in range(0, len(docs), ENCODE_BATCH):
            batch = docs[i:i + ENCODE_BATCH]
            for ids in tok.encode_batch(batch):
                f.write(np.asarray(ids, dtype=dtype).tobytes())
                f.write(eos.tobytes())
                n_tokens += len(ids) + 1
            bar.update(sum(map(len, batch)))
    return n_tokens


def _tokenize(tok: Tokenizer, text: SplitText, split: str, folder: Path) -> Split:
    log.info("tokenizing the %s split into %s", split, folder)
    bin_path = folder / f"{split}.bin"
    with atomic_path(bin_path) as tmp:
        n_tokens = write_tokens(tok, text.documents, tmp, split)
    meta = {"n_tokens": n_tokens, "dtype": token_dtype(tok.vocab_size).name, "sha256": _checksum(bin_path),
            "n_docs": len(text.documents), "n_words": text.n_words, "n_bytes": text.n_bytes}
    write_text(folder / f"{split}.json", json.dumps(meta, indent=1))
    return _load_cached(folder, split)


def load_splits(data_cfg, tok_cfg) -> tuple[Tokenizer, dict[str, Split]]:
    """The tokenizer and the train/validation/test token streams, from cache when possible."""
    folder = cache_dir(data_cfg, tok_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    texts: dict[str, SplitText] = {}

    def text(split):
        if split not in texts:
            texts.update(split_texts(data_cfg, split))
        return texts[split]

    with file_lock(folder / ".lock"):
        tok = load_or_train(tok_cfg.kind, tok_cfg.vocab_size,
                            lambda: text("train").documents, folder / "tokenizer.json")
        splits = {}
        for split in SPLITS:
            splits[split] = _load_cached(folder, split) or _tokenize(tok, text(split), split, folder)
            texts.pop(split, None)  # a large split's text is let go before the next is read
    return tok, splits
