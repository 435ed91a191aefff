"""Sweeps through the launchers users already have: submitit (local processes; SLURM composes),
joblib (several jobs at once, each on its share of the cores). Optuna on shared storage: test_optuna.py."""
import json
import os

import pytest
import yaml
from omegaconf import OmegaConf

from lmlab.__main__ import parallel_jobs
from tests.conftest import CORPUS, REPO, TINY, run_cli

JOB = [*CORPUS, *TINY, "train.max_steps=2", "train.eval_every=2", "eval.max_batches=2",
       "eval.sample_tokens=0", "logger=none"]


def summaries(sweep_dir):
    return {p.parent.name.split(",")[0]: json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")}


def test_submitit_local_runs_each_job_in_its_own_process(tmp_path):
    r = run_cli(["-m", "hydra/launcher=local", *JOB, "train.seed=0,1", f"hydra.sweep.dir={tmp_path}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    done = summaries(tmp_path)
    assert set(done) == {"train.seed=0", "train.seed=1"} and all(s["status"] == "done" for s in done.values())
    # submitit's own records: one folder per job, named by the process it ran in.
    jobs = [p for p in (tmp_path / ".submitit").iterdir() if p.name.isdigit()]
    assert len(jobs) == 2 and all(list(p.glob("*_result.pkl")) for p in jobs)


def test_the_slurm_launcher_composes_with_one_task_per_gpu():
    r = run_cli(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=lab",
                 "hydra.launcher.gpus_per_node=4", "hydra.launcher.timeout_min=60", "--cfg", "hydra", "--resolve"],
                cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    launcher = yaml.safe_load(r.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["partition"], launcher["account"], launcher["gpus_per_node"], launcher["tasks_per_node"],
            launcher["timeout_min"]) == ("gpu", "lab", 4, 4, 60)
    assert launcher["signal_delay_s"] > 0 and launcher["max_num_timeout"] > 0


def test_the_slurm_launcher_asks_for_no_gpu_unless_told():
    """A CPU-only cluster refuses a GPU request (sbatch: invalid generic resource), which submitit
    reports as a traceback: the default asks for one task and no GPU."""
    r = run_cli(["hydra/launcher=slurm", "--cfg", "hydra", "--resolve"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    launcher = yaml.safe_load(r.stdout)["hydra"]["launcher"]
    assert (launcher["gpus_per_node"], launcher["tasks_per_node"]) == (0, 1)


def test_parallel_jobs_share_the_cores(tmp_path):
    r = run_cli(["-m", "hydra/launcher=parallel", *JOB, "train.seed=0,1", f"hydra.sweep.dir={tmp_path}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    done = summaries(tmp_path)
    assert len(done) == 2 and all(s["status"] == "done" for s in done.values())
    assert all(s["threads"] == max(1, os.cpu_count() // 2) for s in done.values())  # n_jobs=2


@pytest.mark.parametrize("n_jobs,expected", [(2, 2), (-1, None)])
def test_parallel_jobs_counts_joblibs_n_jobs(n_jobs, expected):
    cfg = OmegaConf.create({"launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                                         "n_jobs": n_jobs}})
    assert parallel_jobs(cfg) == (expected or os.cpu_count())
    assert parallel_jobs(OmegaConf.create({"launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher."
                                                                    "BasicLauncher"}})) == 1
