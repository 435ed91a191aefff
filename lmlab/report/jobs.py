"""The jobs of a sweep dir (or a folder of runs), read from their files: overrides, summary, metrics,
test scores. Groups them into arms: the jobs whose swept values agree exactly on everything but the
seed (and the learning rate, where a grid of it is swept: select.py picks each arm's), and into
corpora: nats/token are compared only among jobs of one corpus and tokenizer."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

SEED_KEY = "train.seed"
LR_KEY = "schedule.peak_lr"
ALL_JOBS = "all jobs"  # the one arm of a sweep that varies nothing but the seed (and the LR)
# The data keys that decide which documents a test split holds: runs that differ in one were
# scored on other text, and their nats/token are never compared.
CARVING = ("hub_config", "text_column", "split_on", "pool", "holdout", "split_seed")


@dataclass
class Job:
    path: Path
    num: int | None  # Hydra's job number in its sweep; None for a single run
    overrides: dict[str, str]  # key (without Hydra's +) -> value, as typed
    summary: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)  # .hydra/config.yaml: the job's composed config

    @property
    def started(self) -> float:
        """When the job started: its summary's `started_at`, else the time of Hydra's record (a job
        killed before its summary); 0 for a run without either."""
        if self.summary.get("started_at") is not None:
            return self.summary["started_at"]
        record = self.path / ".hydra" / "hydra.yaml"
        return record.stat().st_mtime if record.exists() else 0.0

    @property
    def seed(self) -> str | None:
        return self.overrides.get(SEED_KEY, str(self.config.get("train", {}).get("seed", "")) or None)

    @cached_property
    def test_scores(self) -> dict | None:
        """test_scores.json: per-document test losses and the loss by window position; None if absent."""
        path = self.path / "test_scores.json"
        return json.loads(path.read_text()) if self.done and path.is_file() else None

    def metric(self, key: str):
        """summary.json's `key`; for a `test_common_*` metric a run did not write, its `test_*` where
        its own test windows are the common ones (its context is the study's common window,
        rootcause.common_window, scored without a stride): the same windows give the same number.
        None where neither is there."""
        value = self.summary.get(key)
        if value is not None or not key.startswith("test_common_"):
            return value
        model, scoring = self.config.get("model") or {}, self.config.get("eval") or {}
        window = (self.config.get("rootcause") or {}).get("common_window")
        same = window is not None and model.get("max_seq_len") == window and not scoring.get("stride")
        return self.summary.get(key.replace("test_common_", "test_", 1)) if same else None

    @property
    def corpus(self) -> str:
        """The data, the way its test split was carved, and the tokenizer the job's nats/token are
        measured in ("" where its files do not say)."""
        data, tok = self.config.get("data"), self.config.get("tokenizer")
        if data and tok:
            source = [data.get("local_dir") or data.get("hub_id") or ""]
            source += [f"{key}={data[key]}" for key in CARVING if data.get(key) is not None and data[key] is not False]
            return (f"data {data.get('name', '?')}" + (f" ({', '.join(filter(None, source))})" if any(source) else "")
                    + f", tokenizer {tok.get('kind', '?')} {tok.get('vocab_size', '')}".rstrip())
        keys = [key for key in self.overrides if key.split(".")[0] in ("data", "tokenizer") and key != "data.cache_dir"]
        return ", ".join(f"{key}={self.overrides[key]}" for key in keys)

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
    def pruned(self) -> bool:
        """Stopped early by a sweeper's pruner (Optuna): neither done nor a failure."""
        return self.summary.get("status") == "pruned"

    @property
    def tokens(self) -> int | None:
        if self.summary.get("tokens_seen") is not None:
            return self.summary["tokens_seen"]
        return self.metrics[-1].get("tokens") if self.metrics else None

    @cached_property
    def late_gain(self) -> float | None:
        """Validation loss gained over the last 10% of steps: the last evaluation at or before 90% of
        the run's steps minus its last evaluation (a curve still falling there was stopped early);
        None where no evaluation lies that early."""
        evals = [(m["step"], m["val_loss"]) for m in self.metrics if m.get("val_loss") is not None]
        if not evals:
            return None
        last_step, last = evals[-1]
        earlier = next((loss for step, loss in reversed(evals) if 10 * step <= 9 * last_step and step < last_step), None)
        return None if earlier is None else earlier - last

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
    config_path = job_dir / ".hydra" / "config.yaml"
    config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.exists() else {}
    return Job(job_dir, _job_num(job_dir), _read_overrides(job_dir), summary, metrics, config)


def find_jobs(root: Path) -> list[Job]:
    """Every job dir below root (root included), in launch order: a job has Hydra's record of
    its overrides or a summary, so a job killed before writing its summary still shows up."""
    dirs = {p.parent for p in root.rglob("summary.json")}
    dirs |= {p.parent.parent for p in root.rglob(".hydra/overrides.yaml")}
    jobs = [load_job(d) for d in dirs]
    launch = _launches(jobs)
    renumber = len(set(launch.values())) > 1
    jobs.sort(key=lambda job: (job.num is None, launch[job.path], job.num or 0, str(job.path)))
    for index, job in enumerate(jobs):
        if job.num is None or renumber:  # single runs in path (timestamp) order; several launches in theirs
            job.num = index
    return jobs


def _launches(jobs: list[Job]) -> dict[Path, int]:
    """Each job's dir -> the launch it came from. Hydra numbers each launch's jobs from 0, so a sweep
    dir that took several launches (stage 2, an LR grid's extension) repeats numbers: in the order
    the jobs started, a number seen again begins the next launch."""
    launch, seen, out = 0, set(), {}
    for job in sorted(jobs, key=lambda job: (job.started, job.num or 0)):
        if job.num is not None and job.num in seen:
            launch, seen = launch + 1, set()
        seen.add(job.num)
        out[job.path] = launch
    return out


def exact(value: str | None):
    """A swept value as a grouping key: its number where it is one (1e-3 and 0.001 are one value,
    10240000 and 10200000 two), else its text."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value is not the same in every job, in first-seen order."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    return [key for key in keys if len({exact(job.overrides.get(key)) for job in jobs}) > 1]


def short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() and abs(number) < 1e6 else f"{number:.3g}"


def label(job: Job, keys: list[str], rounded: bool = True) -> str:
    values = (job.overrides.get(key, "-") for key in keys)
    return ", ".join(f"{key}={short(v) if rounded else v}" for key, v in zip(keys, values)) or job.path.name


def arm_keys(keys: list[str]) -> list[str]:
    return [key for key in keys if key not in (SEED_KEY, LR_KEY)]


def arms(jobs: list[Job], keys: list[str]) -> dict[str, list[Job]]:
    """Jobs by arm (their exact swept values other than the seed and the LR), arms in launch order,
    each named by its rounded values, or by the values as typed where rounding would merge two."""
    grouped: dict[tuple, list[Job]] = {}
    for job in jobs:
        grouped.setdefault(tuple(exact(job.overrides.get(key)) for key in arm_keys(keys)), []).append(job)
    if not arm_keys(keys):
        return {ALL_JOBS: jobs} if jobs else {}
    rounded = [label(members[0], arm_keys(keys)) for members in grouped.values()]
    return {name if rounded.count(name) == 1 else label(members[0], arm_keys(keys), rounded=False): members
            for name, members in zip(rounded, grouped.values())}


def by_corpus(jobs: list[Job]) -> dict[str, list[Job]]:
    """Jobs by the data and tokenizer they were measured in, in launch order."""
    grouped: dict[str, list[Job]] = {}
    for job in jobs:
        grouped.setdefault(job.corpus, []).append(job)
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
