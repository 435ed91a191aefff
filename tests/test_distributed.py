"""Data-parallel training through torchrun (gloo, 2 processes on the CPU): the same run as one
process with the same global batch, killed and relaunched it resumes exactly, and its checkpoint
resumes in one process. Static launches (--master-addr/--master-port, one node or two) get a run
dir each; with dropout each rank draws its own masks and resumes its own stream; MFU is per
device; a stop signal to one rank stops all; a rank that hangs stops the launch."""
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmlab.checkpoint import load_checkpoint
from lmlab.errors import ConfigError
from lmlab.errors import Preempted
from lmlab.stop import StopSignals
from lmlab.validation import validate
from tests.conftest import CORPUS, REPO, TEST_ENV, TINY, compose_config, kill_when, newest_step, run_cli

TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lmlab")
# Gradient accumulation on, so no_sync and the loss's global denominator are exercised; dropout
# off, since one process draws one mask for the whole batch where two draw one each.
RUN = [*CORPUS, *TINY, "train.grad_accum=2", "train.max_steps=12", "train.eval_every=6",
       "train.checkpoint_every=3", "train.keep_checkpoints=5", "eval.max_batches=3", "eval.sample_tokens=0",
       "logger=none", "schedule.warmup_steps=2"]
# Dropout on; evaluations and checkpoints at 0, 12 and 24 only, so a stop's checkpoint stands out.
DROPOUT = [*RUN, "model.dropout=0.1", "train.max_steps=24", "train.eval_every=12", "train.checkpoint_every=12"]
THROUGHPUT = ("tokens_per_s", "tokens_per_s_per_device", "mfu")  # wall-clock


def torchrun(args: list[str], cwd=REPO):
    return run_cli(list(TORCHRUN[3:]) + args, cwd=cwd, module="torch.distributed.run")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def static(port: int, nnodes: int = 1, node_rank: int = 0) -> list[str]:
    """torchrun's arguments for a static launch, the multi-node form, whose run id is `none` in
    every launch: 2 processes on `nnodes` nodes."""
    return [f"--nnodes={nnodes}", f"--node_rank={node_rank}", f"--nproc_per_node={2 // nnodes}",
            "--master_addr=127.0.0.1", f"--master_port={port}", "-m", "lmlab"]


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """A command in its own process group (so a test can end all of it), output to `log`."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **TEST_ENV}, start_new_session=True)


def end(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of `proc`'s process group, and of its children's: torchrun starts
    its workers in sessions of their own, where one stopped by SIGSTOP would outlive the suite."""
    for pid in [proc.pid, *children(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    proc.wait()


def children(pid: int) -> list[int]:
    """The processes `pid` started that are still there (none once it has ended)."""
    try:
        return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
                for child in (task / "children").read_text().split()]
    except FileNotFoundError:
        return []


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (exited, or a zombie left for init to reap), within 30 s."""
    for _ in range(3000):
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        time.sleep(0.01)
    return False


def worker(agent: subprocess.Popen, rank: int) -> int:
    """The pid of the process of `rank` that torchrun's agent `agent` started (RANK in its environment)."""
    for child in children(agent.pid):
        if f"RANK={rank}".encode() in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
            return child
    raise AssertionError(f"no rank {rank} under {agent.pid}")


def wait_for(ready, proc: subprocess.Popen, log: Path) -> None:
    while not ready():
        assert proc.poll() is None, f"ended too soon:\n{log.read_text()[-3000:]}"
        time.sleep(0.005)


def run_dirs(root: Path) -> list[Path]:
    return sorted((root / "outputs" / "runs").iterdir())


def metrics(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k not in THROUGHPUT}
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
    # No hydra.run.dir: both processes must still pick the same one, stamped by the launch's first process.
    two = torchrun(RUN, cwd=root)
    assert two.returncode == 0, two.stderr[-3000:]
    (run_dir,) = (root / "outputs" / "runs").iterdir()
    assert run_dir.name.startswith("torchrun-")
    run_dir.rename(root / "two")
    return root


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


@pytest.fixture(scope="module")
def static_launches(tmp_path_factory):
    """Two static launches on one port from one folder, without hydra.run.dir: the first with
    dropout and a peak for MFU, the second another run (other steps and LR)."""
    root = tmp_path_factory.mktemp("static")
    port = free_port()
    first = run_cli([*static(port), *DROPOUT, "train.peak_tflops=0.001"], cwd=root, module="torch.distributed.run")
    assert first.returncode == 0, first.stderr[-3000:]
    (first_dir,) = run_dirs(root)
    second = run_cli([*static(port), *DROPOUT, "train.max_steps=3", "schedule.peak_lr=1e-3"], cwd=root,
                     module="torch.distributed.run")
    assert second.returncode == 0, second.stderr[-3000:]
    return root, first_dir, second


def test_static_launches_on_one_port_get_a_run_dir_each_and_neither_resumes_the_other(static_launches):
    root, first, second = static_launches
    dirs = run_dirs(root)
    assert len(dirs) == 2 and all(d.name.startswith("torchrun-") for d in dirs), dirs
    (other,) = [d for d in dirs if d != first]
    assert "resuming" not in second.stdout
    assert [m["step"] for m in metrics(other)] == [0, 3]
    assert json.loads((other / "summary.json").read_text())["steps"] == 3
    assert json.loads((first / "summary.json").read_text())["steps"] == 24  # the first run's results stand


def test_two_processes_report_mfu_per_device_and_tokens_per_s_of_the_launch_and_of_each_device(static_launches):
    _, run_dir, _ = static_launches
    summary = json.loads((run_dir / "summary.json").read_text())
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    for record in (summary, last):
        tokens_per_s = record["tokens_per_s"]  # the global batch's tokens
        assert tokens_per_s > 0 and record["tokens_per_s_per_device"] == pytest.approx(tokens_per_s / 2)
        # train.peak_tflops=0.001: 1e9 FLOP/s per device, 2 devices.
        assert record["mfu"] == pytest.approx(summary["flops_per_token"] * tokens_per_s / (2 * 1e9))


def test_each_rank_draws_its_own_dropout_masks_and_saves_its_own_stream(static_launches):
    _, run_dir, _ = static_launches
    states = load_checkpoint(run_dir / "checkpoints" / "step-0000012.pt")["train_state"]["rng"]
    assert len(states) == 2
    masks = []
    for state in states:  # the generator each rank goes on with after step 12
        torch.set_rng_state(state["torch"])
        masks.append(torch.nn.functional.dropout(torch.ones(4096), 0.1))
    assert not torch.equal(masks[0], masks[1])


def test_a_stop_signal_to_one_rank_stops_every_rank_at_one_step_and_the_run_resumes_exactly(static_launches, tmp_path):
    """SIGUSR1 (sbatch --signal) to rank 1 alone: both ranks stop at the same step, rank 0 saves
    that step once, each rank exits 75; relaunched, the run (dropout on) ends as the uninterrupted one."""
    _, ref, _ = static_launches
    run, log = tmp_path / "stopped", tmp_path / "log"
    agent = start([*TORCHRUN[1:], *DROPOUT, f"hydra.run.dir={run}"], REPO, log)
    try:
        wait_for(lambda: (run / "checkpoints" / "step-0000000.pt").is_file(), agent, log)
        os.kill(worker(agent, 1), signal.SIGUSR1)
        agent.wait(timeout=120)
    finally:
        end(agent)
    out = log.read_text()
    stops = re.findall(r"lmlab: stopped by (.+?) at step (\d+);", out)
    assert sorted(by for by, _ in stops) == ["SIGUSR1", "a signal to another rank"], out[-3000:]
    (step,) = {int(at) for _, at in stops}
    assert 0 < step < 24
    # torchrun ends the other ranks (SIGTERM, -15) once one has exited: 75 comes first.
    assert re.findall(r"exitcode\s+: (-?\d+)", out.split("Root Cause")[1]) == ["75"], out[-3000:]
    assert set(re.findall(r"exitcode\s+: (-?\d+)", out)) <= {"75", "-15"}
    ckpts = run / "checkpoints"
    assert load_checkpoint(ckpts / "last.pt")["train_state"]["step"] == step
    assert {p.name for p in ckpts.glob("step-*.pt")} == {f"step-{s:07d}.pt" for s in {0, step} | ({12} & set(range(step)))}
    assert json.loads((run / "summary.json").read_text())["status"] == "preempted"

    again = torchrun([*DROPOUT, f"hydra.run.dir={run}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"(step {step})" in again.stdout  # torchrun passes its processes' output on to stdout
    assert max_difference(weights(run), weights(ref)) == 0
    assert metrics(run) == metrics(ref)


def test_a_two_process_checkpoint_resumes_in_one_process_with_its_dropout_streams_re_derived(static_launches, tmp_path):
    _, ref, _ = static_launches
    r = run_cli([*DROPOUT, f"train.resume={ref / 'checkpoints' / 'step-0000012.pt'}", "train.max_steps=14",
                 f"hydra.run.dir={tmp_path}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ("the checkpoint of step 12 holds the random state of 2 processes, this launch runs 1: each process's "
            "dropout stream is re-derived from train.seed, its rank and the step") in r.stdout  # the log


def test_a_hung_rank_stops_a_two_node_launch_within_dist_timeout_s_and_the_relaunch_resumes(tmp_path):
    """Two static nodes on this machine, one process each and no hydra.run.dir: they agree on one
    run dir. Node 1's process is frozen (SIGSTOP: alive, its sockets open, as a hung process or a
    lost machine) after the first checkpoint; node 0's stops in its next collective after
    train.dist_timeout_s, with one line, where gloo alone would wait 30 minutes."""
    port, args = free_port(), [*RUN, "train.max_steps=1000", "train.eval_every=1000", "train.dist_timeout_s=3"]
    nodes = [start(["-m", "torch.distributed.run", *static(port, 2, rank), *args], tmp_path, tmp_path / f"node{rank}.log")
             for rank in (0, 1)]
    try:
        wait_for(lambda: max((newest_step(d / "checkpoints") for d in (tmp_path / "outputs" / "runs").glob("*")),
                             default=-1) >= 3, nodes[0], tmp_path / "node0.log")
        os.kill(stopped := worker(nodes[1], 1), signal.SIGSTOP)
        assert nodes[0].wait(timeout=120) != 0  # the guard: without the timeout, gloo waits 30 minutes
    finally:
        for node in nodes:
            end(node)
    assert gone(stopped)  # torchrun's workers have sessions of their own: ending node 1 ends it too
    out = (tmp_path / "node0.log").read_text()
    (run_dir,) = run_dirs(tmp_path)
    assert re.search(r"lmlab: error: another process of this launch died, or did not answer within train.dist_timeout_s"
                     r"=3 s \(Timed out waiting 3000ms for \w+ operation to complete\); every process stops. Launch "
                     rf"again with hydra.run.dir={run_dir} to resume from its last checkpoint\n", out), out[-3000:]
    assert "[rank0]: Traceback" not in out
    saved = newest_step(run_dir / "checkpoints")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"

    again = torchrun([*args, f"train.max_steps={saved + 2}", f"hydra.run.dir={run_dir}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"(step {saved})" in again.stdout
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == saved + 2


def test_dist_timeout_s_must_be_positive():
    with pytest.raises(ConfigError, match="train.dist_timeout_s: must be positive, got 0.0"):
        validate(compose_config(["train.dist_timeout_s=0"]))
