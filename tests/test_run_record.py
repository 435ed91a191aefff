"""A run dir's record (.hydra/: the overrides and config it was made with) is what ties a relaunch
to its run: `hydra.run.dir=DIR` alone resumes with DIR's own overrides, and a start that fails
before training leaves no run dir behind, or leaves an existing one's record as it was."""
import json
import shutil

import yaml

from tests.conftest import CORPUS, REPO, TINY, run_cli

RUN = [*CORPUS, *TINY, "train.max_steps=4", "train.eval_every=2", "train.checkpoint_every=2", "eval.max_batches=1",
       "eval.sample_tokens=0", "logger=none"]


def test_the_run_dir_alone_resumes_with_the_overrides_it_was_made_with(tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli([*RUN, f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    # An interrupted run: the last checkpoint and the summary gone, as after a kill -9 at step 3.
    (run_dir / "summary.json").unlink()
    for name in ("last.pt", "best.pt", "step-0000004.pt"):
        (run_dir / "checkpoints" / name).unlink(missing_ok=True)
    recorded = (run_dir / ".hydra" / "overrides.yaml").read_text()

    r = run_cli([f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"lmlab: {run_dir} was started with: " in r.stdout and "resuming with those overrides" in r.stdout
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == recorded
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "done" and summary["steps"] == 4 and summary["n_params"] < 100_000  # TINY's


def test_a_failed_start_into_a_run_dir_leaves_its_record_as_it_was(tmp_path):
    run_dir = tmp_path / "run"
    r = run_cli([*RUN, f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    before = {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
    summary = (run_dir / "summary.json").read_text()

    r = run_cli([*RUN, "data=text", f"data.local_dir={tmp_path / 'nowhere'}", f"hydra.run.dir={run_dir}"], cwd=REPO)
    assert r.returncode == 2 and "is neither a folder" in r.stderr
    assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == before
    assert yaml.safe_load(before["overrides.yaml"]) == RUN
    assert (run_dir / "summary.json").read_text() == summary


def test_a_start_that_fails_before_training_leaves_no_run_dir(tmp_path):
    shutil.rmtree(tmp_path / "outputs", ignore_errors=True)
    for bad in (["model.n_heads=3"], ["data=text", f"data.local_dir={tmp_path / 'nowhere'}"]):
        r = run_cli([*RUN, *bad], cwd=tmp_path)
        assert r.returncode == 2, r.stderr[-3000:]
        assert not list(tmp_path.glob("outputs/runs/*")), r.stderr[-3000:]
    r = run_cli([*RUN, "model.n_heads=3", f"hydra.run.dir={tmp_path / 'named'}"], cwd=tmp_path)
    assert r.returncode == 2 and not (tmp_path / "named").exists()
