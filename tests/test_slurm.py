"""A real SLURM cluster (`sudo tests/slurm/start_cluster.sh` starts a one-node one): a sweep through
`hydra/launcher=slurm` (submitit), a job SLURM requeues mid-run that resumes exactly, and a plain
`sbatch` script that requeues itself on exit status 75. Skipped where `sbatch` has no cluster to
answer it. Jobs run this test's python (an absolute path) and inherit its environment (sbatch's
default `--export=ALL`), so they read the same data, token cache and offline settings."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmlab.checkpoint import load_checkpoint
from tests.conftest import CORPUS, REPO, TEST_ENV, TINY, newest_step


def _cluster_down() -> str | None:
    """Why no test can run here, or None where the cluster has a node to run jobs on."""
    if shutil.which("sbatch") is None:
        return "no SLURM here (sbatch not found): sudo tests/slurm/start_cluster.sh starts a one-node cluster"
    state = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True, timeout=30)
    if not re.search(r"^(idle|mix|alloc)", state.stdout, re.M):
        return f"SLURM has no node up ({(state.stdout + state.stderr).strip()}): run tests/slurm/start_cluster.sh"
    return None


_DOWN = _cluster_down()
pytestmark = pytest.mark.skipif(_DOWN is not None, reason=_DOWN or "")

# One CPU core and one task per job, on whatever partition is the cluster's default.
SLURM = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.tasks_per_node=1",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=15"]
# Long enough to be cut after its step-10 checkpoint; one thread, so a job and the reference run
# below do the same arithmetic.
JOB = [*CORPUS, *TINY, "train.max_steps=80", "train.eval_every=40", "train.checkpoint_every=10",
       "eval.max_batches=2", "eval.sample_tokens=0", "logger=none", "train.threads=1"]
ENV = {**os.environ, **TEST_ENV}


def wait_for(ready, what: str, proc: subprocess.Popen | None = None, timeout: float = 600) -> None:
    """Until `ready()`, failing if `proc` ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc is None or proc.poll() is None, f"ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.2)


def restarts(job_id: str) -> int:
    """How often SLURM requeued a job (slurmctld keeps an ended job's record MinJobAge, 300 s)."""
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"Restarts=(\d+)", shown).group(1))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# How each job of the sweep is preempted once it has a step-10 checkpoint, and what its log then
# says: job 0 by the scheduler (`scontrol requeue`: SIGTERM, then back to the queue), job 1 as at
# its time limit (the SIGUSR2 submitit asks SLURM for `signal_delay_s` before it: the run
# checkpoints and hands the signal on to submitit, which requeues the job and ends the process).
PREEMPT = {0: (["scontrol", "requeue"], "lmlab: stopped by SIGTERM at step"),
           1: (["scancel", "--signal=USR2"], "Caught signal SIGUSR2")}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir):
    """A 2-job sweep (train.seed=0,1) through submitit on SLURM, each job preempted as PREEMPT says;
    beside it, each job's config run to the end here, uninterrupted."""
    sweep_dir = tmp_path_factory.mktemp("slurm-sweep")
    references = {seed: tmp_path_factory.mktemp(f"uninterrupted-{seed}") for seed in PREEMPT}
    env = {**ENV, "LMLAB_CACHE_DIR": str(cache_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "lmlab", "-m", *SLURM, *JOB, "train.seed=0,1",
                             f"hydra.sweep.dir={sweep_dir}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    refs = [subprocess.Popen([sys.executable, "-m", "lmlab", *JOB, f"train.seed={seed}", f"hydra.run.dir={ref}"],
                             cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for seed, ref in references.items()]
    # Each job is cut as soon as its own step-10 checkpoint is there: cutting one job, then waiting
    # for the other, once let the other train all 80 steps before its signal came.
    uncut = dict(PREEMPT)

    def cut_each_at_step_10() -> bool:
        for n, (command, _) in list(uncut.items()):
            job_dir = next(sweep_dir.glob(f"train.seed={n},*"), None)
            if job_dir is not None and newest_step(job_dir / "checkpoints") >= 10:
                array_id = next(p.name for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit())
                subprocess.run([*command, f"{array_id}_{n}"], check=True)
                del uncut[n]
        return not uncut

    wait_for(cut_each_at_step_10, "every job's step-10 checkpoint", proc)
    array_id = next(p.name for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit())
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    for ref in refs:
        assert ref.wait(timeout=600) == 0, ref.stderr.read()[-3000:]
    return sweep_dir, array_id, references


def test_a_sweep_through_submitit_runs_every_job_on_slurm_and_the_report_reads_them(sweep, tmp_path):
    sweep_dir, array_id, _ = sweep
    summaries = {p.parent.name.split(",")[0]: json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")}
    assert set(summaries) == {"train.seed=0", "train.seed=1"}
    assert all(s["status"] == "done" and s["processes"] == 1 for s in summaries.values())
    # Each job ran as a task of one SLURM job array, with submitit's records in its own folder.
    assert {p.name for p in (sweep_dir / ".submitit").iterdir()} >= {f"{array_id}_0", f"{array_id}_1"}
    r = subprocess.run([sys.executable, "-m", "lmlab.report", str(sweep_dir)], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 jobs: 2 done, 0 failed or unfinished." in (sweep_dir / "report.md").read_text()


@pytest.mark.parametrize("n", sorted(PREEMPT))
def test_a_job_preempted_on_slurm_is_requeued_and_resumes_to_the_same_weights(sweep, n):
    sweep_dir, array_id, references = sweep
    job = f"{array_id}_{n}"
    assert restarts(job) == 1
    log = "".join((sweep_dir / ".submitit" / job / f"{job}_0_log.{out}").read_text() for out in ("err", "out"))
    assert PREEMPT[n][1] in log, log[-3000:]
    assert 10 <= int(re.search(r"resuming from \S+ \(step (\d+)\)", log).group(1)) < 80
    job_dir = next(sweep_dir.glob(f"train.seed={n},*"))
    cut, whole = (json.loads((d / "summary.json").read_text()) for d in (job_dir, references[n]))
    for key in ("steps", "tokens_seen", "best_val_loss", "val_loss", "test_loss", "test_ppl"):
        assert cut[key] == whole[key], key
    for name in ("best.pt", "last.pt"):
        assert same_weights(job_dir / "checkpoints" / name, references[n] / "checkpoints" / name), name


BATCH_SCRIPT = """#!/bin/bash
#SBATCH --requeue --signal=USR1@120 --time=30 --ntasks=1 --cpus-per-task=1 --mem=1G --open-mode=append
# srun makes python a job step, which --signal reaches (a python started by the batch shell alone is not).
srun {python} -m lmlab {overrides}
status=$?
if [ $status -eq 75 ]; then scontrol requeue "$SLURM_JOB_ID"; fi
exit $status
"""


def test_a_plain_sbatch_job_checkpoints_on_usr1_exits_75_and_requeue_finishes_it(sweep, tmp_path, cache_dir):
    run_dir, reference = tmp_path / "run", sweep[2][0]  # the sweep's job 0 run uninterrupted: the same config
    script = tmp_path / "job.sh"
    script.write_text(BATCH_SCRIPT.format(python=sys.executable,
                                          overrides=" ".join([*JOB, "train.seed=0", f"hydra.run.dir={run_dir}"])))
    env = {**ENV, "LMLAB_CACHE_DIR": str(cache_dir)}
    out = tmp_path / "job.out"
    job_id = subprocess.run(["sbatch", "--parsable", f"--chdir={REPO}", f"--output={out}", str(script)], env=env,
                            capture_output=True, text=True, check=True).stdout.strip()
    wait_for(lambda: newest_step(run_dir / "checkpoints") >= 10, "the batch job's step-10 checkpoint")
    # What SLURM sends `--signal=USR1@120` before the time limit, to every step of the job.
    subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
    wait_for(lambda: (run_dir / "summary.json").is_file()
             and json.loads((run_dir / "summary.json").read_text())["status"] == "done", "the batch job's end")
    log = out.read_text()
    stop = re.search(r"stopped by SIGUSR1 at step (\d+)", log)
    assert stop and "Exited with exit code 75" in log, log[-3000:]
    assert re.search(r"resuming from \S+ \(step (\d+)\)", log).group(1) == stop.group(1)
    assert restarts(job_id) == 1
    cut, whole = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference))
    for key in ("steps", "tokens_seen", "best_val_loss", "val_loss", "test_loss", "test_ppl"):
        assert cut[key] == whole[key], key
    assert same_weights(run_dir / "checkpoints" / "last.pt", reference / "checkpoints" / "last.pt")
