"""What a multirun's command line does to its sweep. Hydra lets a command-line override win over
the sweep's `hydra.sweeper.params`, without a word: `-m sweep=context model.max_seq_len=64` runs
one job, not four, and `-m sweep=size model.d_model=64` gives every model option that width.
`PinnedKeys`, a Hydra callback (conf/config.yaml, `hydra.callbacks`), says so in one line before
any job runs; docs/sweeps.md lists the overrides that shrink a sweep without changing what it varies.
"""
from __future__ import annotations

import logging
from typing import Callable

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("lmlab")


def _parse(lines: list[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(lines)


def _leaves(node, key: str = "") -> dict[str, object]:
    """Every leaf of a config container by its dotted key, interpolations unresolved."""
    if not isinstance(node, dict):
        return {key: node}
    return {leaf: value for name, child in node.items()
            for leaf, value in _leaves(child, f"{key}.{name}" if key else str(name)).items()}


def group_setters(group: Override, base: list[str], compose: Callable[[list[str]], DictConfig]) -> dict[str, list[str]]:
    """Each key that an option of a swept config group (`model: small,optionA,optionC`, `+variant:
    baseline,size,...`) sets to another value than `base` composes to, with those options."""
    def leaves(overrides: list[str]) -> dict[str, object]:
        return _leaves(OmegaConf.to_container(compose(overrides), resolve=False))

    prefix = "+" if group.is_add() else ""
    default, setters = leaves(base), {}
    for value in group.sweep_string_iterator():
        cfg = leaves([*base, f"{prefix}{group.key_or_group}={value}"])
        for key in cfg.keys() | default.keys():
            if repr(cfg.get(key)) != repr(default.get(key)):
                setters.setdefault(key, []).append(value)
    return setters


def pinned_keys(config: DictConfig, compose: Callable[[list[str]], DictConfig]) -> str | None:
    """One line naming each command-line override that pins a key the sweep varies, directly (a
    key of its params) or through a swept config group's options; None when there is none."""
    params = config.hydra.sweeper.get("params") or {}
    task = _parse(list(config.hydra.overrides.task))
    swept = {o.key_or_group: o for o in _parse([f"{key}={value}" for key, value in params.items()])}
    swept.update({o.key_or_group: o for o in task if o.is_sweep_override()})
    pins = [o for o in task if not o.is_sweep_override() and o.key_or_group != "sweep"]
    if not swept or not pins:
        return None
    choice = config.hydra.runtime.choices.get("sweep")
    name = f"sweep={choice}" if choice else "the multirun"
    base = [o.input_line for o in task if "." not in o.key_or_group and not o.is_sweep_override()
            and o.key_or_group not in swept]
    groups = {o.input_line.split("=", 1)[0]: group_setters(o, base, compose) for key, o in swept.items()
              if "." not in key and not o.is_interval_sweep()}
    found = []
    for pin in pins:
        key = pin.key_or_group
        if key in swept:
            found.append(f"{pin.input_line} replaces the values {name} sweeps ({swept[key].input_line})")
        for group, setters in groups.items():
            if key in setters:
                found.append(f"{pin.input_line} replaces what {name}'s {group}={','.join(setters[key])} set")
    if not found:
        return None
    return (f"{'; '.join(found)}: every job runs the pinned value. To sweep other values give a list (key=a,b); "
            "to shrink a sweep for a quick try, see docs/sweeps.md")


class PinnedKeys(Callback):
    """Hydra callback: warns, once per multirun and before any job, of the keys `pinned_keys` finds."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra import compose

        warning = pinned_keys(config, lambda overrides: compose(kwargs.get("config_name"), overrides))
        if warning:
            log.warning(warning)
