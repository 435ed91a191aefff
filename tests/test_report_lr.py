"""Each arm at its own learning rate: the choice by validation alone, the edge of the grid, and the
stage-2 commands that run more seeds at the chosen LR into the same sweep dir."""
import math
import os
import re
import shlex
import subprocess
import sys

import yaml

from lmlab.report import main, write_report
from lmlab.report.jobs import find_jobs
from lmlab.report.select import choose
from tests.conftest import CORPUS, REPO, TEST_ENV, TINY, run_cli
from tests.test_report import _done, _job

# arm -> LR -> (best validation loss, test loss) of seed 0. The baseline's best LR on validation is
# 0.002, while its test loss is lowest at 0.004: a choice that looked at test would pick that one.
GRID = {"baseline": {"0.001": (4.50, 4.50), "0.002": (4.30, 4.35), "0.004": (4.40, 4.00)},
        "warmup": {"0.001": (4.60, 4.60), "0.002": (4.40, 4.40), "0.004": (4.20, 4.25)}}
COMMON = ["sweep=rootcause", "data.local_dir=/data/mini"]


def _stage1(root, seeds=("0",)):
    num = 0
    for arm, grid in GRID.items():
        for lr, (val, test) in grid.items():
            for seed in seeds:
                shift = 0.01 * int(seed)
                _job(root, num, [f"+variant={arm}", f"schedule.peak_lr={lr}", f"train.seed={seed}", *COMMON],
                     _done(60.0, math.exp(test + shift), best_val_loss=val + shift), [6.0, val + shift])
                num += 1
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {
        "hydra": ["hydra/launcher=basic", "hydra.sweep.dir=outputs/old"],
        "task": ["schedule.peak_lr=0.001,0.002,0.004", "train.seed=0", *COMMON]}}}))


def test_each_arm_gets_its_best_lr_on_validation_and_test_only_there(tmp_path):
    _stage1(tmp_path)
    jobs = find_jobs(tmp_path)
    baseline = choose("variant=baseline", [j for j in jobs if j.overrides["variant"] == "baseline"], lr_swept=True)
    assert baseline.lr == "0.002" and not baseline.at_edge
    assert [j.summary["test_loss"] for j in baseline.chosen] == [4.35]
    report = write_report(tmp_path).read_text()
    rows = {}
    for line in report.splitlines():  # the arms' table, before the LR table
        if line.startswith("| variant="):
            rows.setdefault(line.split(" | ")[0][2:], line)
    assert rows["variant=baseline"].startswith("| variant=baseline | 0.002 | 1/1 | 4.350 (1 seed) |")
    assert rows["variant=warmup"].startswith("| variant=warmup | 0.004 (grid edge) | 1/1 | 4.250 (1 seed) |")
    assert "| variant=warmup | 0.001: 4.6000 (1), 0.002: 4.4000 (1), **0.004: 4.2000** (1) | 0.004 | " \
           "best at the grid's edge: extend the grid |" in report
    assert "| variant=baseline | 0.001: 4.5000 (1), **0.002: 4.3000** (1), 0.004: 4.4000 (1) | 0.002 |  |" in report
    # The job table shows test only where it is reported: the baseline's LR 0.004 (best on test) shows none.
    job_rows = [line for line in report.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[5] for row in job_rows[:3]] == ["(other LR)", f"{math.exp(4.35):.2f}", "(other LR)"]


def test_stage2_commands_run_new_seeds_at_each_arms_lr_into_the_same_dir(tmp_path, capsys):
    _stage1(tmp_path)
    assert main([str(tmp_path), "--stage2", "--seeds", "0,1,2"]) == 0
    root = tmp_path.resolve()
    expected = [f"python -m lmlab -m +variant={arm} sweep=rootcause data.local_dir=/data/mini schedule.peak_lr={lr} "
                f"train.seed=1,2 hydra/launcher=basic hydra.sweep.dir={root}"
                for arm, lr in [("baseline", "0.002"), ("warmup", "0.004")]]
    assert capsys.readouterr().out.splitlines()[-2:] == expected
    script = (tmp_path / "stage2.sh").read_text().splitlines()
    assert script[-2:] == expected and os.access(tmp_path / "stage2.sh", os.X_OK)
    # No stage-2 job has the overrides of a stage-1 job (dir names come from them): the seeds differ.
    stage1 = {frozenset(yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()))
              for d in tmp_path.iterdir() if (d / ".hydra").is_dir()}
    for line in expected:
        words = shlex.split(line)[4:]
        fixed = [w for w in words if not w.startswith(("hydra", "train.seed"))]
        for seed in ("1", "2"):
            assert frozenset([*fixed, f"train.seed={seed}"]) not in stage1

    # Stage 2 ran (Hydra numbers its jobs from 0 again): the report sees 3 seeds at each chosen LR.
    num = 0
    for arm, lr in [("baseline", "0.002"), ("warmup", "0.004")]:
        val, test = GRID[arm][lr]
        for seed in (1, 2):
            job = _job(tmp_path, num, [f"train.seed={seed}", f"+variant={arm}", f"schedule.peak_lr={lr}", *COMMON],
                       _done(60.0, math.exp(test + 0.01 * seed), best_val_loss=val + 0.01 * seed), [6.0, val])
            later = (job / ".hydra" / "hydra.yaml").stat().st_mtime + 60  # launched after stage 1
            os.utime(job / ".hydra" / "hydra.yaml", (later, later))
            num += 1
    report = write_report(tmp_path).read_text()
    # Both launches numbered their jobs from 0: the report numbers all ten apart, stage 2's last.
    numbered = {int(line.split(" | ")[0][2:]): line for line in report.splitlines() if re.match(r"\| \d+ \|", line)}
    assert sorted(numbered) == list(range(10)) and all("train.seed=2" in numbered[n] for n in (7, 9))
    assert "| variant=baseline | 0.002 | 3/3 | 4.360 ± 0.010 |" in report
    assert "| variant=warmup | 0.004 (grid edge) | 3/3 | 4.260 ± 0.010 | - | - | -0.100 | cannot say: the per-seed " \
           "differences do not vary |" in report
    # Asked again: every arm has its seeds at its LR already, so nothing runs twice.
    assert main([str(tmp_path), "--stage2", "--seeds", "1,2"]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "# variant=baseline: seeds 1,2 already ran at its LR 0.002",
        "# variant=warmup: seeds 1,2 already ran at its LR 0.004"]


def test_stage2_needs_an_lr_grid_and_seeds(tmp_path, capsys):
    _job(tmp_path, 0, ["train.seed=0"], _done(60.0, 100.0), [6.0])
    _job(tmp_path, 1, ["train.seed=1"], _done(60.0, 100.0), [6.0])
    assert main([str(tmp_path), "--stage2", "--seeds", "2"]) == 2
    assert "sweeps no schedule.peak_lr grid" in capsys.readouterr().err


def test_a_real_lr_grid_then_stage2_into_its_dir(tmp_path):
    sweep_dir = tmp_path / "grid"
    shrink = [*CORPUS, *TINY, "train.max_tokens=512", "eval.max_batches=2", "logger=none",
              "schedule=none", "eval.sample_tokens=0"]
    r = run_cli(["-m", *shrink, "schedule.peak_lr=1e-3,3e-3", "train.seed=0", f"hydra.sweep.dir={sweep_dir}"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli([str(sweep_dir), "--stage2", "--seeds", "0,1"], cwd=REPO, module="lmlab.report")
    assert r.returncode == 0, r.stderr[-3000:]
    [command] = r.stdout.splitlines()[-1:]
    assert command.startswith("python -m lmlab -m ") and " train.seed=1 " in command
    env = {**os.environ, **TEST_ENV, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    done = subprocess.run(["sh", str(sweep_dir / "stage2.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = [d for d in sweep_dir.iterdir() if (d / "summary.json").is_file()]
    assert len(jobs) == 3  # two of stage 1, one of stage 2 in a dir of its own
    r = run_cli([str(sweep_dir)], cwd=REPO, module="lmlab.report")
    assert r.returncode == 0, r.stderr[-3000:]
    report = (sweep_dir / "report.md").read_text()
    assert "| all jobs | " in report and " | 2/2 | " in report.split("| all jobs | ")[1].splitlines()[0]


def _baseline_at(root, losses: dict[tuple[str, int], float], failed: tuple = ()) -> list:
    """Baseline jobs: (LR, seed) -> best validation loss; `failed` LRs diverged on seed 0."""
    for num, ((lr, seed), val) in enumerate(losses.items()):
        _job(root, num, ["+variant=baseline", f"schedule.peak_lr={lr}", f"train.seed={seed}"],
             _done(60.0, math.exp(val), best_val_loss=val), [6.0, val])
    for num, lr in enumerate(failed, start=len(losses)):
        _job(root, num, ["+variant=baseline", f"schedule.peak_lr={lr}", "train.seed=0"],
             {"status": "failed", "reason": "TrainingDiverged: training diverged: loss is nan"}, [6.0])
    return find_jobs(root)


def test_stage2_seeds_at_the_chosen_lr_do_not_move_the_choice(tmp_path):
    """Seed 0 at 1e-3 / 2e-3 / 4e-3 gives 3.00 / 2.95 / 2.97; stage 2's seeds at 2e-3 come out worse
    (3.00, 3.01). A mean over whatever seeds ran at each LR would now pick 4e-3 (2.97, one seed)."""
    jobs = _baseline_at(tmp_path, {("1e-3", 0): 3.00, ("2e-3", 0): 2.95, ("4e-3", 0): 2.97,
                                   ("2e-3", 1): 3.00, ("2e-3", 2): 3.01})
    arm = choose("variant=baseline", jobs, lr_swept=True)
    assert arm.lr == "2e-3" and sorted(job.seed for job in arm.chosen) == ["0", "1", "2"]
    assert "| all jobs | 1e-3: 3.0000 (1), **2e-3: 2.9500** (1), 4e-3: 2.9700 (1) | 2e-3 |  |" \
        in write_report(tmp_path).read_text()


def test_a_best_at_the_larger_of_two_lrs_extends_the_grid_unless_the_next_one_diverged(tmp_path):
    jobs = _baseline_at(tmp_path / "two", {("1e-3", 0): 3.00, ("2e-3", 0): 2.95})
    arm = choose("variant=baseline", jobs, lr_swept=True)
    assert arm.lr == "2e-3" and arm.at_edge
    jobs = _baseline_at(tmp_path / "three", {("1e-3", 0): 3.00, ("2e-3", 0): 2.95}, failed=("4e-3",))
    arm = choose("variant=baseline", jobs, lr_swept=True)
    assert arm.lr == "2e-3" and not arm.at_edge  # 4e-3 was tried: it diverged
    assert "| all jobs | 1e-3: 3.0000 (1), **2e-3: 2.9500** (1), 4e-3: diverged | 2e-3 |  |" \
        in write_report(tmp_path / "three").read_text()


def test_stage2_warns_when_every_arms_lr_is_at_its_grids_edge(tmp_path, capsys):
    """Stage 2's seeds would all go to LRs that may not be the best: the grid needs extending first."""
    _stage1(tmp_path)
    assert main([str(tmp_path), "--stage2", "--seeds", "1"]) == 0
    assert "edge" not in capsys.readouterr().err  # the baseline's 0.002 is inside its grid
    # The warmup arm is best at its largest LR; the baseline now at its smallest.
    _job(tmp_path, 6, ["+variant=baseline", "schedule.peak_lr=0.0005", "train.seed=0", *COMMON],
         _done(60.0, math.exp(4.0), best_val_loss=4.1), [6.0, 4.1])
    assert main([str(tmp_path), "--stage2", "--seeds", "1"]) == 0
    err = capsys.readouterr().err
    assert "every arm's chosen LR is at its grid's edge" in err, err
    script = (tmp_path / "stage2.sh").read_text()
    assert "# warning: every arm's chosen LR is at its grid's edge" in script
