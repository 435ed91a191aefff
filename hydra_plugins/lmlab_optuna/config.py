"""`hydra/sweeper=optuna` and its config groups:

  hydra/sweeper/sampler: tpe (default) | random | cmaes | grid
  hydra/sweeper/pruner:  none (default) | median | successive_halving | hyperband

Each node is the Optuna class's own arguments (Optuna's defaults). A pruner's steps are the
tokens a trial has trained on, so its `n_warmup_steps`, `interval_steps`, `min_resource` and
`max_resource` count tokens, and `min_resource` defaults to the tokens of a trial's first
evaluation (trial.make_pruner).
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class TPESampler:
    _target_: str = "optuna.samplers.TPESampler"
    seed: Optional[int] = None
    n_startup_trials: int = 10
    multivariate: bool = False
    constant_liar: bool = True  # trials running at the same time are not all proposed alike


@dataclass
class RandomSampler:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: Optional[int] = None


@dataclass
class CmaEsSampler:
    _target_: str = "optuna.samplers.CmaEsSampler"
    seed: Optional[int] = None
    n_startup_trials: int = 1
    sigma0: Optional[float] = None
    popsize: Optional[int] = None
    restart_strategy: Optional[str] = None


@dataclass
class GridSampler:
    # The sweeper gives the grid: every value of each choice(...) and range(...) in params.
    _target_: str = "optuna.samplers.GridSampler"
    _partial_: bool = True
    seed: Optional[int] = None


@dataclass
class NopPruner:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPruner:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class SuccessiveHalvingPruner:
    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = None  # null: the first evaluation's tokens; "auto": Optuna's guess
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class HyperbandPruner:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: Optional[int] = None  # null: the first evaluation's tokens
    max_resource: Any = "auto"
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.lmlab_optuna.sweeper.OptunaSweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    sampler: Any = MISSING
    pruner: Any = MISSING
    direction: str = "minimize"
    study_name: str = "lmlab"
    # An Optuna storage URL several sweepers can share (sqlite:///study.db, postgresql://...);
    # null: sqlite:///<sweep dir>/optuna.db, so a relaunch into the same sweep dir resumes it. One
    # with a password is best read from the environment: '${oc.env:OPTUNA_STORAGE}'.
    storage: Optional[str] = None
    # Optuna's heartbeat: the sweeper marks its running trials alive every heartbeat_interval
    # seconds; a trial not marked for grace_period (null: twice the interval) was left by a
    # sweeper that died, and the next sweeper of the study fails it and retries its params, at
    # most max_retry times.
    heartbeat_interval: int = 60
    grace_period: Optional[int] = None
    max_retry: int = 1
    n_trials: int = 20  # trials in the whole study, those already in it (from any sweeper) included
    n_jobs: int = 1  # trials launched at once, as one batch for the launcher
    # Search space: key -> Hydra's sweep syntax (interval, tag(log, ...), range, choice, a,b,c).
    params: Dict[str, str] = field(default_factory=dict)
    trial: Optional[int] = None  # in a job: the number of the trial it runs (set by the sweeper)


_GROUPS = {
    "hydra/sweeper/sampler": {"tpe": TPESampler, "random": RandomSampler, "cmaes": CmaEsSampler,
                              "grid": GridSampler},
    "hydra/sweeper/pruner": {"none": NopPruner, "median": MedianPruner,
                             "successive_halving": SuccessiveHalvingPruner, "hyperband": HyperbandPruner},
    "hydra/sweeper": {"optuna": OptunaSweeperConf},
}
for _group, _options in _GROUPS.items():
    for _name, _node in _options.items():
        ConfigStore.instance().store(group=_group, name=_name, node=_node, provider="lmlab")
