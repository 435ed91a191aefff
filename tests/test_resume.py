"""Exact resume: a run killed with SIGKILL and restarted ends bit-identical to one never stopped;
a killed sweep relaunched into its sweep dir finishes every job, none of them trained twice."""
import json
from pathlib import Path

import torch

from lmlab.checkpoint import link_checkpoint, load_checkpoint, step_checkpoint
from tests.conftest import CORPUS, REPO, kill_when, newest_step, run_cli

# Dropout and gradient accumulation on, so the RNG and the data position must both come back exactly;
# evaluations (every 5) and checkpoints (every 2) fall on different steps.
RUN = [*CORPUS, "model.d_model=32", "model.n_heads=2", "model.n_layers=2",
       "model.max_seq_len=32", "model.dropout=0.1", "tokenizer.vocab_size=512", "train.batch_size=4",
       "train.grad_accum=2", "eval.batch_size=64", "eval.max_batches=2", "eval.sample_tokens=0",
       "logger=none", "schedule.warmup_steps=4", "train.max_steps=16", "train.eval_every=5",
       "train.checkpoint_every=2", "train.keep_checkpoints=3"]
# One thread in every process, so each sum is reduced in the same order run after run.


def metrics(run_dir: Path) -> list[dict]:
    # Throughput is wall-clock; everything else must match to the last bit.
    return [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "tokens_per_s_per_device")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_identical(ref: Path, run: Path) -> None:
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (ref, run))
    assert a["train_state"]["step"] == b["train_state"]["step"] == 16
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pid, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][key]), (pid, key)
    assert {k: v for k, v in a["train_state"].items() if k != "rng"} == \
           {k: v for k, v in b["train_state"].items() if k != "rng"}
    assert metrics(run) == metrics(ref)  # each step logged once, with the same losses


def test_killed_runs_resume_bit_identical(tmp_path):
    ref = tmp_path / "ref"
    r = run_cli([*RUN, f"hydra.run.dir={ref}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [m["step"] for m in metrics(ref)] == [0, 5, 10, 15, 16]
    # Checkpoints at 0, 2, 4, 5, 6, ..., 14, 15, 16: the newest 3 are kept, and best.pt besides.
    ckpts = ref / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*.pt")) == [f"step-{s:07d}.pt" for s in (14, 15, 16)]
    assert (ckpts / "last.pt").samefile(ckpts / "step-0000016.pt") and (ckpts / "best.pt").is_file()

    resumed_from = []
    for i, (after_step, delay) in enumerate([(2, 0.0), (7, 0.03), (11, 0.01)]):
        run = tmp_path / f"killed{i}"
        kill_when([*RUN, f"hydra.run.dir={run}"], lambda: newest_step(run / "checkpoints") >= after_step,
                  tmp_path / f"killed{i}.log", delay)
        assert not (run / "summary.json").exists()  # really cut short
        step = newest_step(run / "checkpoints")  # what a resume picks, even if the kill beat last.pt's relink
        assert after_step <= step < 16
        if i == 2:
            # A torn newest checkpoint (what last.pt links to): the previous one is used instead.
            newest = step_checkpoint(run / "checkpoints", step)
            step = max(int(p.stem[5:]) for p in newest.parent.glob("step-*.pt") if p != newest)
            with open(newest, "r+b") as f:
                f.truncate(1000)
        r = run_cli([*RUN, f"hydra.run.dir={run}"], cwd=REPO)
        assert r.returncode == 0, r.stderr[-3000:]
        warnings = [line for line in r.stdout.splitlines() if "falling back" in line]
        assert len(warnings) == (1 if i == 2 else 0), r.stdout
        assert f"(step {step})" in next(line for line in r.stdout.splitlines() if "resuming from" in line)
        resumed_from.append(step)
        assert_identical(ref, run)
        assert json.loads((run / "summary.json").read_text())["status"] == "done"
    print("resumed from steps", resumed_from)


def test_best_pt_holds_the_weights_best_val_loss_describes_after_a_kill(tmp_path):
    """A kill after a step's checkpoint is saved but before best.pt is linked to it: the resumed
    run's best_val_loss is that step's, so best.pt must be made to hold it before test is scored."""
    run = tmp_path / "run"
    args = [*RUN[:-5], "schedule=none", "schedule.peak_lr=3e-3", "train.max_steps=4", "train.eval_every=2",
            "train.keep_checkpoints=3", f"hydra.run.dir={run}"]
    assert run_cli(args, cwd=REPO).returncode == 0
    val_losses = [m["val_loss"] for m in metrics(run)]
    assert [m["step"] for m in metrics(run)] == [0, 2, 4] and val_losses == sorted(val_losses, reverse=True)
    ckpts = run / "checkpoints"
    assert (ckpts / "best.pt").samefile(ckpts / "step-0000004.pt")
    finished = json.loads((run / "summary.json").read_text())

    link_checkpoint(ckpts / "step-0000002.pt", ckpts / "best.pt")  # as the kill left it
    r = run_cli(args, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (ckpts / "best.pt").samefile(ckpts / "step-0000004.pt")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_val_loss"] == finished["best_val_loss"] == val_losses[-1]
    assert summary["test_loss"] == finished["test_loss"]


SWEEP = [*CORPUS, "model.d_model=32", "model.n_heads=2", "model.n_layers=2",
         "model.max_seq_len=32", "tokenizer.vocab_size=512", "train.batch_size=8", "eval.max_batches=2",
         "eval.sample_tokens=0", "logger=none", "train.max_steps=8", "train.eval_every=4",
         "train.checkpoint_every=2", "train.seed=0,1,2"]


def snapshot(job: Path) -> dict:
    files = [job / "metrics.jsonl", job / "summary.json", *sorted((job / "checkpoints").iterdir())]
    return {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}


def test_killed_sweep_relaunched_finishes_every_job_once(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *SWEEP, f"hydra.sweep.dir={sweep}"]

    def job(seed: int) -> Path | None:  # by its overrides: a long dir name is cut and hashed
        return next((d.parent.parent for d in sweep.glob("*/.hydra/overrides.yaml")
                     if f"train.seed={seed}" in d.read_text()), None)

    kill_when(args, lambda: job(1) is not None and newest_step(job(1) / "checkpoints") >= 2,
              tmp_path / "killed.log")
    assert json.loads((job(0) / "summary.json").read_text())["status"] == "done"
    assert not (job(1) / "summary.json").exists() and job(2) is None
    done_before = snapshot(job(0))

    r = run_cli(args, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    for seed in (0, 1, 2):
        assert json.loads((job(seed) / "summary.json").read_text())["status"] == "done", seed
        assert [m["step"] for m in metrics(job(seed))] == [0, 4, 8], seed
    assert snapshot(job(0)) == done_before  # skipped: not a byte or a timestamp changed
    log = r.stdout.splitlines()
    assert sum("skipped:" in line and job(0).name in line for line in log) == 1
    resumed = [line for line in log if "resuming from" in line]
    assert len(resumed) == 1 and job(1).name in resumed[0] and "(step 0)" not in resumed[0]
