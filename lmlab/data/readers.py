"""A `hub` or `text` corpus read into splits: each a `datasets.Dataset` of one `text` column, one
document a row, empty documents dropped (lmlab.data.sources carves the splits a corpus lacks)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from lmlab.errors import DataError

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"validation": ("validation", "valid", "dev"), "test": ("test",), "train": ("train",)}
_TEXT_SUFFIXES = (".txt", ".jsonl")
# A one-document corpus's documents: about 500 BPE tokens of English each, two of the default
# 256-token contexts, so that an EOS ends a passage rather than every verse or line, and
# validation and test are carved as passages.
MIN_DOC_CHARS = 2000


def read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def has_text(doc: str | None) -> bool:
    return bool(doc and doc.strip())  # an empty document holds no token: it is dropped before carving


# --- the hub ----------------------------------------------------------------------------------

def hub_unreachable() -> bool:
    """A HEAD request to the hub through huggingface_hub's own client (proxies and HF_ENDPOINT
    honoured), with a short timeout: `datasets` would retry for ~30 s before failing."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=5)
    except Exception:  # httpx's connect and timeout errors, under whichever client is installed
        return True
    return False


def load_dataset(path: str, name: str | None, **kwargs):
    """`datasets.load_dataset` of a hub id or local folder, failing in one line and at once when
    the hub cannot be reached."""
    import datasets

    local = Path(path).expanduser().exists()
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    if not local and not offline and hub_unreachable():
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


def hub_splits(data_cfg) -> dict:
    found = load_dataset(data_cfg.hub_id, data_cfg.hub_config)
    splits = {split: found[next(a for a in aliases if a in found)] for split, aliases in _SPLIT_ALIASES.items()
              if any(a in found for a in aliases)}
    if "train" not in splits:
        raise DataError(f"{data_cfg.hub_id} has no train split (it has {', '.join(found)})")
    column = data_cfg.text_column
    if column not in splits["train"].column_names:
        raise DataError(f"{data_cfg.hub_id} has no column {column!r} (it has "
                        f"{', '.join(splits['train'].column_names)}): set data.text_column")
    return {split: _text_column(ds, column).filter(has_text, input_columns="text") for split, ds in splits.items()}


def _text_column(ds, column: str):
    """`ds` with `column` alone, named "text" (datasets refuses to rename a column to its own name)."""
    ds = ds.select_columns([column])
    return ds if column == "text" else ds.rename_column(column, "text")


# --- a local folder of text -------------------------------------------------------------------

def text_root(data_cfg) -> Path:
    """data.local_dir of a text corpus: a folder, or one .txt/.jsonl file."""
    root = Path(data_cfg.local_dir).expanduser()
    if not root.is_dir() and not (root.is_file() and root.suffix in _TEXT_SUFFIXES):
        raise DataError(f"data.local_dir={data_cfg.local_dir} is neither a folder nor a .txt or .jsonl file")
    return root


def text_files(root: Path, shown: str) -> list[Path]:
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
    text = read_utf8(path)
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


def text_splits(data_cfg, to_train: bool = True) -> dict:
    """Documents of every .txt/.jsonl file, per split when the folder has train/ (and maybe
    validation/, test/) subfolders, else in one pool that `sources` carves the splits from. Only
    training needs a train/ folder beside the others (`to_train`)."""
    import datasets

    folder = text_root(data_cfg)
    roots = {split: folder / split for split in SPLITS if folder.is_dir() and (folder / split).is_dir()}
    if not roots:
        roots = {"train": folder}
    elif "train" not in roots and to_train:
        raise DataError(f"data.local_dir={data_cfg.local_dir} has {'/'.join(roots)}/ but no train/ folder")
    docs = {split: [doc for f in text_files(root, str(root))
                    for doc in _file_documents(f, data_cfg.text_column, data_cfg.get("split_on"))]
            for split, root in roots.items()}
    if list(docs) == ["train"] and len(docs["train"]) == 1:  # a book: nothing to carve splits from
        docs["train"] = passages(docs["train"][0])
    return {split: datasets.Dataset.from_dict({"text": [doc for doc in found if has_text(doc)]})
            for split, found in docs.items()}
