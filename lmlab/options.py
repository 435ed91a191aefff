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


def help_page(config_name: str, overrides: list[str]) -> str:
    """The page Hydra's `--help` prints for `config_name` composed with `overrides` (hydra.help's
    template, its flags from Hydra's own parser), without what Hydra computes for it first: every
    config group's option list, twice over ~130 groups (2-5 s), which lmlab's template never shows."""
    from string import Template

    from hydra import compose, initialize_config_module
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import get_args_parser

    with initialize_config_module(config_module="lmlab.conf", version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    return Template(cfg.hydra.help.template).substitute(FLAGS_HELP=Hydra.format_args_help(get_args_parser()))


def answer_help(config_name: str, prog: str) -> None:
    """A Hydra app's `--help` (or `-h`) on the command line: print its page and exit 0, in a
    fraction of the time Hydra's own takes; else return."""
    import sys

    from lmlab.cli import HELP_FLAGS, print_page
    from lmlab.errors import report_errors

    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
        overrides = [arg for arg in sys.argv[1:] if not arg.startswith("-")]
        report_errors(lambda: print_page(help_page(config_name, overrides)), prog)
