"""The config's resolvers (`${lmlab.*:...}` in conf/) and the names of runs and sweep jobs, registered
with the schema (lmlab.config) in Hydra's ConfigStore by `register_configs`."""
from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import fields
from datetime import datetime
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from lmlab.config import (BenchConfig, BenchRunConfig, Config, DataConfig, EvalConfig, LoggerConfig, ModelConfig,
                          ScheduleConfig, TokenizerConfig, TrainConfig)
from lmlab.errors import SCHEMA_PREFIX, ConfigError


def register_configs(bench: bool = False) -> None:
    """The schema that conf/*.yaml extend. `bench=True` puts the bench's schema (the trainer's plus a
    `bench` node) under the name config.yaml starts from, so the bench composes every trainer group."""
    from lmlab.options import options_page

    cs = ConfigStore.instance()
    cs.store(name=f"{SCHEMA_PREFIX}config", node=BenchRunConfig if bench else Config)
    for group, node in [("model", ModelConfig), ("data", DataConfig), ("schedule", ScheduleConfig),
                        ("tokenizer", TokenizerConfig), ("train", TrainConfig), ("eval", EvalConfig),
                        ("logger", LoggerConfig)]:
        cs.store(group=group, name=f"{SCHEMA_PREFIX}{group}", node=node)
    OmegaConf.register_new_resolver("lmlab.rows", rows_of, replace=True)
    OmegaConf.register_new_resolver("lmlab.package_dir", package_dir, replace=True)
    OmegaConf.register_new_resolver("lmlab.options", options_page, replace=True)
    OmegaConf.register_new_resolver("lmlab.bench_keys", bench_keys, replace=True)
    OmegaConf.register_new_resolver("lmlab.tasks_for", lambda gpus: max(1, int(gpus)), replace=True)
    OmegaConf.register_new_resolver("lmlab.dirname", lambda: job_dirname(job_name()), replace=True)
    # Cached, so Hydra carries the value into every job of a sweep (as it does `now`).
    OmegaConf.register_new_resolver("lmlab.launch", launch_stamp, replace=True, use_cache=True)


def bench_keys() -> str:
    """`${lmlab.bench_keys:}`: the bench's own keys with their defaults, a line each, for its --help page."""
    shown = {True: "true", False: "false", None: "null"}
    return "\n".join(f"  bench.{f.name}={shown[value] if value is None or isinstance(value, bool) else value}"
                     for f in fields(BenchConfig) for value in [getattr(BenchConfig(), f.name)])


def rows_of(tokens: int, context: int) -> int:
    """`${lmlab.rows:tokens,context}`: the rows of `context` tokens that hold `tokens`, exactly."""
    if tokens % context:
        raise ConfigError("lmlab.rows", f"{tokens} tokens do not fill whole rows of {context}: "
                          "pick a batch_tokens that every arm's context divides")
    return tokens // context



def package_dir(name: str) -> str:
    """`${lmlab.package_dir:NAME}`: the folder of the installed package NAME, found without
    importing it, so a config can read data files that a dependency installs."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("lmlab.package_dir", f"no installed package {name!r}: reinstall lmlab (pip install -e .)")
    return spec.submodule_search_locations[0]


def swept_keys(hydra_cfg: DictConfig) -> set[str]:
    """The keys a multirun sweeps over: its sweeper's params and the command line's sweep overrides
    (`a=1,2`, `range(...)`, ...). A job's own config only holds its values, so the command line is
    read from the sweep's multirun.yaml, which Hydra's sweeper writes before launching any job."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    master = Path(hydra_cfg.sweep.dir) / "multirun.yaml"
    source = OmegaConf.load(master).hydra if master.is_file() else hydra_cfg
    params = source.sweeper.get("params") or {}
    lines = [f"{key}={value}" for key, value in params.items()] + list(source.overrides.task)
    return {o.key_or_group for o in OverridesParser.create().parse_overrides(lines) if o.is_sweep_override()}


def job_name(hydra_cfg: DictConfig | None = None) -> str:
    """A job's overrides as one string: in a sweep, the swept ones first, as the report's table
    puts them, then the rest, each part sorted; the keys Hydra's override_dirname excludes are left
    out. The same command always gives the same name, so a relaunched sweep finds its job dirs."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    hydra_cfg = hydra_cfg or HydraConfig.get()
    style = hydra_cfg.job.config.override_dirname
    overrides = [o for o in OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
                 if o.key_or_group not in style.exclude_keys]
    swept = swept_keys(hydra_cfg) if hydra_cfg.mode == RunMode.MULTIRUN else set()
    lines = sorted(o.input_line for o in overrides if o.key_or_group in swept) + \
        sorted(o.input_line for o in overrides if o.key_or_group not in swept)
    return style.item_sep.join(line.replace("=", style.kv_sep, 1) for line in lines)


def launch_stamp(pattern: str) -> str:
    """A run or sweep dir name that every process of one launch agrees on, and no other launch
    shares: the time now in `pattern`; under torchrun, `torchrun-` and the time its first process
    read, shared with the others through torchrun's store (lmlab.distributed.first_offered).
    torchrun's run id cannot serve: it is the literal `none` in a static launch
    (--master-addr/--master-port) and the same in every launch given the same --rdzv-id."""
    now = datetime.now().strftime(pattern)
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return now
    from lmlab.distributed import first_offered

    shared = first_offered("lmlab.launch_stamp", now)
    if shared is None:
        raise ConfigError("hydra.run.dir", "this torchrun launch shares no store with its processes "
                          "(TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1), so they cannot agree on a run dir: set hydra.run.dir")
    return f"torchrun-{shared}"


def job_dirname(name: str, limit: int = 200) -> str:
    """A sweep job's dir name: its `job_name`, cut to fit a file name (255 bytes) when long and
    ended with a hash of the whole, so it stays unique and a relaunched sweep finds the same dir."""
    if len(name.encode()) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name.encode()[:limit - 13].decode(errors='ignore')}~{digest}"
