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
from lmlab.data.sources import SPLITS, SplitText, source_key, split_text
from lmlab.data.tokenizer import Tokenizer, load_or_train

log = logging.getLogger(__name__)


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


def _tokenize(tok: Tokenizer, text: SplitText, split: str, folder: Path) -> Split:
    log.info("tokenizing the %s split into %s", split, folder)
    docs = text.documents
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    chunks = []
    for i in tqdm(range(0, len(docs), 256), desc=f"tokenizing {split}", unit="x256 docs", leave=False):
        for ids in tok.encode_batch(docs[i:i + 256]):
            chunks.append(np.asarray(ids + [tok.eos_id], dtype=dtype))
    tokens = np.concatenate(chunks)
    bin_path = folder / f"{split}.bin"
    with atomic_path(bin_path) as tmp:
        tokens.tofile(tmp)
    meta = {"n_tokens": int(tokens.size), "dtype": np.dtype(dtype).name, "sha256": _checksum(bin_path),
            "n_docs": len(docs), "n_words": text.n_words, "n_bytes": text.n_bytes}
    write_text(folder / f"{split}.json", json.dumps(meta, indent=1))
    return _load_cached(folder, split)


def load_splits(data_cfg, tok_cfg) -> tuple[Tokenizer, dict[str, Split]]:
    """The tokenizer and the train/validation/test token streams, from cache when possible."""
    folder = cache_dir(data_cfg, tok_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    texts: dict[str, SplitText] = {}

    def text(split):
        if split not in texts:
            texts[split] = split_text(data_cfg, split)
        return texts[split]

    with file_lock(folder / ".lock"):
        tok = load_or_train(tok_cfg.kind, tok_cfg.vocab_size,
                            lambda: text("train").documents, folder / "tokenizer.json")
        splits = {split: _load_cached(folder, split) or _tokenize(tok, text(split), split, folder)
                  for split in SPLITS}
    return tok, splits
