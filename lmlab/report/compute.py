"""Loss against compute: the scaling fit over model sizes at one token budget, and, where
`train.max_flops` is swept (sizes x FLOPs budgets), the best model size for each budget."""
from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np

from lmlab.report import plots
from lmlab.report.jobs import Job, arm_keys, exact, short
from lmlab.report.scaling import fit_scaling
from lmlab.report.stats import LEVEL

# Sweeping these changes the model's size (the `model` group changes its context too, which the
# fit's section says). The d_ff ratio changes the parameter count too, but a d_ff sweep asks about
# the shape at one width and depth, not about size: it gets no scaling law.
SIZE_KEYS = ("model", "model.d_model", "model.n_layers", "model.n_heads")
BUDGET_KEY = "train.max_flops"
MIN_PARABOLA_SIZES = 3


def _size(job: Job) -> float | None:
    return job.summary.get("n_params_non_embedding") or job.summary.get("n_params")


def scaling_section(jobs: list[Job], keys: list[str], out: Path, floors: dict | None) -> tuple[list[str], Path | None]:
    lines = ["## Scaling: loss against model size", ""]
    others = [key for key in arm_keys(keys) if key not in SIZE_KEYS]
    if others:
        return lines + [f"No fit: the sweep varies {', '.join(others)} besides the model's size.", ""], None
    points = [(job.summary["n_params_non_embedding"], job.summary["test_loss"]) for job in jobs
              if job.done and job.summary.get("n_params_non_embedding") and job.summary.get("test_loss") is not None]
    tokens = [job.tokens for job in jobs if job.done and job.tokens]
    if tokens and max(tokens) > 1.01 * min(tokens):
        return lines + [f"No fit: the jobs saw {min(tokens):,} to {max(tokens):,} training tokens, not one budget.",
                        ""], None
    fit = fit_scaling(*zip(*points)) if points else "no job is done"
    if isinstance(fit, str):
        return lines + [f"No fit: {fit}.", ""], None
    params = ", ".join(f"{name} = {value:.4g} ± {fit.errors[name]:.2g}" for name, value in fit.params.items())
    lines += [f"L(N) = {fit.form} over non-embedding parameters N (in millions), test loss of {fit.n_points} "
              f"runs at {len(fit.sizes)} sizes ({', '.join(f'{n:,.0f}' for n in fit.sizes)}) and "
              f"{min(tokens):,} training tokens each: {params} (± one standard error).", ""]
    if fit.note:
        lines += [fit.note + ".", ""]
    if "model" in keys:
        lines += ["The `model` group sets each model's context length too, so the fit mixes its effect in.", ""]
    lines += [f"Extrapolated to the next size, N = {fit.next_n:,.0f} (the sweep's geometric step past its "
              f"largest): {fit.prediction:.3f} nats/token, {LEVEL:.0%} prediction interval for one run "
              f"[{fit.low:.3f}, {fit.high:.3f}].", ""]
    return lines, plots.plot_scaling(*zip(*points), fit, out, floors)


def parabola_optimum(sizes: list[float], losses: list[float]) -> tuple[float, float, np.poly1d] | str:
    """The minimum of loss = a (ln N)^2 + b ln N + c fitted by least squares: (N*, its loss, the
    parabola in ln N), or why none."""
    parabola = np.poly1d(np.polyfit(np.log(sizes), losses, 2))
    a, b, _ = parabola.coeffs
    if a <= 0:
        return "the fitted parabola has no minimum (it opens downward)"
    return float(np.exp(-b / (2 * a))), float(parabola(-b / (2 * a))), parabola


def isoflop_section(jobs: list[Job], keys: list[str], out: Path) -> tuple[list[str], Path | None]:
    """The best size per FLOPs budget: the lowest mean test loss over seeds, and with 3 sizes or
    more the optimum of a parabola in log N through them (interpolates between the sizes run)."""
    lines = ["## Iso-FLOP: the best model size for each compute budget", ""]
    others = [key for key in arm_keys(keys) if key not in (*SIZE_KEYS, BUDGET_KEY)]
    if others:
        return lines + [f"No iso-FLOP analysis: the sweep varies {', '.join(others)} besides size and budget.",
                        ""], None
    curves: dict[object, dict[float, list[float]]] = {}
    names: dict[object, str] = {}
    for job in jobs:
        if job.done and _size(job) and job.summary.get("test_loss") is not None:
            typed = job.overrides.get(BUDGET_KEY, "none")
            names.setdefault(exact(typed), short(typed))
            curves.setdefault(exact(typed), {}).setdefault(float(_size(job)), []).append(job.summary["test_loss"])
    lines += ["| FLOPs budget | sizes run (N) | best size run | its mean test nats/token | "
              "parabola in log N: optimum N* (its loss) |", "|---:|---|---:|---:|---|"]
    drawn = {}
    for budget in sorted(curves, key=lambda b: (not isinstance(b, float), str(b) if not isinstance(b, float) else b)):
        by_size = {n: statistics.fmean(losses) for n, losses in sorted(curves[budget].items())}
        best = min(by_size, key=by_size.get)
        optimum = (parabola_optimum(list(by_size), list(by_size.values())) if len(by_size) >= MIN_PARABOLA_SIZES
                   else f"not fitted: {len(by_size)} sizes (a parabola needs {MIN_PARABOLA_SIZES})")
        fit = optimum if isinstance(optimum, str) else f"{optimum[0]:,.0f} ({optimum[1]:.3f})" + (
            "" if min(by_size) <= optimum[0] <= max(by_size) else ", outside the sizes run")
        drawn[names[budget]] = (by_size, None if isinstance(optimum, str) else optimum)
        lines.append(f"| {names[budget]} | {', '.join(f'{n:,.0f}' for n in by_size)} | {best:,.0f} | "
                     f"{by_size[best]:.3f} | {fit} |")
    lines += ["", "N counts non-embedding parameters; each budget's jobs stop at that many training FLOPs "
              "(`train.max_flops`). The best size run is the lowest mean test loss over seeds; the parabola's "
              "optimum interpolates between the sizes run (read it only where it falls inside them).", ""]
    return lines, plots.plot_isoflop(drawn, out) if drawn else None


def compute_section(jobs: list[Job], keys: list[str], out: Path, floors: dict | None,
                    n_corpora: int) -> tuple[list[str], Path | None]:
    """The scaling fit where sizes are swept at one budget, the iso-FLOP section where budgets are;
    neither across corpora or tokenizers (`n_corpora` > 1)."""
    if BUDGET_KEY not in keys and not any(key in SIZE_KEYS for key in keys):
        return [], None
    if n_corpora > 1:
        return ["## Loss against model size and compute", "", "No fit: the jobs' nats/token are measured in "
                "several corpora or tokenizers, which one curve cannot compare.", ""], None
    return isoflop_section(jobs, keys, out) if BUDGET_KEY in keys else scaling_section(jobs, keys, out, floors)
