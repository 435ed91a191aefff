"""The option list of `python -m lmlab --help` (conf/hydra/help/lmlab.yaml): each config group's
option files with the first sentence of each file's leading comment, read from conf/ at the time
of asking, so the page lists exactly what a user can pick. Hydra's own list would add the schema
nodes (base_*) and list sweeps/scale and sweeps/variant twice (also under sweep/)."""
from __future__ import annotations

import re
from importlib.resources import files
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importlib.resources.abc is Python 3.11's; the annotation needs no import at run time
    from importlib.resources.abc import Traversable

WIDTH = 100  # a description longer than this is cut at a word, so each option stays on one line
_SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)\.(?:\s|$)")  # "e.g. a" and "1.5" go on


def summary(text: str) -> str:
    """The first sentence of a YAML file's leading comment block (a `# @package` line skipped),
    up to an indented example line; empty if the file starts with no comment."""
    words = []
    for line in text.splitlines():
        if not line.startswith("#") or line.startswith("#   "):
            break
        if not line.startswith("# @package"):
            words.append(line.lstrip("#").strip())
    sentence = _SENTENCE_END.split(" ".join(words), maxsplit=1)[0].rstrip(":.")
    return sentence if len(sentence) <= WIDTH else sentence[:WIDTH].rsplit(" ", 1)[0] + " ..."


def groups(conf: Traversable) -> dict[str, Traversable]:
    """Every group a user picks from: conf/'s folders (sweep only one level deep: its scale/ and
    variant/ are the scale and variant groups) and lmlab's own options of Hydra's groups (hydra/*)."""
    found = {d.name: d for d in conf.iterdir() if d.is_dir() and not d.name.startswith(("_", "hydra"))}
    found.update({f"hydra/{d.name}": d for d in conf.joinpath("hydra").iterdir() if d.is_dir() and d.name != "help"})
    return dict(sorted(found.items()))


def options_page(choices) -> str:
    """`${lmlab.options:${hydra.runtime.choices}}`: a block per group, an option per line, the
    composed config's choice marked with *. `$` is doubled for the help template's substitution."""
    blocks = []
    for group, folder in groups(files("lmlab.conf")).items():
        options = sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)
        names = [f.name.removesuffix(".yaml") + ("*" if choices.get(group) == f.name.removesuffix(".yaml") else "")
                 for f in options]
        width = max(map(len, names))
        lines = [f"  {name.ljust(width)}  {summary(f.read_text(encoding='utf-8'))}" for name, f in zip(names, options)]
        blocks.append(f"{group}:\n" + "\n".join(lines) + "\n")
    return "\n".join(blocks).replace("$", "$$")
