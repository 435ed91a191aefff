"""Where the text comes from: three sources behind one function, `read_split`, and `split_text`,
the one thing the token cache asks of a source: a split's documents and its word and byte counts.

- a hub id, through `datasets.load_dataset` (downloads and caches);
- a local folder in the hub's parquet layout (`<folder>/<hub_config>/<split>-*.parquet`);
- a local folder of the original files `wiki.{train,valid,test}.{raw,tokens}`.

All yield the split's lines with their newlines; `documents` rebuilds articles from them.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "validation", "test")
_RAW_NAMES = {"train": "train", "validation": "valid", "test": "test"}
_TITLE = re.compile(r"^ = [^=].* = \n?$")


class DataError(RuntimeError):
    """The data cannot be read: the message says what to do about it."""


@dataclass
class SplitText:
    documents: list[str]  # each becomes one EOS-terminated run of tokens
    n_words: int  # the denominator of word-level perplexity
    n_bytes: int  # UTF-8 bytes of the split's text, the denominator of bits per byte


def _raw_file(folder: Path, split: str) -> Path | None:
    for ext in ("raw", "tokens"):
        path = folder / f"wiki.{_RAW_NAMES[split]}.{ext}"
        if path.is_file():
            return path
    return None


def _parquet_files(folder: Path, hub_config: str, split: str) -> list[Path]:
    return sorted((folder / hub_config).glob(f"{split}-*.parquet"))


def source_files(data_cfg) -> list[Path] | None:
    """The local files behind a config (None for a hub id): they key the token cache."""
    if data_cfg.local_dir is None:
        return None
    folder = Path(data_cfg.local_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"data.local_dir={data_cfg.local_dir} is not a directory")
    files = [f for s in SPLITS for f in ([_raw_file(folder, s)] if _raw_file(folder, s) else
                                         _parquet_files(folder, data_cfg.hub_config, s))]
    missing = [s for s in SPLITS if not (_raw_file(folder, s) or _parquet_files(folder, data_cfg.hub_config, s))]
    if missing:
        raise DataError(
            f"data.local_dir={data_cfg.local_dir} has no {'/'.join(missing)} split: expected "
            f"wiki.{{train,valid,test}}.raw (or .tokens) or {data_cfg.hub_config}/{{train,validation,test}}-*.parquet")
    return files


def source_key(data_cfg) -> str:
    """Identifies the text: hub id + config, or the local files' paths, sizes and mtimes."""
    files = source_files(data_cfg)
    if files is None:
        ident = f"hub:{data_cfg.hub_id}:{data_cfg.hub_config}"
    else:
        ident = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def read_split(data_cfg, split: str) -> list[str]:
    """The lines of one split, each ending in a newline (empty lines are just '\\n')."""
    if data_cfg.local_dir is None:
        return _read_hub(data_cfg, split)
    folder = Path(data_cfg.local_dir).expanduser()
    source_files(data_cfg)  # raises a DataError naming what is missing
    raw = _raw_file(folder, split)
    if raw is not None:
        try:
            return raw.read_text(encoding="utf-8").splitlines(keepends=True)
        except UnicodeDecodeError as e:
            raise DataError(f"{raw} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    import datasets

    files = [str(f) for f in _parquet_files(folder, data_cfg.hub_config, split)]
    rows = datasets.load_dataset("parquet", data_files={split: files}, split=split)
    return _rows_to_lines(rows["text"])


def _rows_to_lines(rows: list[str]) -> list[str]:
    # Hub rows keep their trailing newline; blank lines, " \n" in the original files, are "".
    return [r if r else " \n" for r in rows]


def _read_hub(data_cfg, split: str) -> list[str]:
    import datasets

    try:
        rows = datasets.load_dataset(data_cfg.hub_id, data_cfg.hub_config, split=split)
    except Exception as e:  # datasets raises many types (ConnectionError, OfflineModeIsEnabled, ...)
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        why = "offline (HF_HUB_OFFLINE=1)" if offline else f"{type(e).__name__}"
        raise DataError(
            f"cannot load {data_cfg.hub_id}/{data_cfg.hub_config} from the hub: {why}. Point "
            "data.local_dir at local files instead, e.g. data.local_dir=../shared/data/wikitext-2-mini "
            "(a folder of wiki.{train,valid,test}.raw, or the hub's parquet layout)") from None
    return _rows_to_lines(rows["text"])


def documents(lines: list[str]) -> list[str]:
    """Articles rebuilt from lines: a ` = Title = ` line starts one. Newlines are kept."""
    docs: list[list[str]] = [[]]
    has_text = False
    for line in lines:
        if _TITLE.match(line) and has_text:
            docs.append([])
            has_text = False
        docs[-1].append(line)
        has_text = has_text or bool(line.strip())
    return ["".join(d) for d in docs if d]


def word_count(lines: list[str]) -> int:
    """WikiText convention for word-level perplexity: whitespace words plus one per line."""
    return sum(len(line.split()) for line in lines) + len(lines)


def split_text(data_cfg, split: str) -> SplitText:
    """One split's documents and counts; only the documents outlive this call, so a large split
    is held in memory once."""
    lines = read_split(data_cfg, split)
    if not any(line.strip() for line in lines):
        raise DataError(f"the {split} split is empty")
    return SplitText(documents(lines), word_count(lines), sum(len(line.encode()) for line in lines))
