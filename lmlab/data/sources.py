"""Where the text comes from, and `split_texts`, the one thing the token cache asks of a source:
a split's documents and its word and byte counts. `data.kind` picks the source:

- `wikitext`: WikiText from a hub id through `datasets.load_dataset`, a local folder in the hub's
  parquet layout (`<folder>/<hub_config>/<split>-*.parquet`) or a local folder of the original
  files `wiki.{train,valid,test}.{raw,tokens}`. All yield the split's lines with their newlines;
  `documents` rebuilds articles from them. Words follow WikiText's convention.
- `hub`: any dataset `datasets.load_dataset` reads (a hub id or a local folder), one row of
  `data.text_column` per document.
- `text`: a local folder of `.txt` files (one document per file) and `.jsonl` files (one document
  per line, in the `data.text_column` field), or one such file. `data.split_on`, a regex, cuts
  every `.txt` file at each of its matches instead (the match is dropped: a lookahead such as
  `(?m)^(?=CHAPTER )` keeps a heading with the text after it). Without it, a corpus that is one
  document (a single `.txt` file: a book) is cut at blank lines, or at line ends where it has
  none, into documents of at least MIN_DOC_CHARS characters (lmlab.data.readers), which together
  are the file.

A `hub` or `text` corpus without a validation or test split has it carved from train
(`data.holdout` documents, a fraction or a count) by `datasets`' seeded `train_test_split`, so the
same corpus always gives the same splits. `data.pool=true` does the same for a local WikiText
folder: the articles of all its files form one pool that validation and test are carved from.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from lmlab.data import readers
from lmlab.data.readers import SPLITS, has_text, load_dataset, read_utf8
from lmlab.errors import DataError

_RAW_NAMES = {"train": "train", "validation": "valid", "test": "test"}
_TITLE = re.compile(r"^ = [^=].* = \n?$")


@dataclass
class SplitText:
    documents: list[str]  # each becomes one EOS-terminated run of tokens
    n_words: int  # the denominator of word-level perplexity
    n_bytes: int  # UTF-8 bytes of the split's text, the denominator of bits per byte


def corpus_kind(data_cfg) -> str:
    return data_cfg.get("kind") or "wikitext"  # configs saved before data.kind existed are WikiText


def _folder(data_cfg) -> Path:
    folder = Path(data_cfg.local_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"data.local_dir={data_cfg.local_dir} is not a directory")
    return folder


# --- the cache key ----------------------------------------------------------------------------

def source_files(data_cfg) -> list[Path] | None:
    """The local files behind a config (None for a hub id): they key the token cache."""
    kind = corpus_kind(data_cfg)
    if kind == "hub":  # a local folder given as the dataset's path keys by its files too
        path = Path(data_cfg.hub_id).expanduser()
        return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else None
    if kind == "text":
        return readers.text_files(readers.text_root(data_cfg), data_cfg.local_dir)
    return None if data_cfg.local_dir is None else [f for files in _split_files(data_cfg).values() for f in files]


def source_key(data_cfg) -> str:
    """Identifies the text: hub id and config, or the local files' paths, sizes and mtimes; and
    for `hub` and `text`, the column read and how splits are carved."""
    kind = corpus_kind(data_cfg)
    files = source_files(data_cfg)
    parts = [f"hub:{data_cfg.hub_id}:{data_cfg.hub_config}"] if kind == "hub" or files is None else []
    parts += [f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files or []]
    if kind != "wikitext" or data_cfg.get("pool"):
        parts.append(f"{kind}:{data_cfg.text_column}:{data_cfg.holdout}:{data_cfg.split_seed}")
    if data_cfg.get("split_on"):
        parts.append(f"split_on:{data_cfg.split_on}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


# --- WikiText ---------------------------------------------------------------------------------

def _raw_file(folder: Path, split: str) -> Path | None:
    for ext in ("raw", "tokens"):
        path = folder / f"wiki.{_RAW_NAMES[split]}.{ext}"
        if path.is_file():
            return path
    return None


def _split_files(data_cfg) -> dict[str, list[Path]]:
    """Each split's files in a local WikiText folder: its raw file, else its parquet shards. A
    DataError names the splits missing, unless `data.pool` carves them from the files there are."""
    folder = _folder(data_cfg)
    found = {s: [_raw_file(folder, s)] if _raw_file(folder, s) else
             sorted((folder / data_cfg.hub_config).glob(f"{s}-*.parquet")) for s in SPLITS}
    missing = [s for s in SPLITS if not found[s]]
    if missing and not (data_cfg.get("pool") and len(missing) < len(SPLITS)):
        raise DataError(
            f"data.local_dir={data_cfg.local_dir} has no {'/'.join(missing)} split: expected "
            f"wiki.{{train,valid,test}}.raw (or .tokens) or {data_cfg.hub_config}/{{train,validation,test}}-*.parquet"
            + ("" if missing == ["train"] else "; data.pool=true carves the splits from the files there are"))
    return found


def _wikitext_pool(data_cfg) -> dict:
    """Every article of a local WikiText folder's files, as one train split for `_carve`."""
    import datasets

    present = [split for split, files in _split_files(data_cfg).items() if files]
    articles = [doc for split in present for doc in documents(read_split(data_cfg, split)) if has_text(doc)]
    return {"train": datasets.Dataset.from_dict({"text": articles})}


def read_split(data_cfg, split: str) -> list[str]:
    """The lines of one WikiText split, each ending in a newline (empty lines are just '\\n')."""
    if data_cfg.local_dir is None:
        return _rows_to_lines(load_dataset(data_cfg.hub_id, data_cfg.hub_config, split=split)["text"])
    files = _split_files(data_cfg)[split]
    if files and files[0].suffix != ".parquet":
        return read_utf8(files[0]).splitlines(keepends=True)
    import datasets

    rows = datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split)
    return _rows_to_lines(rows["text"])


def _rows_to_lines(rows: list[str]) -> list[str]:
    # Hub rows keep their trailing newline; blank lines, " \n" in the original files, are "".
    return [r if r else " \n" for r in rows]


def documents(lines: list[str]) -> list[str]:
    """Articles rebuilt from lines: a ` = Title = ` line starts one. Newlines are kept."""
    docs: list[list[str]] = [[]]
    seen_text = False
    for line in lines:
        if _TITLE.match(line) and seen_text:
            docs.append([])
            seen_text = False
        docs[-1].append(line)
        seen_text = seen_text or bool(line.strip())
    return ["".join(d) for d in docs if d]


def word_count(lines: list[str]) -> int:
    """WikiText convention for word-level perplexity: whitespace words plus one per line."""
    return sum(len(line.split()) for line in lines) + len(lines)


def holdout_size(n_docs: int, holdout: float) -> int:
    """Documents carved for one split: `holdout` is a fraction of the corpus (< 1) or a count
    (>= 1), as `test_size` is in datasets; at least one."""
    return max(1, int(holdout) if holdout >= 1 else round(holdout * n_docs))


def _carve(splits: dict, data_cfg) -> dict:
    """Validation and test carved from train where the corpus has none (`data.holdout` each), by
    datasets' seeded `train_test_split`, so the same corpus always gives the same splits."""
    missing = [s for s in ("validation", "test") if s not in splits]
    if not missing:
        return splits
    train = splits["train"]
    k = holdout_size(len(train), data_cfg.holdout)
    if len(train) <= k * len(missing):
        raise DataError(f"the corpus has {len(train)} training documents: carving {k} for each of "
                        f"{' and '.join(missing)} (data.holdout) leaves none to train on")
    held = train.train_test_split(test_size=k * len(missing), seed=data_cfg.split_seed)
    splits = {**splits, "train": held["train"]}
    if len(missing) == 1:
        return {**splits, missing[0]: held["test"]}
    both = held["test"].train_test_split(test_size=k, seed=data_cfg.split_seed)
    return {**splits, "validation": both["train"], "test": both["test"]}


def corpus_documents(data_cfg) -> dict[str, list[str]]:
    """Every split's documents of a `hub` or `text` corpus or a WikiText pool, which is read and
    carved as a whole."""
    read = {"hub": readers.hub_splits, "text": readers.text_splits, "wikitext": _wikitext_pool}
    splits = read[corpus_kind(data_cfg)](data_cfg)
    return {split: list(ds["text"]) for split, ds in _carve(splits, data_cfg).items()}


# --- what the token cache asks ----------------------------------------------------------------

def document_words(data_cfg, doc: str) -> int:
    """One document's words under its corpus's convention: WikiText's (whitespace words plus one
    per line) or, elsewhere, whitespace-separated words (str.split). Outside WikiText there is no
    published convention to match, and for text without spaces between words (Chinese, Japanese)
    the count means little: bits per byte is the number to compare there."""
    return word_count(doc.splitlines(keepends=True)) if corpus_kind(data_cfg) == "wikitext" else len(doc.split())


def split_texts(data_cfg, split: str) -> dict[str, SplitText]:
    """`split`'s documents and counts: WikiText's alone (only the documents outlive this call, so a
    large split is held in memory once), a hub or text corpus's with every other split's, since
    carving reads the whole corpus anyway and reading it once per split would do that three times."""
    if corpus_kind(data_cfg) == "wikitext" and not data_cfg.get("pool"):
        lines = read_split(data_cfg, split)
        found = {split: (documents(lines), word_count(lines)) if any(line.strip() for line in lines) else ([], 0)}
    else:
        found = {name: (docs, sum(document_words(data_cfg, doc) for doc in docs))
                 for name, docs in corpus_documents(data_cfg).items()}
    for name, (docs, _) in found.items():
        if not docs:
            raise DataError(f"the {name} split is empty")
    return {name: SplitText(docs, n_words, sum(len(doc.encode()) for doc in docs))
            for name, (docs, n_words) in found.items()}


def split_text(data_cfg, split: str) -> SplitText:
    """One split's documents and counts."""
    return split_texts(data_cfg, split)[split]


def text_to_score(data_cfg, split: str) -> tuple[SplitText, str]:
    """A corpus's `split` for scoring a model that was not trained on it, and what that is, in
    words. Nothing is trained, so nothing is carved: the corpus's own split where it has one
    (WikiText's file, a hub dataset's split, a folder's `split`/ subfolder), else all of it."""
    kind = corpus_kind(data_cfg)
    if kind == "wikitext" and not data_cfg.get("pool"):
        return split_text(data_cfg, split), f"its {split} split"
    read = {"hub": readers.hub_splits, "text": lambda cfg: readers.text_splits(cfg, to_train=False),
            "wikitext": _wikitext_pool}
    found = {name: list(ds["text"]) for name, ds in read[kind](data_cfg).items()}
    if split in found:
        docs, what = found[split], f"its {split}/ folder" if kind == "text" else f"its {split} split"
    else:
        docs, what = [doc for name in SPLITS for doc in found.get(name, [])], f"all of it (it has no {split} split)"
    if not docs:
        raise DataError(f"the {split} split is empty")
    n_words = sum(document_words(data_cfg, doc) for doc in docs)
    return SplitText(docs, n_words, sum(len(doc.encode()) for doc in docs)), what
