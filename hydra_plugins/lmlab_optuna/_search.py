"""The search behind `hydra/sweeper=optuna`: the sweep's params become Optuna distributions; then,
batch by batch, trials are asked from the study, launched as jobs, and told how each job ended."""
from __future__ import annotations

import functools
import json
import logging
import math
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

log = logging.getLogger(__name__)


def distribution(override: Override) -> BaseDistribution:
    """A sweep override as Optuna samples it: interval(a, b) uniform (log-uniform under
    tag(log, ...); integer with int(...)), range(...) on its steps (stop left out, as in Python),
    choice(...), a,b,c and shuffle(range(...)) categorical."""
    sweep = override.value()
    if override.is_interval_sweep():
        kind = IntDistribution if isinstance(sweep.start, int) and isinstance(sweep.end, int) else FloatDistribution
        return kind(sweep.start, sweep.end, log="log" in sweep.tags)
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    if override.is_range_sweep() and not sweep.shuffle:
        kind = IntDistribution if all(isinstance(v, int) for v in values) else FloatDistribution
        return kind(values[0], values[-1], step=sweep.step)
    return CategoricalDistribution(values)


def search_space(lines: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The searched keys' distributions, and the overrides every trial gets as they are. A later
    line wins: a plain value on the command line pins a key that params searches."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = distribution(override)
        else:
            fixed[key] = override.input_line
    return space, list(fixed.values())


def grid(space: dict[str, BaseDistribution]) -> dict[str, list]:
    """Every value of each key, for the grid sampler; a continuous interval has no grid."""
    values = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            values[key] = list(dist.choices)
        elif getattr(dist, "step", None) is not None:
            values[key] = [dist.low + i * dist.step for i in range(round((dist.high - dist.low) / dist.step) + 1)]
        else:
            raise ValueError(f"the grid sampler needs choice(...) or range(...) values; {key} is an interval")
    return values


def tell(study: optuna.Study, number: int, ret: JobReturn) -> None:
    """Tell the study how a finished job ended: pruned (its summary.json says so), done (the
    finite objective it returned), or failed (its summary.json says why)."""
    path = Path(ret.hydra_cfg.hydra.runtime.output_dir) / "summary.json"
    summary = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    try:
        if summary.get("status") == "pruned":
            study.tell(number, state=TrialState.PRUNED)
        elif math.isfinite(value := float(ret.return_value)):
            study.tell(number, value)
        else:
            log.warning("trial %d failed: %s", number, summary.get("reason", "its objective is not finite"))
            study.tell(number, state=TrialState.FAIL)
    except RuntimeError as e:
        # The grid sampler calls study.stop() when its grid is done, which only study.optimize()
        # accepts; the trial's result is stored by then.
        if "Study.stop" not in str(e):
            raise


def search(config: DictConfig, launcher: Launcher, arguments: list[str]) -> optuna.Study:
    settings, sweep_dir = config.hydra.sweeper, Path(config.hydra.sweep.dir).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, sweep_dir / "multirun.yaml")  # as Hydra's own sweeper records a sweep
    space, fixed = search_space([f"{key}={value}" for key, value in settings.params.items()] + list(arguments))
    storage = settings.storage or f"sqlite:///{sweep_dir / 'optuna.db'}"
    sampler, n_trials = instantiate(settings.sampler), settings.n_trials
    if isinstance(sampler, functools.partial):  # the grid sampler, given its grid
        sampler = sampler(grid(space))
        n_trials = min(n_trials, math.prod(len(values) for values in grid(space).values()))
    study = optuna.create_study(study_name=settings.study_name, storage=storage, sampler=sampler,
                                pruner=instantiate(settings.pruner), direction=settings.direction, load_if_exists=True)
    log.info("Optuna study %r on %s: %d trials in it; sampler %s, pruner %s", study.study_name, storage,
             len(study.trials), type(sampler).__name__, type(study.pruner).__name__)

    # Trials that a killed launch into this sweep dir left running run again first, each in its
    # own job dir, where the job resumes from its last checkpoint.
    unfinished = [(t.number, t.params) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                  if t.user_attrs.get("sweep_dir") == str(sweep_dir)]
    job_idx = 0
    while True:
        batch, unfinished = unfinished[:settings.n_jobs], unfinished[settings.n_jobs:]
        # Counted before each ask, so sweepers sharing the study stop at n_trials between them
        # (two asking at the same moment can still pass it by a trial).
        while len(batch) < settings.n_jobs and len(study.get_trials(deepcopy=False)) < n_trials:
            trial = study.ask(space)
            trial.set_user_attr("sweep_dir", str(sweep_dir))
            batch.append((trial.number, trial.params))
        if not batch:
            break
        jobs = [[*(f"{key}={value}" for key, value in params.items()), *fixed, f"hydra.sweeper.trial={number}",
                 f"hydra.sweeper.storage='{storage}'"] for number, params in batch]
        returns = launcher.launch(jobs, initial_job_idx=job_idx)
        job_idx += len(returns)
        for (number, _), ret in zip(batch, returns):
            if ret.status != JobStatus.FAILED:
                tell(study, number, ret)
        for ret in returns:
            # A job that raised (stopped by a signal) stops the sweep; its trial stays running,
            # and the same command runs it again.
            _ = ret.return_value
    write_results(study, storage, sweep_dir / "optimization_results.yaml")
    return study


def write_results(study: optuna.Study, storage: str, path: Path) -> None:
    """The study's best trial and every trial (its state, value, params and the tokens it had
    trained on when it last reported), to the log and to optimization_results.yaml."""
    trials = [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "tokens": t.last_step,
               "params": t.params} for t in study.get_trials(deepcopy=False)]
    results = {"name": "optuna", "study_name": study.study_name, "storage": storage, "trials": trials}
    for t in trials:
        log.info("trial %d: %s, value %s, %s tokens, %s", t["number"], t["state"], t["value"], t["tokens"], t["params"])
    if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        best = study.best_trial
        results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
        log.info("Best trial %d: value %s, params %s", best.number, best.value, best.params)
    OmegaConf.save(OmegaConf.create(results), path)
