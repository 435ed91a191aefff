"""Safe checkpoints, preemption and divergence: a bad checkpoint falls back to the previous good
one, a stop signal saves and exits 75, a NaN loss stops at once and keeps the last good checkpoint."""
import errno
import json
import logging
import math
import os
import re
import resource
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from lmlab import checkpoint
from lmlab.__main__ import objective
from lmlab.checkpoint import (CheckpointError, CheckpointWriter, check_same_run, discard_checkpoints,
                              latest_checkpoint, link_checkpoint, load_checkpoint, prune_checkpoints,
                              save_checkpoint, step_checkpoint)
from lmlab.model import GPT, GPTConfig
from tests.conftest import CORPUS, REPO, TEST_ENV, corpus_lines, run_cli

CFG = GPTConfig(vocab_size=64, d_model=32, n_heads=2, n_layers=2, d_ff=64, max_seq_len=16)


def save_steps(ckpt_dir, steps, keep):
    """What the trainer does at each checkpoint: a step file, last.pt linked to it, old ones pruned."""
    model = GPT(CFG)
    for step in steps:
        path = step_checkpoint(ckpt_dir, step)
        save_checkpoint(path, model, {"kind": "none"}, {"step": step}, {})
        link_checkpoint(path, ckpt_dir / "last.pt")
        prune_checkpoints(ckpt_dir, keep)
    return model


def test_a_kill_between_saving_and_relinking_last_still_resumes_the_newest(tmp_path):
    model = save_steps(tmp_path, [0], keep=3)
    save_checkpoint(step_checkpoint(tmp_path, 2), model, {"kind": "none"}, {"step": 2}, {})  # killed before the link
    assert load_checkpoint(tmp_path / "last.pt")["train_state"]["step"] == 0
    assert latest_checkpoint(tmp_path)["train_state"]["step"] == 2


@pytest.mark.parametrize("write", [
    lambda path: path.write_text("Ge1:1 In the beginning God created the heaven and the earth.\n"),
    lambda path: torch.save(torch.nn.Linear(2, 2), path),  # another program's pickled module
    lambda path: torch.save({"weight": torch.zeros(2)}, path),  # a bare state dict
], ids=["text file", "pickled module", "state dict"])
def test_a_file_that_is_not_a_checkpoint_is_named_without_advice_to_unpickle_it(tmp_path, write):
    path = tmp_path / "model.pt"
    write(path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert message.startswith(f"{path} is not an lmlab checkpoint") and "\n" not in message
    assert "weights_only" not in message and "trust" not in message


def test_last_k_kept_and_a_corrupted_last_falls_back_in_one_line(tmp_path, caplog):
    model = save_steps(tmp_path, [0, 2, 4, 6], keep=3)
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-0000002.pt", "step-0000004.pt",
                                                                   "step-0000006.pt"]
    assert latest_checkpoint(tmp_path)["train_state"]["step"] == 6

    # One flipped byte inside a tensor of the newest checkpoint (last.pt is the same file):
    # torch.load alone would not notice; the checksum does, and the one before is used.
    last = tmp_path / "last.pt"
    data = bytearray(last.read_bytes())
    offset = data.find(model.wte.weight.detach().numpy().tobytes()[:64])
    assert offset > 0
    data[offset + 10] ^= 0xFF
    with open(last, "r+b") as f:  # in place, through the hard link
        f.write(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(tmp_path / "step-0000006.pt")
    with caplog.at_level(logging.WARNING, logger="lmlab.checkpoint"):
        assert latest_checkpoint(tmp_path)["train_state"]["step"] == 4
    assert [r.getMessage().count("\n") for r in caplog.records] == [0]
    assert "step-0000006.pt is corrupted" in caplog.records[0].getMessage()

    # A torn file (cut short by a crash): reported in one line, and the one before is used.
    with open(tmp_path / "step-0000004.pt", "r+b") as f:
        f.truncate(500)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lmlab.checkpoint"):
        assert latest_checkpoint(tmp_path)["train_state"]["step"] == 2
    assert len(caplog.records) == 2 and "is not an lmlab checkpoint" in caplog.records[1].getMessage()

    for path in tmp_path.glob("step-*.pt"):
        path.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no readable checkpoint.*train.resume=null"):
        latest_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path / "fresh") is None


def test_discarding_diverged_checkpoints_leaves_last_on_the_newest_good_one(tmp_path):
    save_steps(tmp_path, [0, 2, 4], keep=2)
    link_checkpoint(step_checkpoint(tmp_path, 4), tmp_path / "best.pt")
    assert discard_checkpoints(tmp_path, 4) == 2  # best.pt held step 4: it goes too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "step-0000002.pt"]
    assert (tmp_path / "last.pt").samefile(step_checkpoint(tmp_path, 2))

    keep1 = tmp_path / "keep1"  # step 0's file pruned: best.pt is all that is left of it
    save_steps(keep1, [0], keep=1)
    link_checkpoint(step_checkpoint(keep1, 0), keep1 / "best.pt")
    save_steps(keep1, [3], keep=1)
    assert discard_checkpoints(keep1, 3) == 0
    assert sorted(p.name for p in keep1.iterdir()) == ["best.pt", "last.pt"]
    assert latest_checkpoint(keep1)["train_state"]["step"] == 0
    assert discard_checkpoints(keep1, 0) is None and list(keep1.iterdir()) == []


def test_a_failed_background_write_is_raised_in_one_line_at_the_next_wait(tmp_path, monkeypatch):
    def full_disk(path, payload):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "write_checkpoint", full_disk)
    writer = CheckpointWriter(tmp_path, keep=2)
    writer.save(7, lambda: {}, best=True)
    with pytest.raises(CheckpointError) as e:
        writer.wait()
    assert str(e.value) == f"cannot save the checkpoint of step 7 in {tmp_path}: No space left on device"
    writer.wait()  # raised once


def test_resuming_a_different_model_data_or_tokenizer_names_what_differs(tmp_path):
    model = GPT(CFG)
    data = {"name": "wikitext2", "kind": "wikitext", "local_dir": "/here", "cache_dir": "/cache", "packing": True}
    save_checkpoint(tmp_path / "last.pt", model, {"kind": "bpe", "json": "A"}, {"step": 3}, {"data": data})
    ckpt = load_checkpoint(tmp_path / "last.pt")
    # The same corpus elsewhere (another machine's paths) is the same run.
    check_same_run(ckpt, CFG, {**data, "local_dir": "/there", "cache_dir": "/tmp"}, {"kind": "bpe", "json": "A"})
    with pytest.raises(CheckpointError) as e:
        check_same_run(ckpt, replace(CFG, d_model=64, d_ff=128), {**data, "packing": False},
                       {"kind": "bpe", "json": "B"})
    assert str(e.value) == (
        "cannot resume step 3: the model differs in d_model=32 in the checkpoint, 64 now; d_ff=64 in the "
        "checkpoint, 128 now; the data differs in packing=True in the checkpoint, False now; the bpe tokenizer's "
        "vocabulary differs. Resume with the same model.*, data.* and tokenizer.*, or start over with "
        "train.resume=null or a new run dir")
    with pytest.raises(CheckpointError, match=r"step 3: tokenizer=bpe in the checkpoint, gpt2 now\. Resume"):
        check_same_run(ckpt, CFG, data, {"kind": "gpt2"})


def test_objective_is_inf_unless_done():
    assert objective({"status": "done", "best_val_loss": 4.5}) == 4.5
    assert objective({"status": "done", "best_val_loss": None}) == math.inf  # JSON's null for a NaN
    assert objective({"status": "failed", "reason": "TrainingDiverged: ..."}) == math.inf


TINY_RUN = [*CORPUS, "model.d_model=32", "model.n_heads=2", "model.n_layers=2",
            "model.max_seq_len=32", "tokenizer.vocab_size=512", "train.batch_size=8", "eval.max_batches=2",
            "eval.sample_tokens=0", "logger=none"]


def messages(stderr: str) -> list[str]:
    """stderr without progress bars ("tokenizing train:  40%|####  | ...")."""
    return [line for line in stderr.replace("\r", "\n").splitlines()
            if line.strip() and not re.match(r"[\w ]+: +\d+%\|", line)]


def last_good(run_dir, step) -> str:
    return f"the last good checkpoint is {run_dir / 'checkpoints' / 'last.pt'} (step {step})"


def test_divergence_keeps_only_checkpoints_of_good_weights_and_a_rerun_says_how_to_start_over(tmp_path):
    # A learning rate of 1e6 throws the weights to ~1e6 at the first update: still finite, so
    # step 1's checkpoint is written, but the loss they give at step 2 is NaN.
    diverge = [*TINY_RUN, "schedule=none", "schedule.peak_lr=1e6"]
    run_dir = tmp_path / "run"
    args = [*diverge, "train.max_steps=20", "train.checkpoint_every=1", f"hydra.run.dir={run_dir}"]
    r = run_cli(args, cwd=REPO)
    assert r.returncode == 2
    error = (f"lmlab: error: training diverged: the weights of step 1 give a training loss of nan; "
             f"{last_good(run_dir, 0)}, where a rerun resumes (to diverge again unless a setting such as "
             f"schedule.peak_lr changes); train.resume=null starts over")
    assert messages(r.stderr) == [error]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "the weights of step 1 give a training loss of nan" in summary["reason"]
    # The checkpoint the message names holds the weights of that step, and nothing later is left.
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.pt", "last.pt", "step-0000000.pt"]
    assert load_checkpoint(ckpts / "last.pt")["train_state"]["step"] == 0

    # The same command resumes from that good checkpoint, and says the same; resume=null starts over.
    r = run_cli(args, cwd=REPO)
    assert r.returncode == 2 and messages(r.stderr) == [error]
    assert "(step 0)" in next(line for line in r.stdout.splitlines() if "resuming from" in line)
    r = run_cli([*args, "train.resume=null", "schedule.peak_lr=1e-3", "train.max_steps=2"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 2

    # Weights that are finite but score a NaN validation loss are never saved either.
    r = run_cli([*diverge, "train.max_steps=20", "train.eval_every=1", f"hydra.run.dir={tmp_path / 'eval'}"], cwd=REPO)
    assert r.returncode == 2
    assert messages(r.stderr)[0].startswith("lmlab: error: training diverged: the weights of step 1 give a "
                                            f"validation loss of nan; {last_good(tmp_path / 'eval', 0)}")
    assert load_checkpoint(tmp_path / "eval" / "checkpoints" / "last.pt")["train_state"]["step"] == 0
    assert not (tmp_path / "eval" / "checkpoints" / "step-0000001.pt").exists()

    # In a sweep the diverged job reports inf and the sweep goes on to the next job.
    sweep = tmp_path / "sweep"
    r = run_cli(["-m", *diverge, "train.max_steps=3", "schedule.peak_lr=1e6,1e-3", f"hydra.sweep.dir={sweep}"],
                cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    summaries = sorted((json.loads((d / "summary.json").read_text()) for d in sweep.iterdir() if d.is_dir()),
                       key=lambda s: s["status"])
    assert [s["status"] for s in summaries] == ["done", "failed"]
    assert "training loss of nan" in summaries[1]["reason"] and math.isfinite(summaries[0]["best_val_loss"])
    assert any("job failed (objective inf): TrainingDiverged" in line for line in r.stdout.splitlines())


def start_run(args: list[str], cwd=REPO, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lmlab", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **TEST_ENV}, **kw)


def wait_for(path, proc: subprocess.Popen) -> None:
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_stop_signal_checkpoints_at_a_step_boundary_and_exits_75(tmp_path, sig):
    # SIGINT's run is in the default, timestamped run dir, which the same command would not find
    # again: the command printed to resume names it.
    run_dir = None if sig == signal.SIGINT else tmp_path / "run"
    logger = ["logger=wandb"] if sig == signal.SIGUSR1 else []  # its run id must survive the resume
    args = [*TINY_RUN, *logger, "train.max_steps=30", "train.eval_every=1000",
            *([f"hydra.run.dir={run_dir}"] if run_dir else [])]
    proc = start_run(args, cwd=tmp_path)
    while run_dir is None:
        run_dir = next((d for d in tmp_path.glob("outputs/runs/*") if (d / "checkpoints").is_dir()), None)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    wait_for(run_dir / "checkpoints" / "step-0000000.pt", proc)  # step 0 scored: the loop is next
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-3000:]
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    step = ckpt["train_state"]["step"]
    assert 1 <= step < 30 and (run_dir / "checkpoints" / f"step-{step:07d}.pt").samefile(run_dir / "checkpoints" / "last.pt")
    command = shlex.join(["python", "-m", "lmlab", *args[:len(TINY_RUN) + len(logger) + 2], f"hydra.run.dir={run_dir}"])
    assert messages(stderr)[-1] == (f"lmlab: stopped by {sig.name} at step {step}; checkpoint saved to "
                                    f"{run_dir / 'checkpoints' / 'last.pt'}. Resume with: {command}")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "preempted"
    if sig == signal.SIGTERM:
        return

    if sig == signal.SIGUSR1:
        run_id = (run_dir / "wandb_run_id").read_text()
        assert ckpt["train_state"]["wandb_run_id"] == run_id
    r = run_cli(shlex.split(command)[3:], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"(step {step})" in next(line for line in r.stdout.splitlines() if "resuming from" in line)
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 30
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [0, 30]
    if sig == signal.SIGUSR1:
        assert (run_dir / "wandb_run_id").read_text() == run_id
        assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["train_state"]["wandb_run_id"] == run_id


def test_a_checkpoint_that_cannot_be_written_fails_the_run_in_one_line(tmp_path):
    """A disk that fills up during the run: the kernel refuses the checkpoint's bytes (a file size
    limit, set once step 0 is saved: root writes anywhere, so permissions cannot make it fail)."""
    run_dir = tmp_path / "run"
    proc = start_run([*TINY_RUN, "train.max_steps=80", "train.eval_every=1000", "train.checkpoint_every=40",
                      f"hydra.run.dir={run_dir}"], preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN))
    wait_for(run_dir / "checkpoints" / "last.pt", proc)
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (50_000, 50_000))
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr[-3000:]
    assert messages(stderr) == [f"lmlab: error: cannot save the checkpoint of step 40 in {run_dir / 'checkpoints'}: "
                                "File too large"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "step 40" in summary["reason"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["train_state"]["step"] == 0


def test_resuming_into_another_corpus_or_tokenizer_is_refused_in_one_line(tmp_path):
    run = [*TINY_RUN, "train.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}"]
    assert run_cli(run, cwd=REPO).returncode == 0
    other = tmp_path / "genesis.txt"  # another corpus: the first 1,533 verses (Genesis), one file
    other.write_text("".join(corpus_lines(1533)), encoding="utf-8")
    r = run_cli(["data=text", f"data.local_dir={other}", *run[len(CORPUS):]], cwd=REPO)
    assert r.returncode == 2
    assert messages(r.stderr) == [
        "lmlab: error: cannot resume step 2: the data differs in name=kjv in the checkpoint, text now; "
        "holdout=300.0 in the checkpoint, 0.05 now; the bpe tokenizer's vocabulary differs. Resume with the same "
        "model.*, data.* and tokenizer.*, or start over with train.resume=null or a new run dir"]


def test_a_finished_runs_checkpoint_resumed_into_a_new_run_dir_says_there_is_nothing_to_train(tmp_path):
    run = tmp_path / "run"
    assert run_cli([*TINY_RUN, "train.max_steps=2", f"hydra.run.dir={run}"], cwd=REPO).returncode == 0
    last = run / "checkpoints" / "last.pt"
    r = run_cli([*TINY_RUN, "train.max_steps=2", f"train.resume={last}", f"hydra.run.dir={tmp_path / 'new'}"], cwd=REPO)
    assert r.returncode == 2
    assert messages(r.stderr) == [
        f"lmlab: error: train.resume={last} is a checkpoint of a finished run (step 2, 512 tokens): nothing is left to "
        f"train in {tmp_path / 'new'}. Score it with python -m lmlab.evaluate checkpoint={last}, or train on with a "
        "larger train.max_steps or train.max_tokens"]
    # In its own run dir it scores its best checkpoint again, as any finished run resumed there.
    r = run_cli([*TINY_RUN, "train.max_steps=2", f"train.resume={last}", f"hydra.run.dir={run}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "done"
