"""lmlab's Optuna sweeper (hydra_plugins/lmlab_optuna), run as a user runs it: a search whose
pruner stops trials that fall behind, two sweepers sharing one study, a killed sweep resumed, the
grid sampler; and the search space and config groups it reads."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.lmlab_optuna._search import grid, search_space
from lmlab.tracking import Pruned, trial_reporter
from tests.conftest import CORPUS, REPO, TEST_ENV, TINY, compose_config, kill_when, newest_step, run_cli

# TINY (256 tokens a step), evaluated every 2 steps, only the LR searched: over a range wide
# enough that some trials fall behind the others at their first evaluation.
BUDGET = 2048


def tiny_job(budget: int = BUDGET) -> list[str]:
    return [*CORPUS, *TINY, f"train.max_tokens={budget}", "train.eval_every=2", "eval.max_batches=2",
            "eval.sample_tokens=0", "logger=none", "schedule.warmup_steps=0", "train.weight_decay=0",
            "model.dropout=0"]

WIDE_LR = "schedule.peak_lr=tag(log, interval(1e-5, 3e-1))"
STATUS = {TrialState.COMPLETE: "done", TrialState.PRUNED: "pruned"}


def study_in(sweep_dir: Path) -> optuna.Study:
    """The study a sweep made in its own dir (hydra.sweeper.storage left null)."""
    return optuna.load_study(study_name="lmlab", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")


def summary(job_dir: Path) -> dict:
    return json.loads((job_dir / "summary.json").read_text())


def test_params_in_hydras_sweep_syntax_become_optuna_distributions():
    space, fixed = search_space(["lr=tag(log, interval(1e-4, 3e-3))", "warmup=range(0, 2000, step=100)",
                                 "wd=interval(0.0, 0.2)", "layers=int(interval(2, 8))", "model=choice(small,mini)",
                                 "seed=0,1,2", "dropout=0.1", "wd=0.05", "~bugs"])
    assert space == {"lr": FloatDistribution(1e-4, 3e-3, log=True), "warmup": IntDistribution(0, 1900, step=100),
                     "layers": IntDistribution(2, 8), "model": CategoricalDistribution(["small", "mini"]),
                     "seed": CategoricalDistribution([0, 1, 2])}
    assert fixed == ["dropout=0.1", "wd=0.05", "~bugs"]  # a plain value pins a searched key
    assert grid({k: space[k] for k in ("warmup", "seed")}) == {"warmup": list(range(0, 2000, 100)), "seed": [0, 1, 2]}
    with pytest.raises(ValueError, match="lr is an interval"):
        grid(space)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_job_reports_to_its_trial_and_stops_when_pruned_unless_several_processes_train_it(tmp_path, processes):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    trial = optuna.create_study(study_name="s", storage=storage).ask()
    # What the sweeper hands a job in its hydra.sweeper config; this pruner prunes any loss above 1.
    sweeper_cfg = OmegaConf.create({"trial": trial.number, "storage": storage, "study_name": "s",
                                    "pruner": {"_target_": "optuna.pruners.ThresholdPruner", "upper": 1.0}})
    on_eval = trial_reporter(sweeper_cfg, may_stop=processes == 1)
    on_eval(None, SimpleNamespace(tokens=0, step=0, best_val_loss=6.0, best_val={}))  # untrained: not reported
    state = SimpleNamespace(tokens=512, step=2, best_val_loss=5.0, best_val={"val_loss": 5.0})
    if processes == 1:
        with pytest.raises(Pruned, match="at 512 tokens") as stop:
            on_eval(None, state)
        assert stop.value.progress == {"tokens_seen": 512, "steps": 2, "best_val_loss": 5.0,
                                       "best_val_ppl": pytest.approx(math.exp(5.0)), "val_loss": 5.0}
    else:
        on_eval(None, state)
    assert optuna.load_study(study_name="s", storage=storage).trials[0].intermediate_values == {512: 5.0}
    assert trial_reporter(OmegaConf.create({"params": {}})) is None  # a job of another sweeper


def test_hydra_finds_the_sweeper_where_lmlab_is_installed(tmp_path):
    """From outside the repo (its folder not on the path), as after `pip install -e .` or a wheel."""
    r = run_cli(["sweep=optuna", "--cfg", "hydra"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert yaml.safe_load(r.stdout)["hydra"]["sweeper"]["_target_"] == "hydra_plugins.lmlab_optuna.sweeper.OptunaSweeper"


@pytest.mark.parametrize("sampler,sampler_cls,pruner,cls", [
    ("tpe", optuna.samplers.TPESampler, "none", optuna.pruners.NopPruner),
    ("random", optuna.samplers.RandomSampler, "median", optuna.pruners.MedianPruner),
    ("cmaes", optuna.samplers.CmaEsSampler, "successive_halving", optuna.pruners.SuccessiveHalvingPruner),
    ("grid", optuna.samplers.GridSampler, "hyperband", optuna.pruners.HyperbandPruner)])
def test_every_sampler_and_pruner_is_a_config_choice(sampler, sampler_cls, pruner, cls):
    sweeper = compose_config(["sweep=optuna", f"hydra/sweeper/sampler={sampler}", f"hydra/sweeper/pruner={pruner}"],
                             hydra=True).hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.lmlab_optuna.sweeper.OptunaSweeper"
    assert isinstance(instantiate(sweeper.pruner), cls)
    made = instantiate(sweeper.sampler)
    assert isinstance(made({"x": [0, 1]}) if sampler == "grid" else made, sampler_cls)  # the sweeper gives the grid


def test_a_pruned_search_stops_trials_that_fall_behind_and_reports_the_best(tmp_path):
    sweep_dir = tmp_path / "search"
    r = run_cli(["-m", "sweep=optuna", *tiny_job(), WIDE_LR, "hydra.sweeper.n_trials=5", "hydra/sweeper/pruner=median",
                 "hydra.sweeper.pruner.n_startup_trials=2", "hydra.sweeper.pruner.n_warmup_steps=0",
                 f"hydra.sweep.dir={sweep_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = study_in(sweep_dir).trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert trials[0].state == trials[1].state == TrialState.COMPLETE  # the pruner's startup trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.state in STATUS for t in trials)
    for t in trials:
        job = summary(sweep_dir / str(t.number))
        assert job["status"] == STATUS[t.state]
        # Every evaluation after step 0 is reported against tokens seen, the last where the job stopped.
        assert sorted(t.intermediate_values) == list(range(512, job["tokens_seen"] + 1, 512))
        assert t.last_step == job["tokens_seen"] and t.intermediate_values[t.last_step] == job["best_val_loss"]
        assert t.value == pytest.approx(job["best_val_loss"])
    assert all(summary(sweep_dir / str(t.number))["tokens_seen"] < BUDGET for t in pruned)
    assert all(summary(sweep_dir / str(t.number))["tokens_seen"] == BUDGET for t in trials if t not in pruned)
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert (results["best_trial"], results["best_value"], results["best_params"]) == (best.number, best.value,
                                                                                      best.params)
    assert [(t["number"], t["state"], t["tokens"]) for t in results["trials"]] == \
        [(t.number, t.state.name.lower(), t.last_step) for t in trials]


def test_two_sweepers_on_one_storage_finish_one_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    common = [sys.executable, "-m", "lmlab", "-m", "sweep=optuna", *tiny_job(), "hydra/launcher=parallel",
              "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=4", f"hydra.sweeper.storage={storage}"]
    # The storage's tables are made once, before the sweepers start: two that make them at the same
    # moment collide in sqlite (as `optuna create-study` does it on the command line).
    optuna.create_study(study_name="lmlab", storage=storage, direction="minimize")
    # Two sweepers at once, with their own seeds so they do not propose the same trials.
    procs = [subprocess.Popen([*common, f"hydra.sweeper.sampler.seed={i}", f"hydra.sweep.dir={tmp_path / str(i)}"],
                              cwd=REPO, env={**os.environ, **TEST_ENV}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    trials = optuna.load_study(study_name="lmlab", storage=storage).trials
    # n_trials counts the whole study's trials: both sweepers stop at 4 between them (two asking
    # at the same moment may pass it by one).
    assert len(trials) in (4, 5) and [t.number for t in trials] == list(range(len(trials)))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)
    job_dirs = [tmp_path / str(i) / str(t.number) for t in trials for i in range(2)]
    assert sorted(summary(d)["best_val_loss"] for d in job_dirs if (d / "summary.json").exists()) == \
        sorted(t.value for t in trials)  # each trial ran once, in the dir of the sweeper that asked for it


def test_a_killed_sweep_resumes_its_study(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "sweep=optuna", *tiny_job(4096), "hydra.sweeper.n_trials=3",
            "hydra/sweeper/pruner=none", f"hydra.sweep.dir={sweep_dir}"]
    kill_when(args, ready=lambda: newest_step(sweep_dir / "1" / "checkpoints") >= 2, log=tmp_path / "killed.log")
    assert [t.state for t in study_in(sweep_dir).trials] == [TrialState.COMPLETE, TrialState.RUNNING]

    r = run_cli(args, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = study_in(sweep_dir).trials
    assert [(t.number, t.state) for t in trials] == [(n, TrialState.COMPLETE) for n in range(3)]
    launched = [line for line in (r.stdout + r.stderr).splitlines() if "Launching 1 jobs" in line]
    assert len(launched) == 2  # the killed trial 1 again, then trial 2; trial 0 counts as it is
    assert "resuming from" in (sweep_dir / "1" / "__main__.log").read_text()  # from its last checkpoint
    assert all(summary(sweep_dir / str(n))["tokens_seen"] == 4096 for n in range(3))


def test_the_grid_sampler_runs_each_point_of_the_grid_once(tmp_path):
    sweep_dir = tmp_path / "grid"
    r = run_cli(["-m", "sweep=optuna", *tiny_job(), "hydra/sweeper/sampler=grid", "schedule.peak_lr=choice(1e-3,1e-2)",
                 f"hydra.sweep.dir={sweep_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = study_in(sweep_dir).trials
    assert sorted(t.params["schedule.peak_lr"] for t in trials) == [1e-3, 1e-2]  # n_trials (20) cut to the grid
    assert all(t.state == TrialState.COMPLETE for t in trials)
