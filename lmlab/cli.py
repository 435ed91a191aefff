"""`key=value` arguments for the small entry points (generate, export) that need no Hydra."""
from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

from omegaconf import OmegaConf

T = TypeVar("T")


def parse_key_values(schema: type[T], argv: list[str], verbatim: tuple[str, ...] = ()) -> T:
    """key=value arguments into a typed `schema` dataclass; required fields are its MISSING ones.
    Keys in `verbatim` are taken as typed: YAML parsing would strip a prompt's leading space (which
    BPE keeps), read `a: b` as a mapping, or turn a path named `null` into None."""
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
