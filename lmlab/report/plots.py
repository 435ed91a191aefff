"""The report's PNGs: a metric by each swept value, validation curves, test loss by arm, and the
scaling fit; the reference floors (summary.json's `floors`) as horizontal lines where given."""
from __future__ import annotations

import math
import re
import statistics
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import EngFormatter, FuncFormatter, LogLocator, NullFormatter, NullLocator  # noqa: E402

from lmlab.report import references  # noqa: E402
from lmlab.report.jobs import ALL_JOBS, SEED_KEY, Job, label, short  # noqa: E402
from lmlab.report.scaling import ScalingFit  # noqa: E402
from lmlab.report.stats import LEVEL  # noqa: E402



def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)


def _floor_lines(ax, floors: dict | None, metric: str, low: float, high: float, vertical: bool = False) -> list[float]:
    """The n-gram references as dashed lines where they fall within [low, high] (the unigram, far
    above every curve, would only squash them); returns the values drawn."""
    drawn = []
    for key, entry in references.entries(floors):
        value = entry.get(metric)
        if references.order(key, entry) >= 2 and value is not None and low <= value <= high:
            is_floor = floors["floor"] == key
            (ax.axvline if vertical else ax.axhline)(
                value, color="0.2" if is_floor else "0.6", linestyle="--" if is_floor else ":", linewidth=1.2,
                label=references.name(key) + (" (the floor)" if is_floor else ""))
            drawn.append(value)
    return drawn


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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


# What plot_metric_by_key can draw: summary key -> (axis name, the floors' key, file name). Perplexity
# is per token, so jobs of several tokenizers are drawn in bits/byte.
BY_KEY = {"best_val_ppl": ("best validation perplexity", "val_ppl", "best_val_ppl"),
          "val_bpb": ("best validation bits/byte", "val_bpb", "best_val_bpb")}


def plot_metric_by_key(jobs: list[Job], key: str, keys: list[str], out: Path, floors: dict | None = None,
                       metric: str = "best_val_ppl") -> Path:
    name, floor_metric, filename = BY_KEY[metric]
    values = [job.overrides.get(key, "-") for job in jobs]
    xs, log_x, categories = _positions(values)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = [(x, job.summary[metric]) for x, job in zip(xs, jobs) if job.done and job.summary.get(metric) is not None]
    ax.scatter([x for x, _ in done], [y for _, y in done], s=36, color="tab:blue", zorder=3, label="job")
    alone = [k for k in keys if k != SEED_KEY] == [key]
    if alone and done:  # the only factor (seeds aside): join the means so the trend reads at a glance
        by_x: dict[float, list[float]] = {}
        for x, y in done:
            by_x.setdefault(x, []).append(y)
        mean_xs = sorted(by_x)
        ax.plot(mean_xs, [statistics.mean(by_x[x]) for x in mean_xs], color="tab:blue", alpha=0.6,
                label="mean over seeds" if SEED_KEY in keys else None)
    if done:  # the floors' validation perplexity, near enough to the jobs to share their axis
        ys = [y for _, y in done]
        _floor_lines(ax, floors, floor_metric, min(ys) / 1.5, max(ys) * 1.5)
    failed = [x for x, job in zip(xs, jobs) if not job.done and not job.pruned]
    pruned = [x for x, job in zip(xs, jobs) if job.pruned]
    # Drawn on the top edge: a failed or pruned job has no final perplexity, but it was part of the sweep.
    for name, points, style in (("failed", failed, {"marker": "x", "color": "tab:red"}),
                                ("pruned", pruned, {"marker": "o", "color": "none", "edgecolors": "tab:orange"})):
        if points:
            ax.scatter(points, [0.97] * len(points), transform=ax.get_xaxis_transform(), s=50, zorder=3,
                       label=f"{name} ({len(points)})", **style)
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
            ax.set_xticks(sorted(set(xs)), [short(str(v)) for v in sorted(set(xs))])
            ax.xaxis.set_minor_locator(NullLocator())
    ax.margins(y=0.15)  # room on top for the failed markers
    ax.set_xlabel(key)
    ax.set_ylabel(f"{name} (lower is better)")
    ax.set_title(f"{name[0].upper()}{name[1:]} by {key}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, out / f"{filename}_by_{_slug(key)}.png")


def plot_val_curves(jobs: list[Job], keys: list[str], out: Path, floors: dict | None = None,
                    filename: str = "val_loss_curves.png", corpus: str = "") -> Path | None:
    curves = []
    for job in jobs:
        points = [(m["tokens"], m["val_loss"]) for m in job.metrics
                  if m.get("tokens") is not None and m.get("val_loss") is not None]
        if points:
            curves.append((job, points))
    if not curves:
        return None
    varied = [key for key in keys if key != SEED_KEY]  # the LR too: each LR of a grid its own curve
    name_of = {id(job): label(job, varied) if varied else ALL_JOBS for job, _ in curves}
    arms = list(dict.fromkeys(name_of.values()))
    seeds = list(dict.fromkeys(job.overrides.get(SEED_KEY) for job, _ in curves))
    colors = plt.get_cmap("tab10" if len(arms) <= 10 else "tab20")
    styles = ["-", "--", ":", "-."]
    # The legend goes below the plot: beside it, long override labels would squeeze the axes.
    legend_rows = len(arms) if max(map(len, arms)) > 50 else math.ceil(len(arms) / 2)
    fig, ax = plt.subplots(figsize=(10, 5 + 0.22 * legend_rows))
    labelled = set()
    for job, points in curves:
        arm = name_of[id(job)]
        name = arm if len(arms) <= 10 else f"#{job.num}"  # many arms (a search): the table has the values
        ended = "" if job.done else " (pruned)" if job.pruned else " (failed)"
        line_label = None if arm in labelled else name + ended
        labelled.add(arm)
        ax.plot([t for t, _ in points], [v for _, v in points], marker="o", markersize=3,
                color=colors(arms.index(arm) % colors.N),
                linestyle=styles[seeds.index(job.overrides.get(SEED_KEY)) % len(styles)], label=line_label)
    # The untrained step-0 loss (about ln(vocab size)) would squash every later difference into a
    # sliver, so the axis starts from the first evaluation after training began; with a single
    # evaluation after it there is no curve to show but the one from step 0, drawn whole.
    later = [v for _, points in curves for t, v in points if t > 0]
    later_tokens = sorted({t for _, points in curves for t, _ in points if t > 0})
    untrained = [v for _, points in curves for t, v in points if t == 0]
    if len(later_tokens) >= 2:
        low, high = min(later), max(later)
        pad = 0.05 * (high - low or high)
        drawn = _floor_lines(ax, floors, "val_loss", low - 4 * pad, high + pad)
        ax.set_ylim(min([low, *drawn]) - pad, high + pad)
        if untrained and max(untrained) > high + pad:
            ax.text(0.99, 0.98, f"untrained (0 tokens): up to {max(untrained):.2f}, above the axis",
                    transform=ax.transAxes, ha="right", va="top", fontsize=8, color="0.3")
            # The step-0 points are off the axis, so the x-axis starts where the drawn points do.
            span = later_tokens[-1] - later_tokens[0]
            ax.set_xlim(later_tokens[0] - 0.05 * span, later_tokens[-1] + 0.05 * span)
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats/token)")
    title = "Validation loss against training tokens" + (f" ({corpus})" if corpus else "")
    ax.set_title(title + (f"; line style = {SEED_KEY} ({', '.join(map(str, seeds))})" if len(seeds) > 1 else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False,
              ncol=1 if max(map(len, arms)) > 50 else 2)
    return _save(fig, out / filename)


def plot_arms(arms: dict[str, list[float]], baseline: str, out: Path, floors: dict | None = None,
              filename: str = "test_loss_by_arm.png") -> Path:
    """Test loss by arm: each seed a dot, the mean and its +-1 SD bar, the floors as lines."""
    names = list(arms)
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.42 * len(names)))
    for i, name in enumerate(names):
        values = arms[name]
        color = "tab:orange" if name == baseline else "tab:blue"
        ax.scatter(values, [i] * len(values), s=18, color=color, alpha=0.6, zorder=3)
        if len(values) > 1:  # one seed has no spread: its dot alone
            ax.errorbar(statistics.fmean(values), i, xerr=statistics.stdev(values), fmt="|", markersize=14,
                        color=color, capsize=4, zorder=4)
    losses = [v for values in arms.values() for v in values]
    if losses:
        spread = max(losses) - min(losses) or 0.1
        _floor_lines(ax, floors, "test_loss", min(losses) - 3 * spread, max(losses) + 3 * spread, vertical=True)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test loss (nats/token, lower is better); bar: mean +- 1 SD over seeds")
    ax.set_title(textwrap.fill(f"Test loss by arm (baseline: {baseline})", 80), fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)
    return _save(fig, out / filename)


def plot_scaling(n_params: list[float], losses: list[float], fit: ScalingFit, out: Path,
                 floors: dict | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(n_params, losses, s=30, color="tab:blue", zorder=3, label="run (test loss)")
    grid = np.geomspace(min(fit.sizes), fit.next_n, 100)
    ax.plot(grid, fit.predict(grid), color="tab:blue", alpha=0.7,
            label=f"fit {fit.form}, alpha = {fit.params['alpha']:.3f}")
    ax.errorbar([fit.next_n], [fit.prediction], yerr=[[fit.prediction - fit.low], [fit.high - fit.prediction]],
                fmt="D", color="tab:green", capsize=4, label=f"next size: {LEVEL:.0%} prediction interval")
    low, high = min([*losses, fit.low]), max([*losses, fit.high])
    _floor_lines(ax, floors, "test_loss", low - 0.5 * (high - low), high + 0.5 * (high - low))
    ax.set_xscale("log")
    ticks = [*fit.sizes, fit.next_n]  # the sizes themselves: log-scale minor labels would overlap
    ax.set_xticks(ticks, [f"{n / 1e6:.3g}M" for n in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("test loss (nats/token)")
    ax.set_title("Loss against model size at a fixed token budget")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, out / "scaling_fit.png")


def plot_isoflop(budgets: dict[str, tuple[dict[float, float], tuple | None]], out: Path) -> Path:
    """Mean test loss against size, one curve per FLOPs budget, with each fitted parabola (in ln N)
    and its optimum (compute.parabola_optimum's (N*, loss, parabola))."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("viridis")
    for i, (budget, (by_size, optimum)) in enumerate(budgets.items()):
        color = colors(0.85 * i / max(1, len(budgets) - 1))  # viridis' last yellow is too faint
        ax.plot(list(by_size), list(by_size.values()), marker="o", color=color, label=f"{budget} FLOPs")
        if optimum is not None:
            sizes = np.geomspace(min(by_size), max(by_size), 50)
            ax.plot(sizes, optimum[2](np.log(sizes)), color=color, alpha=0.4, linestyle="--")
            ax.scatter([optimum[0]], [optimum[1]], marker="*", s=120, color=color, zorder=4)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("mean test loss (nats/token)")
    ax.set_title("Iso-FLOP curves: loss against size at each budget (star: parabola's optimum)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, out / "isoflop.png")


def plot_position_loss(curves: dict[str, list[float]], out: Path) -> Path:
    """Mean test loss at each position of the scoring window, one line per arm: a longer context
    is used where its curve keeps falling past the shorter windows' length."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    for i, (arm, losses) in enumerate(curves.items()):
        ax.plot(range(1, len(losses) + 1), losses, color=colors(i % colors.N), linewidth=1.2, label=arm)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel("position in the window (tokens of context + 1)")
    ax.set_ylabel("mean test loss (nats/token)")
    ax.set_title("Test loss by position in the window (mean over seeds)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, out / "loss_by_position.png")


def plot_trials(jobs: list[Job], keys: list[str], log_x: dict[str, bool], best: Job, out: Path,
                objective: str) -> Path | None:
    """A search's objective against each searched key, one panel a key on the scale it was sampled
    on: done trials as dots, the best as a star, pruned trials (their best when stopped) as rings,
    failed ones as crosses on the top edge."""
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4.2), squeeze=False, sharey=True)
    for ax, key in zip(axes[0], keys):
        kinds = {"done": ([], "o", "tab:blue", True), "pruned": ([], "o", "tab:orange", False)}
        failed = []
        for job in jobs:
            if key not in job.overrides:
                continue
            x, y = float(job.overrides[key]), job.summary.get(objective)
            if (job.done or job.pruned) and y is not None:
                kinds["done" if job.done else "pruned"][0].append((x, y))
            else:
                failed.append(x)
        for name, (points, marker, color, filled) in kinds.items():
            if points:
                ax.scatter(*zip(*points), s=36, marker=marker, zorder=3, label=f"{name} ({len(points)})",
                           color=color if filled else "none", edgecolors=color)
        if failed:
            ax.scatter(failed, [0.97] * len(failed), transform=ax.get_xaxis_transform(), marker="x", color="tab:red",
                       s=50, zorder=3, label=f"failed ({len(failed)})")
        if key in best.overrides:
            ax.scatter([float(best.overrides[key])], [best.summary[objective]], marker="*", s=220, color="tab:green",
                       zorder=4, label=f"best (trial {best.num})")
        xs = [float(job.overrides[key]) for job in jobs if key in job.overrides]
        low, high = min(xs), max(xs)
        if log_x[key]:  # ticks at 1, 2 and 5 of each decade, labelled plainly: minor labels would overprint
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlim(low / (high / low) ** 0.08, high * (high / low) ** 0.08)
        else:  # by hand: the failed markers on the top edge do not count towards autoscaling
            pad = 0.08 * (high - low) or 0.5 * abs(low) or 1.0
            ax.set_xlim(low - pad, high + pad)
        ax.set_xlabel(key + (" (log scale, as sampled)" if log_x[key] else ""))
        ax.margins(y=0.15)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("best validation loss (nats/token, lower is better)")
    axes[0][0].legend(loc="best", fontsize=8)
    fig.suptitle(f"Objective by searched value ({len(jobs)} trials)")
    return _save(fig, out / "objective_by_searched_value.png")
