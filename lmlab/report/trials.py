"""An Optuna search's report: its trials, not arms. A search samples each value once, so there is
no baseline to compare with and no seed spread; what it answers is which trial did best and how the
objective (best validation loss) moved with each searched key. The search is recognised from the
sweep dir's multirun.yaml (hydra.sweeper._target_), whose params also say which keys were sampled
on a log scale (`tag(log, ...)`), the scale their plot uses."""
from __future__ import annotations

import math
from pathlib import Path

import yaml

from lmlab.report import plots
from lmlab.report.jobs import Job, short
from lmlab.report.sections import cell, fmt

OBJECTIVE = "best_val_loss"  # what lmlab's Optuna sweeper minimises (lmlab.__main__.objective)


def search_params(root: Path) -> dict[str, str] | None:
    """The searched keys and their search spaces as written (`tag(log, interval(1e-4, 3e-3))`) when
    the sweep dir holds an Optuna search, else None."""
    path = root / "multirun.yaml"
    sweeper = (yaml.safe_load(path.read_text()) or {}).get("hydra", {}).get("sweeper", {}) if path.is_file() else {}
    if "optuna" not in str(sweeper.get("_target_", "")).lower():
        return None
    return {key.lstrip("+~"): str(space) for key, space in (sweeper.get("params") or {}).items()}


def log_scaled(params: dict[str, str], values: dict[str, list[float]]) -> dict[str, bool]:
    """Per searched key with numeric values: drawn on a log axis when it was sampled on one."""
    return {key: "tag(log" in params.get(key, "").replace(" ", "") and min(xs) > 0 for key, xs in values.items()}


def state(job: Job) -> str:
    return job.summary.get("status") or "unfinished"


def best_trial(jobs: list[Job]) -> Job | None:
    """The done trial with the lowest objective (a pruned trial stopped early: not a candidate)."""
    done = [job for job in jobs if job.done and job.summary.get(OBJECTIVE) is not None]
    return min(done, key=lambda job: job.summary[OBJECTIVE]) if done else None


def trials_section(jobs: list[Job], params: dict[str, str], out: Path) -> tuple[list[str], Path | None]:
    keys = [key for key in params if any(key in job.overrides for job in jobs)]
    lines = ["## Trials", "",
             f"An Optuna search over {', '.join(f'`{k}`' for k in keys)}: each trial is one sampled point, so the "
             "trials are listed, not compared with a baseline. The objective is the trial's best validation loss "
             "(nats/token); a pruned trial's is its best when its study's pruner stopped it.", "",
             "| trial | state | objective | tokens when stopped | " + " | ".join(keys) + " |",
             "|---:|---|---:|---:|" + "---:|" * len(keys)]
    for job in jobs:
        values = [short(job.overrides.get(key, "-")) for key in keys]
        lines.append(f"| {job.num} | {cell(state(job))} | {fmt(job.summary.get(OBJECTIVE), '.4f')} | "
                     f"{fmt(job.tokens if job.summary.get(OBJECTIVE) is not None else None, ',')} | "
                     + " | ".join(values) + " |")
    best = best_trial(jobs)
    if best is None:
        return lines + ["", "No trial finished: no best trial.", ""], None
    s = best.summary
    chosen = " ".join(f"{key}={best.overrides[key]}" for key in keys if key in best.overrides)
    lines += ["", f"Best trial: {best.num} (best validation loss {s[OBJECTIVE]:.4f}, perplexity "
              f"{math.exp(s[OBJECTIVE]):.2f}; test perplexity {fmt(s.get('test_ppl'), '.2f')}): `{chosen}`", ""]
    values = {}
    for key in keys:
        try:
            values[key] = [float(job.overrides[key]) for job in jobs if key in job.overrides]
        except ValueError:
            continue
    scales = log_scaled(params, values)
    return lines, plots.plot_trials(jobs, [key for key in keys if key in scales], scales, best, out, OBJECTIVE)
