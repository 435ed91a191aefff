"""Safe checkpoints, preemption and divergence: a bad checkpoint falls back to the previous good
one, a stop signal saves and exits 75, a NaN loss stops at once and keeps the last good checkpoint."""
import json
import logging
import math
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from lmlab.__main__ import objective
from lmlab.checkpoint import (CheckpointError, check_same_model, latest_checkpoint, link_checkpoint,
                              load_checkpoint, prune_checkpoints, save_checkpoint, step_checkpoint)
from lmlab.model import GPT, GPTConfig
from tests.conftest import MINI, REPO, needs_mini, run_cli

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
    assert len(caplog.records) == 2 and "not a readable checkpoint" in caplog.records[1].getMessage()

    for path in tmp_path.glob("step-*.pt"):
        path.write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="no readable checkpoint.*train.resume=null"):
        latest_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path / "fresh") is None


def test_resuming_a_different_model_names_the_differing_keys(tmp_path):
    save_steps(tmp_path, [3], keep=1)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    check_same_model(ckpt, CFG)
    with pytest.raises(CheckpointError) as e:
        check_same_model(ckpt, replace(CFG, d_model=64, d_ff=128))
    assert str(e.value).count("\n") == 0
    assert "d_model=32 in the checkpoint, 64 now" in str(e.value) and "d_ff=64 in the checkpoint, 128 now" in str(e.value)
    assert "n_layers" not in str(e.value)


def test_objective_is_inf_unless_done():
    assert objective({"status": "done", "best_val_loss": 4.5}) == 4.5
    assert objective({"status": "done", "best_val_loss": None}) == math.inf  # JSON's null for a NaN
    assert objective({"status": "failed", "reason": "TrainingDiverged: ..."}) == math.inf


TINY_RUN = [f"data.local_dir={MINI}", "model.d_model=32", "model.n_heads=2", "model.n_layers=2",
            "model.max_seq_len=32", "tokenizer.vocab_size=512", "train.batch_size=8", "eval.max_batches=2",
            "eval.sample_tokens=0", "logger=none"]


def messages(stderr: str) -> list[str]:
    """stderr without progress bars ("tokenizing train:  40%|####  | ...")."""
    return [line for line in stderr.replace("\r", "\n").splitlines()
            if line.strip() and not re.match(r"[\w ]+: +\d+%\|", line)]


@needs_mini
def test_nan_loss_stops_at_once_keeps_the_last_good_checkpoint_and_fails_the_job(tmp_path):
    # A learning rate of 1e6 makes the weights overflow at the first update: step 1's loss is NaN.
    diverge = [*TINY_RUN, "schedule=none", "schedule.peak_lr=1e6"]
    r = run_cli([*diverge, "train.max_steps=20", "train.checkpoint_every=1", f"hydra.run.dir={tmp_path / 'run'}"],
                cwd=REPO)
    assert r.returncode == 2
    assert messages(r.stderr) == [f"lmlab: error: training diverged: loss is nan at step 1; the last good "
                                  f"checkpoint is {tmp_path / 'run' / 'checkpoints' / 'last.pt'} (step 1)"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "loss is nan at step 1" in summary["reason"]
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["train_state"]["step"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())

    # In a sweep the diverged job reports inf and the sweep goes on to the next job.
    sweep = tmp_path / "sweep"
    r = run_cli(["-m", *diverge, "train.max_steps=3", "schedule.peak_lr=1e6,1e-3", f"hydra.sweep.dir={sweep}"],
                cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    summaries = sorted((json.loads((d / "summary.json").read_text()) for d in sweep.iterdir() if d.is_dir()),
                       key=lambda s: s["status"])
    assert [s["status"] for s in summaries] == ["done", "failed"]
    assert "loss is nan at step 1" in summaries[1]["reason"] and math.isfinite(summaries[0]["best_val_loss"])
    assert any("job failed (objective inf): TrainingDiverged" in line for line in r.stdout.splitlines())


@needs_mini
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_stop_signal_checkpoints_at_a_step_boundary_and_exits_75(tmp_path, sig):
    run_dir = tmp_path / "run"
    logger = ["logger=wandb"] if sig == signal.SIGUSR1 else []  # its run id must survive the resume
    args = [*TINY_RUN, *logger, "train.max_steps=30", "train.eval_every=1000", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, "-m", "lmlab", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while not (run_dir / "checkpoints" / "step-0000000.pt").exists():  # step 0 scored: the loop is next
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-3000:]
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    step = ckpt["train_state"]["step"]
    assert 1 <= step < 30 and (run_dir / "checkpoints" / f"step-{step:07d}.pt").samefile(run_dir / "checkpoints" / "last.pt")
    assert messages(stderr)[-1] == (f"lmlab: stopped by {sig.name} at step {step}; checkpoint saved to "
                                    f"{run_dir / 'checkpoints' / 'last.pt'}. Run the same command again to resume")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "preempted"
    if sig != signal.SIGUSR1:
        return

    run_id = (run_dir / "wandb_run_id").read_text()
    assert ckpt["train_state"]["wandb_run_id"] == run_id
    r = run_cli(args, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 30
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [0, 30]
    assert (run_dir / "wandb_run_id").read_text() == run_id
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["train_state"]["wandb_run_id"] == run_id
