"""The sweep report from run dirs alone: table rows, seed averages, failed and killed jobs, plots.
(The report over a real sweep run is in test_sweeps.py.)"""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from lmlab.report import main, write_report


def _job(root: Path, num: int, overrides: list[str], summary: dict | None, val_losses: list[float]) -> Path:
    job_dir = root / ",".join(overrides)
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    if summary is not None:
        (job_dir / "summary.json").write_text(json.dumps(summary))
    metrics = [{"step": i, "tokens": 1000 * i, "val_loss": loss} for i, loss in enumerate(val_losses)]
    (job_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return job_dir


def _done(best_val_ppl: float, test_ppl: float, **more) -> dict:
    return {"status": "done", "best_val_ppl": best_val_ppl, "test_ppl": test_ppl, "test_loss": math.log(test_ppl),
            "n_params": 1_234_567, "tokens_seen": 3000, "tokens_per_s": 4321.9, **more}


def test_report_rows_seed_means_failures_and_plots(tmp_path):
    common = ["sweep=rootcause", "data.local_dir=/data/mini"]
    _job(tmp_path, 0, ["+variant=baseline", "train.seed=0", *common], _done(100.0, 104.0), [6.0, 5.0, 4.7])
    _job(tmp_path, 1, ["+variant=baseline", "train.seed=1", *common], _done(110.0, 112.0), [6.0, 5.1, 4.8])
    _job(tmp_path, 2, ["+variant=warmup", "train.seed=0", *common],
         {"status": "failed", "reason": "TrainingDiverged: loss is nan | at step 3"}, [6.0, 5.5])
    _job(tmp_path, 3, ["+variant=warmup", "train.seed=1", *common], None, [])  # killed before its summary

    report = write_report(tmp_path).read_text()
    assert "4 jobs: 2 done, 2 failed or unfinished." in report
    assert "Common overrides: `sweep=rootcause data.local_dir=/data/mini`" in report
    rows = [line for line in report.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == [
        "| 0 | variant=baseline, train.seed=0 | 1,234,567 | 3,000 | 100.00 | 104.00 | 4,322 | done |",
        "| 1 | variant=baseline, train.seed=1 | 1,234,567 | 3,000 | 110.00 | 112.00 | 4,322 | done |",
        "| 2 | variant=warmup, train.seed=0 | - | 1,000 | - | - | - | failed: TrainingDiverged: loss is nan \\| at step 3 |",
        "| 3 | variant=warmup, train.seed=1 | - | - | - | - | - | no summary.json (killed?) |",
    ]
    # The arms: the baseline's two seeds give a mean and a spread; the warmup arm has no done seed.
    assert "| variant=baseline | 2/2 | 4.681 ± 0.052 | - | - | - | (baseline) | - |" in report
    assert "| variant=warmup | 0/2 | - | - | - | - | - | - |" in report
    assert "No reference rows" in report and "`variant=baseline`" in report.split("Short of 3 seeds")[1]
    # One plot per swept factor (the seed is not a factor), the arms and the curves.
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["best_val_ppl_by_variant.png", "test_loss_by_arm.png",
                                                             "val_loss_curves.png"]
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG" and f"({png.name})" in report


def test_report_over_single_runs_and_an_empty_dir(tmp_path, capsys):
    runs = tmp_path / "runs"
    _job(runs, 0, ["model.d_ff_ratio=4"], _done(90.0, 91.0), [6.0, 4.5])
    _job(runs, 0, ["model.d_ff_ratio=1"], _done(95.0, 96.0), [6.0, 4.6])
    out = tmp_path / "report"
    assert main([str(runs), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| model.d_ff_ratio=1 |" in report and "| model.d_ff_ratio=4 |" in report
    assert (out / "best_val_ppl_by_model.d_ff_ratio.png").exists()

    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no job dirs" in capsys.readouterr().err


def test_report_never_imports_torch():
    code = "import sys, lmlab.report; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


FLOORS = {"floor": "kneser_ney_bigram",
          "unigram": {"test_loss": 6.0, "test_word_ppl": 9000.0, "test_bpb": 3.3, "val_loss": 6.1},
          "interpolated_bigram": {"test_loss": 4.45, "test_word_ppl": 800.0, "test_bpb": 2.45, "val_loss": 4.5},
          "kneser_ney_bigram": {"test_loss": 4.4, "test_word_ppl": 700.0, "test_bpb": 2.42, "val_loss": 4.45}}


def test_job_records_rebuild_the_report_whatever_times_their_files_get(tmp_path, capsys):
    """--records copies what the report reads (no checkpoints, no logs); the copy's report is the
    sweep's own although a clone gives its files other times: launches are ordered by started_at."""
    sweep, records = tmp_path / "sweep", tmp_path / "records"
    for launch, seed in enumerate((0, 1)):  # two launches into one dir, each numbering its jobs from 0
        for num, arm in enumerate(("baseline", "warmup")):
            job_dir = _job(sweep, num, [f"+variant={arm}", f"train.seed={seed}"],
                           _done(100.0 + seed, 104.0 + seed + num, started_at=1000.0 * (launch + 1) + num), [6.0, 5.0])
            os.utime(job_dir / ".hydra" / "hydra.yaml", (1000.0 * (launch + 1) + num,) * 2)
            (job_dir / "checkpoints").mkdir()
            (job_dir / "checkpoints" / "last.pt").write_bytes(b"weights")
            (job_dir / "__main__.log").write_text("log")
    expected = write_report(sweep, tmp_path / "a").read_text()
    _job(sweep, 2, ["+variant=size", "train.seed=1"], None, [6.0])  # still running: no record yet
    assert main([str(sweep), "--records", str(records)]) == 0
    assert "4 job records in" in capsys.readouterr().out
    assert not list(records.glob("*size*"))
    assert not list(records.rglob("last.pt")) and not list(records.rglob("*.log"))
    for index, path in enumerate(sorted(records.rglob("hydra.yaml"), reverse=True)):  # times a clone might give
        os.utime(path, (5000.0 + index,) * 2)
    assert write_report(records, tmp_path / "b").read_text() == expected.replace(str(sweep), str(records), 1)
    rows = [line.split(" | ")[:2] for line in expected.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == [["| 0", "variant=baseline, train.seed=0"], ["| 1", "variant=warmup, train.seed=0"],
                    ["| 2", "variant=baseline, train.seed=1"], ["| 3", "variant=warmup, train.seed=1"]]


def _arm_job(root: Path, num: int, arm: str, seed: int, test_loss: float, samples: bool = False) -> None:
    summary = _done(60.0, math.exp(test_loss), test_word_ppl=2 * test_loss, test_bpb=test_loss / 2, floors=FLOORS)
    job_dir = _job(root, num, [f"+variant={arm}", f"train.seed={seed}"], summary, [6.0, 4.6, 4.5])
    if samples:
        rows = [{"step": step, "tokens": 0, "prompt": " The", "text": f" text at step {step}"} for step in (0, 10)]
        (job_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_arms_get_spreads_paired_or_welch_verdicts_after_holm_and_the_floor(tmp_path, capsys):
    arms = {"baseline": [4.00, 4.02, 3.98], "warmup": [4.30, 4.31, 4.29], "ratio": [4.01, 3.97],
            "size": [3.5]}
    num = 0
    for arm, losses in arms.items():
        for seed, loss in enumerate(losses):
            _arm_job(tmp_path, num, arm, seed, loss, samples=seed == 0)
            num += 1
    report = write_report(tmp_path).read_text()
    table = {line.split(" | ")[0][2:]: line for line in report.splitlines()
             if re.match(r"\| variant=\w+ \| \d/\d \|", line)}
    assert table["variant=baseline"] == ("| variant=baseline | 3/3 | 4.000 ± 0.020 | 8.0 ± 0.0 | 2.0000 ± 0.0100 "
                                         "| - | (baseline) | 0.400 ± 0.020 | Kneser-Ney bigram (every order) |")
    # The same seeds: paired on the per-seed differences (0.30, 0.29, 0.31: SD 0.01, t quantile 4.303 for 2
    # degrees of freedom gives +-0.0248); Holm multiplies the smaller of two p-values by 2.
    assert ("| +0.300 [+0.275, +0.325] paired t | yes (p = 0.00037, Holm 0.00074) | 0.100 ± 0.010 |"
            in table["variant=warmup"])
    # Seeds 0, 1 against 0, 1, 2: paired on the two seeds both ran (differences +0.01, -0.05: mean -0.02, SD
    # 0.0424, t quantile 12.706 for 1 degree of freedom gives +-0.381), not Welch over all five.
    assert "| -0.020 [-0.401, +0.361] paired t (seeds 0, 1) | no (p = 0.63, Holm 0.63) |" in table["variant=ratio"]
    assert "| 3.500 (1 seed) |" in table["variant=size"]
    assert "| -0.500 | cannot say: 1 seed has no spread |" in table["variant=size"]
    assert ("| Kneser-Ney bigram (the floor): counted on train, tuned on validation | - | 4.400 | 700.0 | 2.4200 "
            "| +0.400 |") in report
    assert ("The baseline beats the floor (Kneser-Ney bigram) on test by 0.400 nats/token (20 x its seed spread, "
            "SD 0.0200 over 3 seeds)") in report
    assert "within twice the larger spread of it or without a spread to judge by: `variant=ratio`." in report
    assert "| variant=warmup | ' The' | ' text at step 10' |" in report  # the last evaluation's samples
    assert "## Scaling" not in report  # no size is swept
    # Another baseline, named as the report labels arms; a name that is no arm is one line, exit 2.
    assert "Baseline: `variant=warmup`" in write_report(tmp_path, baseline="variant=warmup").read_text()
    assert main([str(tmp_path), "--baseline", "variant=nope"]) == 2
    assert "'variant=nope' is not an arm; the arms are: variant=baseline; variant=warmup" in capsys.readouterr().err


def test_a_width_sweep_gets_a_scaling_fit_and_three_sizes_say_why_not(tmp_path):
    widths = [64, 96, 128, 192, 256]
    for num, width in enumerate(widths):
        n = 32 * width ** 2  # 4 layers of 8 d^2 non-embedding parameters
        loss = 2.0 + 1.5 * (n / 1e6) ** -0.3 + 0.001 * (-1) ** num
        summary = _done(60.0, math.exp(loss), n_params_non_embedding=n, floors=FLOORS)
        _job(tmp_path / "five", num, [f"model.d_model={width}"], summary, [6.0, loss])
        if width <= 128:
            _job(tmp_path / "three", num, [f"model.d_model={width}"], summary, [6.0, loss])
    report = write_report(tmp_path / "five").read_text()
    assert "L(N) = E + A / N^alpha over non-embedding parameters N (in millions), test loss of 5 runs at 5 sizes" \
        in report
    assert "alpha = 0.302 ± 0.0027" in report and "E = 2.012 ± 0.017" in report
    assert "Extrapolated to the next size, N = 4,194,304" in report  # the sweep's step (x2 in N) once more
    assert (tmp_path / "five" / "scaling_fit.png").read_bytes()[:4] == b"\x89PNG" and "(scaling_fit.png)" in report
    report = write_report(tmp_path / "three").read_text()
    assert "No fit: 3 model sizes; fitting L(N) needs at least 4." in report
