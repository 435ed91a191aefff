"""Data-parallel training through torchrun (gloo, 2 processes on the CPU): the same run as one
process with the same global batch, killed and relaunched it resumes exactly, and its checkpoint
resumes in one process."""
import json
import os
import signal
import sys

import pytest
import torch

from lmlab.checkpoint import load_checkpoint
from lmlab.train import Preempted, StopSignals
from tests.conftest import MINI, REPO, TINY, kill_when, needs_mini, newest_step, run_cli

TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lmlab")
# Gradient accumulation on, so no_sync and the loss's global denominator are exercised; dropout
# off, since one process draws one mask for the whole batch where two draw one each.
RUN = [f"data.local_dir={MINI}", *TINY, "train.grad_accum=2", "train.max_steps=12", "train.eval_every=6",
       "train.checkpoint_every=3", "train.keep_checkpoints=5", "eval.max_batches=3", "eval.sample_tokens=0",
       "logger=none", "schedule.warmup_steps=2"]


def torchrun(args: list[str], cwd=REPO):
    return run_cli(list(TORCHRUN[3:]) + args, cwd=cwd, module="torch.distributed.run")


def metrics(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir, name="last.pt"):
    return load_checkpoint(run_dir / "checkpoints" / name)["model"]


def max_difference(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    one = run_cli([*RUN, f"hydra.run.dir={root / 'one'}"], cwd=REPO)
    assert one.returncode == 0, one.stderr[-3000:]
    # No hydra.run.dir: both processes must still pick the same one, named after torchrun's run id.
    two = torchrun(RUN, cwd=root)
    assert two.returncode == 0, two.stderr[-3000:]
    (run_dir,) = (root / "outputs" / "runs").iterdir()
    assert run_dir.name.startswith("torchrun-")
    run_dir.rename(root / "two")
    return root


@needs_mini
def test_two_processes_train_the_same_model_as_one(runs):
    one, two = runs / "one", runs / "two"
    # Only the main process writes: one record per evaluation, as in one process.
    assert [m["step"] for m in metrics(two)] == [0, 6, 12]
    for a, b in zip(metrics(one), metrics(two)):
        assert a["tokens"] == b["tokens"]  # the global batch, counted whole
        for key in ("train_loss", "val_loss"):
            assert (a[key] is None and b[key] is None) or a[key] == pytest.approx(b[key], rel=1e-6), key
    # Gradients all-reduced in another order than one process sums them: equal to rounding.
    assert max_difference(weights(one), weights(two)) < 1e-5
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["tokens_seen"] == 12 * 2 * 8 * 32
    assert summary["test_loss"] == pytest.approx(json.loads((one / "summary.json").read_text())["test_loss"], rel=1e-6)


@needs_mini
def test_a_killed_two_process_run_resumes_exactly_and_its_checkpoint_resumes_in_one_process(runs, tmp_path):
    run = tmp_path / "killed"
    kill_when([*RUN, f"hydra.run.dir={run}"], lambda: newest_step(run / "checkpoints") >= 6, tmp_path / "log",
              command=TORCHRUN)
    assert 6 <= newest_step(run / "checkpoints") < 12
    again = torchrun([*RUN, f"hydra.run.dir={run}"])
    assert again.returncode == 0, again.stderr[-3000:]
    ref = weights(runs / "two")
    assert all(torch.equal(ref[k], v) for k, v in weights(run).items())
    assert metrics(run) == metrics(runs / "two")

    # The sampler's position is global: a 2-process checkpoint goes on in one process.
    single = tmp_path / "single"
    r = run_cli([*RUN, f"train.resume={runs / 'two' / 'checkpoints' / 'step-0000006.pt'}",
                 f"hydra.run.dir={single}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert max_difference(weights(single), weights(runs / "one")) < 1e-5


@needs_mini
def test_a_global_batch_that_does_not_split_is_refused_on_every_rank(tmp_path):
    r = torchrun([*RUN, "train.batch_size=7", f"hydra.run.dir={tmp_path}"])
    assert r.returncode != 0
    assert ("lmlab: error: train.batch_size: a global batch of 7 rows does not split evenly over 2 processes; "
            "make it a multiple of 2") in r.stderr


def test_a_stop_is_handed_on_to_the_handler_it_replaced_once_saved():
    """Under submitit the handler StopSignals replaces is submitit's, which requeues the job."""
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.received == "SIGUSR2" and calls == []  # a finished run keeps the signal to itself
        with pytest.raises(Preempted):
            with StopSignals() as stop:
                os.kill(os.getpid(), signal.SIGUSR2)
                assert calls == []  # nothing is handed on before the checkpoint is written
                raise Preempted("saved")
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
