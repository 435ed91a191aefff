"""The search behind `hydra/sweeper=optuna`: the sweep's params become Optuna distributions; then,
batch by batch, trials are asked from the study, launched as jobs, and told how each job ended."""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from lmlab.atomic import write_text
from lmlab.errors import ConfigError
from lmlab.errors import one_line

from ._jobs import claim, ended, fail, job_dir, owner
from .trial import make_pruner, redact

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
            raise ConfigError("hydra/sweeper/sampler=grid", f"the grid sampler needs choice(...) or range(...) "
                              f"values; {key} is an interval, which has no grid")
    return values


def search(config: DictConfig, launcher: Launcher, arguments: list[str], hydra_context: HydraContext) -> optuna.Study:
    settings, sweep_dir = config.hydra.sweeper, Path(config.hydra.sweep.dir).resolve()
    sampler, pruner = (make_sampler(settings.sampler), make_pruner(settings.pruner))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # as Hydra's own sweeper records a sweep, with any storage password hidden
    write_text(sweep_dir / "multirun.yaml", redact(OmegaConf.to_yaml(config)))
    space, fixed = search_space([f"{key}={value}" for key, value in settings.params.items()] + list(arguments))
    # The default storage is passed to each job; one the user gave, each job reads from its own
    # config as the sweeper did (from the environment, say), so it is written into no job's files.
    default_storage = None if settings.storage else f"sqlite:///{sweep_dir / 'optuna.db'}"
    storage = settings.storage or default_storage
    # What files and logs name: the setting as given (${oc.env:...} stays so), its password hidden.
    named = redact(OmegaConf.to_container(settings)["storage"] or default_storage)
    n_trials = settings.n_trials
    if isinstance(sampler, functools.partial):  # the grid sampler, given its grid
        sampler = sampler(grid(space))
        n_trials = min(n_trials, math.prod(len(values) for values in grid(space).values()))
    study = optuna.create_study(study_name=settings.study_name, storage=heartbeat_storage(storage, settings),
                                sampler=sampler, pruner=pruner, direction=settings.direction, load_if_exists=True)
    log.info("Optuna study %r on %s: %d trials in it; sampler %s, pruner %s", study.study_name, named,
             len(study.trials), type(sampler).__name__, type(study.pruner).__name__)

    # Trials that a killed launch into this sweep dir left running run again first, each in its
    # own job dir, where the job resumes from its last checkpoint; those other sweepers left
    # running and stopped marking alive are failed, and their params asked for again.
    unfinished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                  if t.user_attrs.get("sweep_dir") == str(sweep_dir)]
    for t in unfinished:
        study._storage.record_heartbeat(t._trial_id)
    fail_stale_trials(study)
    fixed += [f"hydra.sweeper.storage='{default_storage}'"] if default_storage else []
    job_idx = 0
    while batch := next_batch(study, space, unfinished, settings.n_jobs, n_trials, sweep_dir):
        jobs = [job for trial in batch if (job := startable(study, trial, fixed, config, hydra_context, named))]
        returns, launch_error = launch(study, launcher, jobs, job_idx)
        job_idx += len(jobs)
        stopped = [ret for (trial, path, _), ret in zip(jobs, returns)
                   if not ended(study, trial, path, ret, launch_error)]
        for ret in stopped:
            # A job stopped by a signal stops the sweep; its trial stays running, and the same
            # command runs it again.
            _ = ret.return_value
    write_results(study, named, sweep_dir / "optimization_results.yaml")
    return study


def next_batch(study: optuna.Study, space: dict, unfinished: list, n_jobs: int, n_trials: int,
               sweep_dir: Path) -> list:
    """Up to n_jobs trials to launch together: `unfinished` ones first (taken from the list),
    then new ones while the study has fewer than n_trials. Counted before each ask, so sweepers
    sharing the study stop at n_trials between them (two asking at once can pass it by a trial)."""
    batch = [unfinished.pop(0) for _ in range(min(n_jobs, len(unfinished)))]
    while len(batch) < n_jobs and counted(study) < n_trials:
        with warnings.catch_warnings():  # launch() runs the heartbeat that Study.optimize would
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
            trial = study.ask(space)
        trial.set_user_attr("sweep_dir", str(sweep_dir))
        batch.append(trial)
    return batch


def startable(study: optuna.Study, trial, fixed: list[str], config: DictConfig, hydra_context: HydraContext,
              storage: str) -> tuple | None:
    """(trial, its job dir, its job's overrides), or None for a trial that cannot start, failed
    with the reason: its job's config does not compose, or its dir is another's (_jobs.claim).
    The job runs in <sweep dir>/<study name>/<trial number>."""
    overrides = [*(f"{key}={value}" for key, value in trial.params.items()), *fixed,
                 f"hydra.sweeper.trial={trial.number}", f"hydra.sweep.subdir={study.study_name}/{trial.number}"]
    try:
        job_cfg = hydra_context.config_loader.load_sweep_config(config, overrides)
    except Exception as e:  # this trial cannot start; the others can
        fail(study, trial, f"its job's config does not compose: {one_line(e)}")
        return None
    path = job_dir(Path(config.hydra.sweep.dir).resolve(), study, trial.number)
    if refused := claim(path, owner(study, storage, trial, job_cfg)):
        fail(study, trial, refused)
        return None
    return trial, path, overrides


def make_sampler(sampler_cfg):
    if not isinstance(sampler_cfg, DictConfig):
        raise ConfigError("hydra.sweeper.sampler", f"is a config group: pick a sampler with "
                          f"hydra/sweeper/sampler={sampler_cfg} (a slash, not a dot)")
    return instantiate(sampler_cfg)


def heartbeat_storage(url: str, settings: DictConfig) -> optuna.storages.RDBStorage:
    """The study's storage, with Optuna's heartbeat: see OptunaSweeperConf.heartbeat_interval."""
    def retry_params(study: optuna.Study, stale: optuna.trial.FrozenTrial) -> None:
        stale.user_attrs.pop("fail_reason", None)  # a copy, whose attrs the retry takes: it has not failed
        retry(study, stale)

    with warnings.catch_warnings():  # heartbeat_interval is experimental in Optuna 4 and 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryFailedTrialCallback(max_retry=settings.max_retry)
        return optuna.storages.RDBStorage(url, heartbeat_interval=settings.heartbeat_interval,
                                          grace_period=settings.grace_period,
                                          heartbeat_stale_trial_callback=retry_params)


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's fail_stale_trials (which retries each one's params), each trial told why first: a
    finished trial's attrs cannot be set."""
    for trial_id in study._storage._get_stale_trial_ids(study._study_id):
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another sweeper was first
            study._storage.set_trial_user_attr(trial_id, "fail_reason", "its sweeper stopped marking it alive "
                                               "(killed?); its params run again as a new trial")
    with warnings.catch_warnings():  # experimental in Optuna 4 and 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def counted(study: optuna.Study) -> int:
    """The study's trials toward n_trials: a failed trial that was retried counts as its retry,
    and a waiting one (a retry not run yet) as nothing until it is asked for."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    return sum(t.number not in retried and t.state != TrialState.WAITING for t in trials)


def launch(study: optuna.Study, launcher: Launcher, jobs: list, job_idx: int) -> tuple[list, str | None]:
    """Run the jobs through the launcher, marking their trials alive meanwhile (Optuna's own
    heartbeat thread, as Study.optimize runs it). A launcher that fails (a worker killed by the
    OOM killer) returns nothing: each job's trial is then told by its summary.json."""
    if not jobs:
        return [], None
    with contextlib.ExitStack() as alive:
        for trial, _, _ in jobs:
            alive.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
        try:
            return launcher.launch([overrides for _, _, overrides in jobs], initial_job_idx=job_idx), None
        except Exception as e:
            log.error("the launcher failed: %s", one_line(e))
            return [None] * len(jobs), f"the launcher failed: {one_line(e)}"


def write_results(study: optuna.Study, storage: str, path: Path) -> None:
    """The study's best trial and every trial (its state, value, params, the tokens it had trained
    on when it last reported, and why it failed), to the log and to optimization_results.yaml."""
    trials = [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "tokens": t.last_step,
               "params": t.params, "fail_reason": t.user_attrs.get("fail_reason")}
              for t in study.get_trials(deepcopy=False)]
    results = {"name": "optuna", "study_name": study.study_name, "storage": storage, "trials": trials}
    for t in trials:
        log.info("trial %d: %s, value %s, %s tokens, %s%s", t["number"], t["state"], t["value"], t["tokens"],
                 t["params"], f": {t['fail_reason']}" if t["fail_reason"] else "")
    if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        best = study.best_trial
        results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
        log.info("Best trial %d: value %s, params %s", best.number, best.value, best.params)
    OmegaConf.save(OmegaConf.create(results), path)
