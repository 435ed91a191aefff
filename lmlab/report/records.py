"""A sweep's compact job records: the files the report reads of each job (its overrides, config and
Hydra's job record, summary, curves, test scores and samples) and the sweep's multirun.yaml (what
was swept, and how), without checkpoints or logs: some kilobytes a job. Committed beside a study's
findings, they rebuild its report on any clone: `python -m lmlab.report <records dir> --out <dir>`."""
from __future__ import annotations

import shutil
from pathlib import Path

from lmlab.report.jobs import find_jobs

RECORD_FILES = (".hydra/overrides.yaml", ".hydra/config.yaml", ".hydra/hydra.yaml", "summary.json",
                "metrics.jsonl", "test_scores.json", "samples.jsonl")


def keep_records(root: Path, out: Path) -> int:
    """Copies the record files of each job under root that has ended (done, pruned, failed: it has
    a summary; one still running has no record yet) to the same relative dir under out, replacing
    older copies; returns the number of jobs copied."""
    root, out = Path(root), Path(out)
    jobs = [job for job in find_jobs(root) if job.summary]
    if not jobs:
        raise FileNotFoundError(f"no ended job (summary.json) under {root}")
    if (root / "multirun.yaml").is_file():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "multirun.yaml", out / "multirun.yaml")
    for job in jobs:
        for name in RECORD_FILES:
            source = job.path / name
            if source.is_file():
                target = out / job.path.relative_to(root) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
    return len(jobs)
