"""The jobs of a sweep dir (or a folder of runs), read from their files: overrides, summary, metrics.
Groups them into arms: the jobs whose swept values agree on everything but the seed."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SEED_KEY = "train.seed"


@dataclass
class Job:
    path: Path
    num: int | None  # Hydra's job number in its sweep; None for a single run
    overrides: dict[str, str]  # key (without Hydra's +) -> value, as typed
    summary: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)

    @property
    def status(self) -> str:
        if not self.summary:
            return "no summary.json (killed?)"
        status = self.summary.get("status", "?")
        reason = self.summary.get("reason")
        return f"{status}: {reason}" if reason else status

    @property
    def done(self) -> bool:
        return self.summary.get("status") == "done"

    @property
    def tokens(self) -> int | None:
        if self.summary.get("tokens_seen") is not None:
            return self.summary["tokens_seen"]
        return self.metrics[-1].get("tokens") if self.metrics else None

    @property
    def floor(self) -> dict | None:
        """The better bigram's metrics for this job's token cache (summary.json's `floors`)."""
        floors = self.summary.get("floors")
        return floors[floors["floor"]] if floors else None


def _read_overrides(job_dir: Path) -> dict[str, str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(path.read_text()) if path.exists() else []
    pairs = (item.split("=", 1) for item in items or [] if "=" in item)
    return {key.lstrip("+~"): value for key, value in pairs}


def _job_num(job_dir: Path) -> int | None:
    path = job_dir / ".hydra" / "hydra.yaml"
    if not path.exists():
        return None
    num = (yaml.safe_load(path.read_text()) or {}).get("hydra", {}).get("job", {}).get("num")
    return num if isinstance(num, int) else None


def load_job(job_dir: Path) -> Job:
    summary_path, metrics_path = job_dir / "summary.json", job_dir / "metrics.jsonl"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    metrics = ([json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
               if metrics_path.exists() else [])
    return Job(job_dir, _job_num(job_dir), _read_overrides(job_dir), summary, metrics)


def find_jobs(root: Path) -> list[Job]:
    """Every job dir below root (root included), in launch order: a job has Hydra's record of
    its overrides or a summary, so a job killed before writing its summary still shows up."""
    dirs = {p.parent for p in root.rglob("summary.json")}
    dirs |= {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    jobs = sorted((load_job(d) for d in dirs), key=lambda job: (job.num is None, job.num or 0, str(job.path)))
    for index, job in enumerate(jobs):
        if job.num is None:  # single runs: number them in path (timestamp) order
            job.num = index
    return jobs


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value is not the same in every job, in first-seen order."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    return [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]


def short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() and abs(number) < 1e6 else f"{number:.3g}"


def label(job: Job, keys: list[str]) -> str:
    return ", ".join(f"{key}={short(job.overrides.get(key, '-'))}" for key in keys) or job.path.name


def arm_keys(keys: list[str]) -> list[str]:
    return [key for key in keys if key != SEED_KEY]


def arms(jobs: list[Job], keys: list[str]) -> dict[str, list[Job]]:
    """Jobs by arm (their swept values other than the seed), arms in launch order."""
    grouped: dict[str, list[Job]] = {}
    for job in jobs:
        grouped.setdefault(label(job, arm_keys(keys)), []).append(job)
    return grouped


def baseline_arm(groups: dict[str, list[Job]], keys: list[str], asked: str | None = None) -> str:
    """The arm of `groups` (from `arms`) the others are compared with: the one asked for, else the
    one with a swept value `baseline` (sweep=rootcause's variant=baseline), else the first."""
    names = list(groups)
    if asked is not None:
        if asked not in names:
            raise ValueError(f"--baseline {asked!r} is not an arm; the arms are: {'; '.join(names)}")
        return asked
    named = [name for name, members in groups.items()
             if any(members[0].overrides.get(key) == "baseline" for key in arm_keys(keys))]
    return (named or names)[0]
