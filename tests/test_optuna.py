"""lmlab's Optuna sweeper (hydra_plugins/lmlab_optuna), run as a user runs it: a search whose
pruner stops trials that fall behind, two sweepers sharing one study, a killed sweep resumed, the
grid sampler; and the search space and config groups it reads."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.lmlab_optuna._search import grid, search_space
from hydra_plugins.lmlab_optuna.trial import job_trial, redact
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


def trial_dir(sweep_dir: Path, number: int, study: str = "lmlab") -> Path:
    """Where a trial's job runs: its study's folder in the sweep dir, then its number."""
    return sweep_dir / study / str(number)


def table(study: optuna.Study) -> list[tuple]:
    """The trial table a test asserts on: number, state, value, params, user attrs."""
    return [(t.number, t.state.name, t.value, t.params, {k: v for k, v in t.user_attrs.items() if k != "sweep_dir"})
            for t in study.trials]


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


@pytest.mark.parametrize("args,line", [
    (["hydra/sweeper/sampler=grid", "schedule.peak_lr=interval(1e-4,1e-3)"],
     "lmlab: error: hydra/sweeper/sampler=grid: the grid sampler needs choice(...) or range(...) values; "
     "schedule.peak_lr is an interval, which has no grid\n"),
    (["hydra.sweeper.pruner=successive_halving"],
     "lmlab: error: hydra.sweeper.pruner: is a config group: pick a pruner with "
     "hydra/sweeper/pruner=successive_halving (a slash, not a dot)\n")])
def test_a_grid_over_an_interval_and_a_pruner_given_as_a_value_are_one_line_errors(tmp_path, args, line):
    r = run_cli(["-m", "sweep=optuna", *tiny_job(), *args, f"hydra.sweep.dir={tmp_path}"], cwd=REPO)
    assert (r.returncode, r.stderr) == (2, line)


def test_the_sweepers_own_defaults_minimize_and_prune_from_the_first_evaluation(tmp_path):
    """`hydra/sweeper=optuna` alone, as docs/search.md shows it (sweep=optuna sets some again)."""
    sweeper = compose_config(["hydra/sweeper=optuna", "hydra/sweeper/pruner=hyperband"], hydra=True).hydra.sweeper
    assert sweeper.direction == "minimize"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    trial = optuna.create_study(study_name=sweeper.study_name, storage=storage, direction=sweeper.direction).ask()
    with open_dict(sweeper):
        sweeper.trial, sweeper.storage = trial.number, storage
    pruner = job_trial(sweeper, first_eval_tokens=512).study.pruner
    assert isinstance(pruner, optuna.pruners.HyperbandPruner) and pruner._min_resource == 512


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
    # The evaluation that ends training is reported, never pruned: the trial trained its budget.
    on_eval(None, SimpleNamespace(tokens=1024, step=4, best_val_loss=4.0, best_val={"val_loss": 4.0}), final=True)
    assert optuna.load_study(study_name="s", storage=storage).trials[0].intermediate_values == {512: 5.0, 1024: 4.0}
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
        job = summary(trial_dir(sweep_dir, t.number))
        assert job["status"] == STATUS[t.state]
        # Every evaluation after step 0 is reported against tokens seen, the last where the job stopped.
        assert sorted(t.intermediate_values) == list(range(512, job["tokens_seen"] + 1, 512))
        assert t.last_step == job["tokens_seen"] and t.intermediate_values[t.last_step] == job["best_val_loss"]
        assert t.value == pytest.approx(job["best_val_loss"])
    assert all(summary(trial_dir(sweep_dir, t.number))["tokens_seen"] < BUDGET for t in pruned)
    assert all(summary(trial_dir(sweep_dir, t.number))["tokens_seen"] == BUDGET for t in trials if t not in pruned)
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
    job_dirs = [trial_dir(tmp_path / str(i), t.number) for t in trials for i in range(2)]
    assert sorted(summary(d)["best_val_loss"] for d in job_dirs if (d / "summary.json").exists()) == \
        sorted(t.value for t in trials)  # each trial ran once, in the dir of the sweeper that asked for it


def test_a_killed_sweep_resumes_its_study(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "sweep=optuna", *tiny_job(4096), "hydra.sweeper.n_trials=3",
            "hydra/sweeper/pruner=none", f"hydra.sweep.dir={sweep_dir}"]
    kill_when(args, ready=lambda: newest_step(trial_dir(sweep_dir, 1) / "checkpoints") >= 2,
              log=tmp_path / "killed.log")
    assert [t.state for t in study_in(sweep_dir).trials] == [TrialState.COMPLETE, TrialState.RUNNING]

    r = run_cli(args, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = study_in(sweep_dir).trials
    assert [(t.number, t.state) for t in trials] == [(n, TrialState.COMPLETE) for n in range(3)]
    launched = [line for line in (r.stdout + r.stderr).splitlines() if "Launching 1 jobs" in line]
    assert len(launched) == 2  # the killed trial 1 again, then trial 2; trial 0 counts as it is
    assert "resuming from" in (trial_dir(sweep_dir, 1) / "__main__.log").read_text()  # from its last checkpoint
    assert all(summary(trial_dir(sweep_dir, n))["tokens_seen"] == 4096 for n in range(3))


def test_the_grid_sampler_runs_each_point_of_the_grid_once(tmp_path):
    sweep_dir = tmp_path / "grid"
    r = run_cli(["-m", "sweep=optuna", *tiny_job(), "hydra/sweeper/sampler=grid", "schedule.peak_lr=choice(1e-3,1e-2)",
                 f"hydra.sweep.dir={sweep_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = study_in(sweep_dir).trials
    assert sorted(t.params["schedule.peak_lr"] for t in trials) == [1e-3, 1e-2]  # n_trials (20) cut to the grid
    assert all(t.state == TrialState.COMPLETE for t in trials)


def test_a_second_study_in_the_same_sweep_dir_trains_its_own_trials(tmp_path):
    """Trial numbers restart at 0 in every study: a study's trials run in its own folder, and a
    trial never takes a dir whose owner (study, trial, config) is another."""
    sweep_dir = tmp_path / "sweep"
    common = ["-m", "sweep=optuna", *tiny_job(1024), "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={sweep_dir}"]
    for study, lr in (("lmlab", "tag(log, interval(1e-5, 3e-5))"), ("second", "tag(log, interval(1e-2, 3e-2))")):
        r = run_cli([*common, f"schedule.peak_lr={lr}", f"hydra.sweeper.study_name={study}"], cwd=REPO)
        assert r.returncode == 0, r.stderr[-3000:]
    first, second = (optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'optuna.db'}").trials[0]
                     for name in ("lmlab", "second"))
    assert second.params["schedule.peak_lr"] > 1e-2 and second.state == TrialState.COMPLETE
    assert second.value == summary(trial_dir(sweep_dir, 0, "second"))["best_val_loss"] != first.value
    assert first.value == summary(trial_dir(sweep_dir, 0))["best_val_loss"]

    # The same study name on another storage: its trial 0 finds the first study's dir, and fails.
    other = [*common, "schedule.peak_lr=tag(log, interval(1e-2, 3e-2))",
             f"hydra.sweeper.storage=sqlite:///{tmp_path / 'other.db'}"]
    r = run_cli(other, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    (trial,) = optuna.load_study(study_name="lmlab", storage=f"sqlite:///{tmp_path / 'other.db'}").trials
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith(f"{trial_dir(sweep_dir, 0)} holds trial 0 of study 'lmlab' on "
                                                      f"sqlite:///{sweep_dir / 'optuna.db'}, started ")
    assert summary(trial_dir(sweep_dir, 0))["best_val_loss"] == first.value  # left as it was
    assert f"schedule.peak_lr={first.params['schedule.peak_lr']}" in \
        yaml.safe_load((trial_dir(sweep_dir, 0) / ".hydra" / "overrides.yaml").read_text())


def test_a_diverged_trial_and_one_whose_config_does_not_compose_fail_with_the_reason_and_the_sweep_goes_on(tmp_path):
    sweep_dir = tmp_path / "grid"
    r = run_cli(["-m", "sweep=optuna", *tiny_job(1024), "hydra/sweeper/sampler=grid",
                 "schedule.peak_lr=choice(1e-3,1e30)", "model=choice(small,nosuch)", f"hydra.sweep.dir={sweep_dir}"],
                cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = {(t.params["schedule.peak_lr"], t.params["model"]): t for t in study_in(sweep_dir).trials}
    assert len(trials) == 4
    done = trials[1e-3, "small"]
    assert done.state == TrialState.COMPLETE and math.isfinite(done.value)
    diverged = trials[1e30, "small"]
    assert (diverged.state, diverged.value) == (TrialState.FAIL, None)
    assert diverged.user_attrs["fail_reason"].startswith("TrainingDiverged: training diverged: the weights of step")
    for lr in (1e-3, 1e30):
        t = trials[lr, "nosuch"]
        assert t.state == TrialState.FAIL and not trial_dir(sweep_dir, t.number).exists()
        assert t.user_attrs["fail_reason"].startswith("its job's config does not compose: In 'config': Could not find "
                                                      "'model/nosuch'")


def test_a_sigkilled_sweepers_running_trial_is_failed_and_retried_by_the_next_one(tmp_path):
    """Optuna's heartbeat: a sweeper marks its trials alive every heartbeat_interval seconds; one
    killed (SIGKILL: no handler runs) leaves a RUNNING trial that the next sweeper of the study
    finds stale after grace_period, fails, and runs again with its params as a new trial."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="lmlab", storage=storage, direction="minimize")
    args = ["-m", "sweep=optuna", *tiny_job(4096), "hydra.sweeper.n_trials=1", f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2", "hydra/sweeper/pruner=none"]
    kill_when([*args, f"hydra.sweep.dir={tmp_path / 'a'}"],
              ready=lambda: newest_step(trial_dir(tmp_path / "a", 0) / "checkpoints") >= 2, log=tmp_path / "killed.log")
    time.sleep(3)  # past grace_period since its last heartbeat
    r = run_cli([*args, f"hydra.sweep.dir={tmp_path / 'b'}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    killed, retry = optuna.load_study(study_name="lmlab", storage=storage).trials  # n_trials counts the retry only
    assert (killed.state, retry.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert killed.user_attrs["fail_reason"] == "its sweeper stopped marking it alive (killed?); its params run again " \
                                              "as a new trial"
    assert retry.params == killed.params and retry.system_attrs["failed_trial"] == 0
    assert "fail_reason" not in retry.user_attrs
    assert summary(trial_dir(tmp_path / "b", 1))["tokens_seen"] == 4096


def test_the_storage_url_is_read_from_the_environment_and_written_nowhere(tmp_path):
    storage = f"sqlite:///{tmp_path / 's3cret' / 'study.db'}"
    (tmp_path / "s3cret").mkdir()
    sweep_dir = tmp_path / "sweep"
    r = subprocess.run([sys.executable, "-m", "lmlab", "-m", "sweep=optuna", *tiny_job(1024),
                        "hydra.sweeper.n_trials=1", "hydra.sweeper.storage=${oc.env:OPTUNA_STORAGE}",
                        f"hydra.sweep.dir={sweep_dir}"], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, **TEST_ENV, "OPTUNA_STORAGE": storage})
    assert r.returncode == 0, r.stderr[-3000:]
    assert [t.state for t in optuna.load_study(study_name="lmlab", storage=storage).trials] == [TrialState.COMPLETE]
    written = [p for p in sweep_dir.rglob("*") if p.is_file() and b"s3cret" in p.read_bytes()]
    assert written == []


def test_a_storage_password_typed_on_the_command_line_is_hidden_in_the_files_written(tmp_path):
    assert redact("storage: postgresql://user:pw@host:5432/db, mysql+pymysql://u:p%40ss@h/db sqlite:///a.db") == \
        "storage: postgresql://user:***@host:5432/db, mysql+pymysql://u:***@h/db sqlite:///a.db"
    # A job that is no trial of a study never opens the storage, so the URL need not answer.
    r = run_cli([*CORPUS, *TINY, "train.max_steps=2", "eval.max_batches=1", "eval.sample_tokens=0", "logger=none",
                 "hydra/sweeper=optuna", "hydra.sweeper.storage=postgresql://user:s3cret@host/db",
                 f"hydra.run.dir={tmp_path}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "postgresql://user:***@host/db" in (tmp_path / ".hydra" / "hydra.yaml").read_text()
    assert [p for p in tmp_path.rglob("*") if p.is_file() and b"s3cret" in p.read_bytes()] == []


def test_a_trial_whose_worker_is_killed_fails_with_the_reason_and_the_sweep_goes_on(tmp_path):
    """A joblib worker killed by the OOM killer (SIGKILL): the launcher fails, and the trial with it."""
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "sweep=optuna", *tiny_job(4096), "hydra/launcher=parallel", "hydra.sweeper.n_trials=2",
            "hydra/sweeper/pruner=none", f"hydra.sweep.dir={sweep_dir}"]
    with open(tmp_path / "sweep.log", "w") as log:
        sweeper = subprocess.Popen([sys.executable, "-m", "lmlab", *args], cwd=REPO, stdout=log,
                                   stderr=subprocess.STDOUT, env={**os.environ, **TEST_ENV})
        while newest_step(trial_dir(sweep_dir, 0) / "checkpoints") < 2:
            assert sweeper.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
            time.sleep(0.01)
        for worker in [pid for pid in children(sweeper.pid) if b"LokyProcess" in cmdline(pid)]:
            os.kill(worker, signal.SIGKILL)
        assert sweeper.wait(timeout=300) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    killed, after = study_in(sweep_dir).trials
    assert (killed.state, after.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert killed.user_attrs["fail_reason"].startswith("its job ended without a summary.json (the launcher failed: ")


def children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()
