"""`key=value` arguments for the small entry points (generate, export) that need no Hydra, and the
page their `--help` (or `-h`) prints."""
from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

from omegaconf import OmegaConf

T = TypeVar("T")


HELP_FLAGS = ("-h", "--help")


def usage(schema: type, doc: str) -> str:
    """The entry point's docstring up to its first blank line, then every key with its default
    (required keys show what they name, as the docstring's command line does: checkpoint=PATH)."""
    cfg = OmegaConf.structured(schema)
    head = doc.strip().split("\n\n")[0].replace("`", "")
    named = dict(word.rstrip(":,.").split("=", 1) for word in head.split() if "=" in word)
    lines = []
    for key in (f.name for f in fields(schema)):
        if OmegaConf.is_missing(cfg, key):
            lines.append(f"  {key}={named.get(key, '...')}  (required)")
        else:
            value = {None: "null", "": '""'}.get(cfg[key], cfg[key])
            lines.append(f"  {key}={value}")
    return "\n".join([head, "", "keys, as key=value in any order (defaults shown):", *lines])


def print_page(text: str) -> None:
    """Print a --help page and exit 0, also when its reader stops early (`| head -2`)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        from lmlab.errors import end_at_closed_pipe  # imports Hydra, which a help page needs not
        end_at_closed_pipe()
    raise SystemExit(0)


def parse_key_values(schema: type[T], argv: list[str], verbatim: tuple[str, ...] = (), doc: str = "") -> T:
    """key=value arguments into a typed `schema` dataclass; required fields are its MISSING ones.
    Keys in `verbatim` are taken as typed: YAML parsing would strip a prompt's leading space (which
    BPE keeps), read `a: b` as a mapping, or turn a path named `null` into None. `-h` or `--help`
    prints `usage(schema, doc)` and exits 0, as argparse does."""
    if any(arg in HELP_FLAGS for arg in argv):
        print_page(usage(schema, doc))
    cfg = OmegaConf.structured(schema)
    keys = [f.name for f in fields(schema)]
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in keys:
            raise ValueError(f"expected key=value with key one of {', '.join(keys)}; got {arg!r}")
        if key in verbatim:
            cfg[key] = value
        else:
            cfg.merge_with_dotlist([arg])
    missing = [key for key in keys if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise ValueError(" and ".join(f"{key}=..." for key in missing) + (" is" if len(missing) == 1 else " are")
                         + " required")
    return OmegaConf.to_object(cfg)
