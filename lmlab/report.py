"""`python -m lmlab.report DIR`: a table and plots of every job under DIR, offline.

DIR is a sweep dir (outputs/sweeps/<name>/<timestamp>) or a folder of single runs. Each job dir
holds `.hydra/overrides.yaml`, `summary.json` and `metrics.jsonl`; the report is `DIR/report.md`
plus PNGs beside it: best validation perplexity against each swept value, and validation loss
against training tokens. Reads numbers and files only (no torch), so it runs anywhere.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402
from matplotlib.ticker import EngFormatter, NullLocator  # noqa: E402

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


def _short(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() and abs(number) < 1e6 else f"{number:.3g}"


def _label(job: Job, keys: list[str]) -> str:
    return ", ".join(f"{key}={_short(job.overrides.get(key, '-'))}" for key in keys) or job.path.name


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _cell(text: str, limit: int = 200) -> str:
    text = text.replace("\n", " ")
    text = text if len(text) <= limit else text[:limit - 3] + "..."  # the full text is in summary.json
    return text.replace("|", "\\|")


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


def job_table(jobs: list[Job], keys: list[str]) -> list[str]:
    lines = ["| # | overrides | n_params | tokens | best val ppl | test ppl | tokens/s | status |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for job in jobs:
        s = job.summary
        lines.append(f"| {job.num} | {_cell(_label(job, keys))} | {_fmt(s.get('n_params'), ',')} | "
                     f"{_fmt(job.tokens, ',')} | {_fmt(s.get('best_val_ppl'), '.2f')} | "
                     f"{_fmt(s.get('test_ppl'), '.2f')} | {_fmt(s.get('tokens_per_s'), ',.0f')} | "
                     f"{_cell(job.status, limit=100)} |")
    return lines


def seed_table(jobs: list[Job], keys: list[str]) -> list[str]:
    """One row per arm (the swept values other than the seed): mean and range over its seeds."""
    arm_keys = [key for key in keys if key != SEED_KEY]
    arms: dict[str, list[Job]] = {}
    for job in jobs:
        arms.setdefault(_label(job, arm_keys), []).append(job)
    lines = ["| arm | seeds done | best val ppl: mean (min-max) | test ppl: mean (min-max) |",
             "|---|---:|---:|---:|"]
    for arm, members in arms.items():
        cells = []
        for metric in ("best_val_ppl", "test_ppl"):
            values = [job.summary[metric] for job in members if job.done and job.summary.get(metric) is not None]
            cells.append(f"{statistics.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})" if values else "-")
        done = sum(job.done for job in members)
        lines.append(f"| {_cell(arm)} | {done}/{len(members)} | {cells[0]} | {cells[1]} |")
    return lines


def _positions(values: list[str]) -> tuple[list[float], bool, list[str]]:
    """x positions for the values of one key: numbers where all are numeric (log axis when they
    span a factor of 8 or more), else categories in first-seen order."""
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        order = list(dict.fromkeys(values))
        return [float(order.index(v)) for v in values], False, order
    positive = min(numbers) > 0
    return numbers, positive and max(numbers) / min(numbers) >= 8, []


def plot_metric_by_key(jobs: list[Job], key: str, keys: list[str], out: Path) -> Path:
    values = [job.overrides.get(key, "-") for job in jobs]
    xs, log_x, categories = _positions(values)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = [(x, job.summary["best_val_ppl"]) for x, job in zip(xs, jobs)
            if job.done and job.summary.get("best_val_ppl") is not None]
    ax.scatter([x for x, _ in done], [y for _, y in done], s=36, color="tab:blue", zorder=3, label="job")
    alone = [k for k in keys if k != SEED_KEY] == [key]
    if alone and done:  # the only factor (seeds aside): join the means so the trend reads at a glance
        by_x: dict[float, list[float]] = {}
        for x, y in done:
            by_x.setdefault(x, []).append(y)
        mean_xs = sorted(by_x)
        ax.plot(mean_xs, [statistics.mean(by_x[x]) for x in mean_xs], color="tab:blue", alpha=0.6,
                label="mean over seeds" if SEED_KEY in keys else None)
    failed = [x for x, job in zip(xs, jobs) if not job.done]
    if failed:  # drawn on the top edge: a failed job has no perplexity, but it was part of the sweep
        ax.scatter(failed, [0.97] * len(failed), transform=ax.get_xaxis_transform(), marker="x",
                   color="tab:red", s=60, zorder=3, label=f"failed ({len(failed)})")
    if categories:
        ax.set_xticks(range(len(categories)), categories, rotation=20 if len(categories) > 4 else 0)
        ax.set_xlim(-0.5, len(categories) - 0.5)
    else:  # limits by hand: the failed markers do not count towards autoscaling
        low, high = min(xs), max(xs)
        if log_x:
            ax.set_xscale("log", base=2 if all(math.log2(x).is_integer() for x in xs) else 10)
            ax.set_xlim(low / (high / low) ** 0.08, high * (high / low) ** 0.08)
        else:
            pad = 0.1 * (high - low) or 0.5 * abs(low) or 1.0
            ax.set_xlim(low - pad, high + pad)
        if len(set(xs)) <= 8:  # few values: tick exactly those
            ax.set_xticks(sorted(set(xs)), [_short(str(v)) for v in sorted(set(xs))])
            ax.xaxis.set_minor_locator(NullLocator())
    ax.margins(y=0.15)  # room on top for the failed markers
    ax.set_xlabel(key)
    ax.set_ylabel("best validation perplexity (lower is better)")
    ax.set_title(f"Best validation perplexity by {key}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path = out / f"best_val_ppl_by_{_slug(key)}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_val_curves(jobs: list[Job], keys: list[str], out: Path) -> Path | None:
    curves = []
    for job in jobs:
        points = [(m["tokens"], m["val_loss"]) for m in job.metrics
                  if m.get("tokens") is not None and m.get("val_loss") is not None]
        if points:
            curves.append((job, points))
    if not curves:
        return None
    arm_keys = [key for key in keys if key != SEED_KEY]
    arms = list(dict.fromkeys(_label(job, arm_keys) for job, _ in curves))
    seeds = list(dict.fromkeys(job.overrides.get(SEED_KEY) for job, _ in curves))
    colors = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20")
    styles = ["-", "--", ":", "-."]
    # The legend goes below the plot: beside it, long override labels would squeeze the axes.
    legend_rows = len(arms) if max(map(len, arms)) > 50 else math.ceil(len(arms) / 2)
    fig, ax = plt.subplots(figsize=(10, 5 + 0.22 * legend_rows))
    labelled = set()
    for job, points in curves:
        arm = _label(job, arm_keys)
        name = arm if len(arms) <= 10 else f"#{job.num}"  # many arms (a search): the table has the values
        label = None if arm in labelled else name + ("" if job.done else " (failed)")
        labelled.add(arm)
        ax.plot([t for t, _ in points], [v for _, v in points], marker="o", markersize=3,
                color=colors(arms.index(arm) % colors.N),
                linestyle=styles[seeds.index(job.overrides.get(SEED_KEY)) % len(styles)], label=label)
    # The untrained step-0 loss (about ln(vocab size)) would squash every later difference into a
    # sliver, so the axis starts from the first evaluation after training began.
    later = [v for _, points in curves for t, v in points if t > 0]
    untrained = [v for _, points in curves for t, v in points if t == 0]
    if later:
        low, high = min(later), max(later)
        pad = 0.05 * (high - low or high)
        ax.set_ylim(low - pad, high + pad)
        if untrained and max(untrained) > high + pad:
            ax.text(0.99, 0.98, f"untrained (0 tokens): up to {max(untrained):.2f}, above the axis",
                    transform=ax.transAxes, ha="right", va="top", fontsize=8, color="0.3")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats/token)")
    title = "Validation loss against training tokens"
    ax.set_title(title + (f"; line style = {SEED_KEY} ({', '.join(map(str, seeds))})" if len(seeds) > 1 else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False,
              ncol=1 if max(map(len, arms)) > 50 else 2)
    fig.tight_layout()
    path = out / "val_loss_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(root: Path, out: Path | None = None) -> Path:
    """Write report.md and the PNGs for the jobs under root; returns the report's path."""
    out = Path(out or root)
    jobs = find_jobs(Path(root))
    if not jobs:
        raise FileNotFoundError(f"no job dirs (summary.json or .hydra/overrides.yaml) under {root}")
    out.mkdir(parents=True, exist_ok=True)
    keys = swept_keys(jobs)
    common = {k: v for k, v in jobs[0].overrides.items() if k not in keys and all(k in j.overrides for j in jobs)}
    n_done = sum(job.done for job in jobs)
    lines = [f"# Report: {root}", "",
             f"{len(jobs)} jobs: {n_done} done, {len(jobs) - n_done} failed or unfinished.", ""]
    if common:
        lines += ["Common overrides: `" + " ".join(f"{k}={v}" for k, v in common.items()) + "`", ""]
    lines += job_table(jobs, keys)
    if SEED_KEY in keys:
        lines += ["", "## Averaged over seeds", ""] + seed_table(jobs, keys)
    plots = [plot_metric_by_key(jobs, key, keys, out) for key in keys if key != SEED_KEY]
    plots.append(plot_val_curves(jobs, keys, out))
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots if p is not None]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmlab.report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a sweep dir or a folder of run dirs")
    parser.add_argument("--out", type=Path, default=None, help="where report.md and the PNGs go (default: DIR)")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.dir, args.out)
    except FileNotFoundError as e:
        print(f"lmlab.report: error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
