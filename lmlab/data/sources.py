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
  none, into documents of at least MIN_DOC_CHARS characters, which together are the file.

A `hub` or `text` corpus without a validation or test split has it carved from train
(`data.holdout` documents, a fraction or a count) by `datasets`' seeded `train_test_split`, so the
same corpus always gives the same splits. `data.pool=true` does the same for a local WikiText
folder: the articles of all its files form one pool that validation and test are carved from.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lmlab.errors import DataError

SPLITS = ("train", "validation", "test")
_RAW_NAMES = {"train": "train", "validation": "valid", "test": "test"}
_TITLE = re.compile(r"^ = [^=].* = \n?$")
_SPLIT_ALIASES = {"validation": ("validation", "valid", "dev"), "test": ("test",), "train": ("train",)}
_TEXT_SUFFIXES = (".txt", ".jsonl")
# A one-document corpus's documents: about 500 BPE tokens of English each, two of the default
# 256-token contexts, so that an EOS ends a passage rather than every verse or line, and
# validation and test are carved as passages.
MIN_DOC_CHARS = 2000


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


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


# --- the cache key ----------------------------------------------------------------------------

def source_files(data_cfg) -> list[Path] | None:
    """The local files behind a config (None for a hub id): they key the token cache."""
    kind = corpus_kind(data_cfg)
    if kind == "hub":  # a local folder given as the dataset's path keys by its files too
        path = Path(data_cfg.hub_id).expanduser()
        return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else None
    if kind == "text":
        return _text_files(_text_root(data_cfg), data_cfg.local_dir)
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
    articles = [doc for split in present for doc in documents(read_split(data_cfg, split)) if _has_text(doc)]
    return {"train": datasets.Dataset.from_dict({"text": articles})}


def read_split(data_cfg, split: str) -> list[str]:
    """The lines of one WikiText split, each ending in a newline (empty lines are just '\\n')."""
    if data_cfg.local_dir is None:
        return _rows_to_lines(_load_dataset(data_cfg.hub_id, data_cfg.hub_config, split=split)["text"])
    files = _split_files(data_cfg)[split]
    if files and files[0].suffix != ".parquet":
        return _read_utf8(files[0]).splitlines(keepends=True)
    import datasets

    rows = datasets.load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split)
    return _rows_to_lines(rows["text"])


def _rows_to_lines(rows: list[str]) -> list[str]:
    # Hub rows keep their trailing newline; blank lines, " \n" in the original files, are "".
    return [r if r else " \n" for r in rows]


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


# --- the hub ----------------------------------------------------------------------------------

def _hub_unreachable() -> bool:
    """A HEAD request to the hub through huggingface_hub's own client (proxies and HF_ENDPOINT
    honoured), with a short timeout: `datasets` would retry for ~30 s before failing."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=5)
    except Exception:  # httpx's connect and timeout errors, under whichever client is installed
        return True
    return False


def _load_dataset(path: str, name: str | None, **kwargs):
    """`datasets.load_dataset` of a hub id or local folder, failing in one line and at once when
    the hub cannot be reached."""
    import datasets

    local = Path(path).expanduser().exists()
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    if not local and not offline and _hub_unreachable():
        why = "the hub is unreachable (set HF_DATASETS_OFFLINE=1 to use a copy datasets downloaded before)"
    else:
        try:
            return datasets.load_dataset(path, name, **kwargs)
        except Exception as e:  # datasets raises many types (ConnectionError, OfflineModeIsEnabled, ...)
            if local:
                raise DataError(f"cannot load {path} with datasets: {type(e).__name__}: {e}") from None
            why = "offline (HF_HUB_OFFLINE=1)" if offline else f"{type(e).__name__}"
    raise DataError(
        f"cannot load {path}{'/' + name if name else ''} from the hub: {why}. To run with no download: "
        "python -m lmlab preset=quick (the embedded corpus, data=kjv); or point data.local_dir at local files "
        "(a folder of wiki.{train,valid,test}.raw, or the hub's parquet layout), or use data=text data.local_dir=DIR")


def _hub_splits(data_cfg) -> dict:
    found = _load_dataset(data_cfg.hub_id, data_cfg.hub_config)
    splits = {split: found[next(a for a in aliases if a in found)] for split, aliases in _SPLIT_ALIASES.items()
              if any(a in found for a in aliases)}
    if "train" not in splits:
        raise DataError(f"{data_cfg.hub_id} has no train split (it has {', '.join(found)})")
    column = data_cfg.text_column
    if column not in splits["train"].column_names:
        raise DataError(f"{data_cfg.hub_id} has no column {column!r} (it has "
                        f"{', '.join(splits['train'].column_names)}): set data.text_column")
    return {split: _text_column(ds, column).filter(_has_text, input_columns="text") for split, ds in splits.items()}


def _text_column(ds, column: str):
    """`ds` with `column` alone, named "text" (datasets refuses to rename a column to its own name)."""
    ds = ds.select_columns([column])
    return ds if column == "text" else ds.rename_column(column, "text")


def _has_text(doc: str | None) -> bool:
    return bool(doc and doc.strip())  # an empty document holds no token: it is dropped before carving


# --- a local folder of text -------------------------------------------------------------------

def _text_root(data_cfg) -> Path:
    """data.local_dir of a text corpus: a folder, or one .txt/.jsonl file."""
    root = Path(data_cfg.local_dir).expanduser()
    if not root.is_dir() and not (root.is_file() and root.suffix in _TEXT_SUFFIXES):
        raise DataError(f"data.local_dir={data_cfg.local_dir} is neither a folder nor a .txt or .jsonl file")
    return root


def _text_files(root: Path, shown: str) -> list[Path]:
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.suffix in _TEXT_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise DataError(f"data.local_dir={shown} holds no .txt or .jsonl file")
    return files


def cut_at(text: str, pattern: str) -> list[str]:
    """`text` cut at each match of `pattern`, the matches dropped (re.split would keep the groups)."""
    pieces, start = [], 0
    for match in re.finditer(pattern, text):
        pieces.append(text[start:match.start()])
        start = match.end()
    return pieces + [text[start:]]


def passages(text: str) -> list[str]:
    """A one-document corpus as documents of at least MIN_DOC_CHARS characters, each ending at a
    blank line (at a line end where the text has no blank line); the last may be shorter."""
    lines = text.splitlines(keepends=True)
    cut_anywhere = all(line.strip() for line in lines)
    docs, current, size = [], [], 0
    for line in lines:
        current.append(line)
        size += len(line)
        if size >= MIN_DOC_CHARS and (cut_anywhere or not line.strip()):
            docs.append("".join(current))
            current, size = [], 0
    return docs + ["".join(current)] if current else docs


def _file_documents(path: Path, column: str, split_on: str | None) -> list[str]:
    text = _read_utf8(path)
    if path.suffix == ".txt":
        return cut_at(text, split_on) if split_on else [text]
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)[column]
        except (ValueError, KeyError, TypeError):
            doc = None
        if not isinstance(doc, str):
            raise DataError(f"{path}:{n} is not a JSON object with a {column!r} string field")
        docs.append(doc)
    return docs


def _text_splits(data_cfg, to_train: bool = True) -> dict:
    """Documents of every .txt/.jsonl file, per split when the folder has train/ (and maybe
    validation/, test/) subfolders, else in one pool that `_carve` splits. Only training needs a
    train/ folder beside the others (`to_train`)."""
    import datasets

    folder = _text_root(data_cfg)
    roots = {split: folder / split for split in SPLITS if folder.is_dir() and (folder / split).is_dir()}
    if not roots:
        roots = {"train": folder}
    elif "train" not in roots and to_train:
        raise DataError(f"data.local_dir={data_cfg.local_dir} has {'/'.join(roots)}/ but no train/ folder")
    docs = {split: [doc for f in _text_files(root, str(root))
                    for doc in _file_documents(f, data_cfg.text_column, data_cfg.get("split_on"))]
            for split, root in roots.items()}
    if list(docs) == ["train"] and len(docs["train"]) == 1:  # a book: nothing to carve splits from
        docs["train"] = passages(docs["train"][0])
    return {split: datasets.Dataset.from_dict({"text": [doc for doc in found if _has_text(doc)]})
            for split, found in docs.items()}


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
    readers = {"hub": _hub_splits, "text": _text_splits, "wikitext": _wikitext_pool}
    splits = readers[corpus_kind(data_cfg)](data_cfg)
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
    readers = {"hub": _hub_splits, "text": lambda cfg: _text_splits(cfg, to_train=False), "wikitext": _wikitext_pool}
    found = {name: list(ds["text"]) for name, ds in readers[kind](data_cfg).items()}
    if split in found:
        docs, what = found[split], f"its {split}/ folder" if kind == "text" else f"its {split} split"
    else:
        docs, what = [doc for name in SPLITS for doc in found.get(name, [])], f"all of it (it has no {split} split)"
    if not docs:
        raise DataError(f"the {split} split is empty")
    n_words = sum(document_words(data_cfg, doc) for doc in docs)
    return SplitText(docs, n_words, sum(len(doc.encode()) for doc in docs)), what
