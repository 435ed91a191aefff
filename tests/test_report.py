"""The sweep report from run dirs alone: table rows, seed averages, failed and killed jobs, plots.
(The report over a real sweep run is in test_sweeps.py.)"""
import json
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


def _done(best_val_ppl: float, test_ppl: float) -> dict:
    return {"status": "done", "best_val_ppl": best_val_ppl, "test_ppl": test_ppl, "n_params": 1_234_567,
            "tokens_seen": 3000, "tokens_per_s": 4321.9}


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
    assert "| variant=baseline | 2/2 | 105.00 (100.00-110.00) | 108.00 (104.00-112.00) |" in report
    assert "| variant=warmup | 0/2 | - | - |" in report
    # One plot per swept factor (the seed is not a factor) and the curves.
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["best_val_ppl_by_variant.png", "val_loss_curves.png"]
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
