"""A run dir's record, `.hydra/` (the overrides and config it was made with), is the only trace of
the command that started the run, and Hydra rewrites it at every start, before lmlab sees the
config. So `python -m lmlab` looks at the run dir it is given (`hydra.run.dir=DIR`) before Hydra:

- given DIR and no override of the run's own, it adds the overrides DIR was made with, saying so in
  one line, so that the run resumes as it was started rather than under the default config;
- a start that fails before training (no line added to metrics.jsonl: validation, data loading, a
  refused resume) is undone: a run dir it made is removed, an existing one gets its record back.

The sweeps' job dirs are left alone: a sweep's report lists its failed jobs.
"""
from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

RUN_DIR_KEY = "hydra.run.dir"


@dataclass
class Before:
    """A run dir as it was before this start: its record's files and the size of its metrics."""
    record: dict[str, bytes]
    metrics_size: int


_BEFORE: dict[Path, Before] = {}


def _metrics_size(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return path.stat().st_size if path.is_file() else -1


def given_run_dir(argv: list[str]) -> Path | None:
    """The run dir the command line names (the last `hydra.run.dir=`, as Hydra takes it), else None."""
    dirs = [arg.split("=", 1)[1] for arg in argv if arg.startswith(f"{RUN_DIR_KEY}=")]
    return Path(dirs[-1]).expanduser() if dirs else None


def with_recorded_overrides(argv: list[str]) -> list[str]:
    """`argv`, with the overrides its run dir was made with put first when it names a run dir that
    has a record and gives no override of the run's own (only hydra.* keys, no flags)."""
    run_dir = given_run_dir(argv)
    if run_dir is None or any(arg.startswith("-") or not arg.lstrip("+~").startswith("hydra.") for arg in argv):
        return argv
    path = run_dir / ".hydra" / "overrides.yaml"
    recorded = (yaml.safe_load(path.read_text(encoding="utf-8")) or []) if path.is_file() else []
    if recorded:
        print(f"lmlab: {run_dir} was started with: {shlex.join(recorded)}; resuming with those overrides", flush=True)
    return [*recorded, *argv]


def remember(argv: list[str]) -> None:
    """Note the given run dir as it is now (before Hydra writes into it)."""
    run_dir = given_run_dir(argv)
    if run_dir is not None and run_dir.is_dir():
        hydra_dir = run_dir / ".hydra"
        record = {p.name: p.read_bytes() for p in hydra_dir.iterdir() if p.is_file()} if hydra_dir.is_dir() else {}
        _BEFORE[run_dir.resolve()] = Before(record, _metrics_size(run_dir))


def undo_failed_start(run_dir: Path) -> bool:
    """After a failed start: if it trained nothing, remove the run dir it made, or put an existing
    dir's record back. True when the run dir is gone."""
    before = _BEFORE.get(run_dir.resolve())
    if before is None:
        if _metrics_size(run_dir) >= 0 or (run_dir / "checkpoints").exists():
            return False
        shutil.rmtree(run_dir, ignore_errors=True)
        return True
    if _metrics_size(run_dir) != before.metrics_size:
        return False
    hydra_dir = run_dir / ".hydra"
    for path in hydra_dir.glob("*"):
        if path.is_file() and path.name not in before.record:
            path.unlink()
    for name, data in before.record.items():
        (hydra_dir / name).write_bytes(data)
    if not before.record and hydra_dir.is_dir() and not any(hydra_dir.iterdir()):
        hydra_dir.rmdir()
    return False
