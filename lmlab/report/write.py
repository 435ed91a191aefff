"""report.md: the job table, the arms against the baseline and the floor, the scaling fit, the
last samples of each arm, and the plots."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from lmlab.report import plots
from lmlab.report.jobs import SEED_KEY, Job, arm_keys, arms, baseline_arm, find_jobs, label, swept_keys
from lmlab.report.scaling import fit_scaling
from lmlab.report.stats import LEVEL, Spread, compare, needs_more_seeds

METRICS = {"test_loss": ("test nats/token", ".3f"), "test_word_ppl": ("test word ppl", ".1f"),
           "test_bpb": ("test bits/byte", ".4f")}
# Sweeping these changes the model's size (the `model` group changes its context too, which the
# fit's section says).
SIZE_KEYS = ("model", "model.d_model", "model.n_layers", "model.n_heads", "model.d_ff_ratio")


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _cell(text: str, limit: int = 200) -> str:
    text = text.replace("\n", " ")
    text = text if len(text) <= limit else text[:limit - 3] + "..."  # the full text is in summary.json
    return text.replace("|", "\\|")


def _spread_cell(spread: Spread, spec: str) -> str:
    if not spread.n:
        return "-"
    return f"{spread.mean:{spec}}" + (f" ± {spread.sd:{spec}}" if spread.sd is not None else " (1 seed)")


def job_table(jobs: list[Job], keys: list[str]) -> list[str]:
    lines = ["| # | overrides | n_params | tokens | best val ppl | test ppl | tokens/s | status |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for job in jobs:
        s = job.summary
        lines.append(f"| {job.num} | {_cell(label(job, keys))} | {_fmt(s.get('n_params'), ',')} | "
                     f"{_fmt(job.tokens, ',')} | {_fmt(s.get('best_val_ppl'), '.2f')} | "
                     f"{_fmt(s.get('test_ppl'), '.2f')} | {_fmt(s.get('tokens_per_s'), ',.0f')} | "
                     f"{_cell(job.status, limit=100)} |")
    return lines


def _spread(members: list[Job], metric: str) -> Spread:
    return Spread([job.summary[metric] for job in members if job.done and job.summary.get(metric) is not None])


def shared_floors(jobs: list[Job]) -> dict | None:
    """The floors every done job shares (one tokenizer, one corpus), else None."""
    distinct = {json.dumps(job.summary["floors"], sort_keys=True) for job in jobs
                if job.done and job.summary.get("floors")}
    return json.loads(distinct.pop()) if len(distinct) == 1 else None


def arms_section(groups: dict[str, list[Job]], baseline: str, floors: dict | None) -> list[str]:
    base = _spread(groups[baseline], "test_loss")
    lines = [f"Baseline: `{baseline}`. Each cell is the mean ± the sample standard deviation over the arm's "
             f"done seeds (one seed: no spread, shown as such). Δ is the arm's mean test loss minus the "
             f"baseline's, with Welch's {LEVEL:.0%} confidence interval; distinguishable = the interval "
             "excludes 0 (Welch's t-test, which does not assume equal spreads and widens the interval as "
             "far as 2 or 3 seeds demand). Below the floor = the better bigram's test loss minus the arm's "
             "(positive: the model learned more than bigram statistics).", "",
             "| arm | seeds done | " + " | ".join(name for name, _ in METRICS.values())
             + f" | Δ nats/token vs baseline [{LEVEL:.0%} CI] | distinguishable? | below the floor by (nats/token) |",
             "|---|---:|" + "---:|" * len(METRICS) + "---:|---|---:|"]
    more_seeds = []
    for arm in [baseline, *(name for name in groups if name != baseline)]:  # the baseline first
        members = groups[arm]
        losses = _spread(members, "test_loss")
        cells = [_spread_cell(_spread(members, metric), spec) for metric, (_, spec) in METRICS.items()]
        margins = Spread([job.floor["test_loss"] - job.summary["test_loss"] for job in members
                          if job.done and job.floor and job.summary.get("test_loss") is not None])
        if arm == baseline or not losses.n or not base.n:
            delta, verdict = "-", "(baseline)" if arm == baseline else "-"
        else:
            c = compare(losses, base)
            delta = f"{c.diff:+.3f}" + (f" [{c.low:+.3f}, {c.high:+.3f}]" if c.low is not None else "")
            verdict = c.verdict
            if needs_more_seeds(losses, base):
                more_seeds.append(arm)
        done = sum(job.done for job in members)
        lines.append(f"| {_cell(arm)} | {done}/{len(members)} | " + " | ".join(cells)
                     + f" | {delta} | {verdict} | {_spread_cell(margins, '.3f')} |")
    if floors:
        for name in ("unigram", "interpolated_bigram", "kneser_ney_bigram"):
            f = floors[name]
            delta = f"{f['test_loss'] - base.mean:+.3f}" if base.n else "-"
            cells = [_fmt(f.get(metric), spec) for metric, (_, spec) in METRICS.items()]
            tag = " (the floor)" if name == floors["floor"] else ""
            lines.append(f"| {plots.FLOOR_NAMES[name]}{tag}: counted on train, tuned on validation | - | "
                         + " | ".join(cells) + f" | {delta} | - | - |")
    lines.append("")
    if floors and base.n:
        margin = floors[floors["floor"]]["test_loss"] - base.mean
        spread = (f"{margin / base.sd:.0f} x its seed spread, SD {base.sd:.4f} over {base.n} seeds" if base.sd
                  else "1 seed, no spread to compare the margin with")
        name = plots.FLOOR_NAMES[floors["floor"]]
        verdict = (f"beats the floor ({name}) on test by {margin:.3f} nats/token" if margin > 0 else
                   f"does not beat the floor ({name}): it is {-margin:.3f} nats/token above it on test")
        lines += [f"The baseline {verdict} ({spread}).", ""]
    elif not floors:
        lines += ["No floor row: the done jobs carry no `floors` in summary.json, or differ in tokenizer or data.", ""]
    if more_seeds or base.n < 3:
        lines += ["Short of 3 seeds, which the baseline needs, and every arm within twice the larger spread of "
                  "it or without a spread to judge by: "
                  + ", ".join(f"`{a}`" for a in ([baseline] if base.n < 3 else []) + more_seeds) + ".", ""]
    return lines


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


def samples_section(groups: dict[str, list[Job]]) -> list[str]:
    """Each arm's text at its last evaluation (first seed's run), from samples.jsonl."""
    lines = ["## Samples at the last evaluation", "", "| arm | prompt | continuation |", "|---|---|---|"]
    for arm, members in groups.items():
        path = next((job.path / "samples.jsonl" for job in members if (job.path / "samples.jsonl").is_file()), None)
        if path is None:
            continue
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        last = max(row["step"] for row in rows)
        lines += [f"| {_cell(arm)} | {_cell(repr(row['prompt']))} | {_cell(repr(row['text']), 400)} |"
                  for row in rows if row["step"] == last]
    return lines + [""] if len(lines) > 4 else []


def write_report(root: Path, out: Path | None = None, baseline: str | None = None) -> Path:
    """Write report.md and the PNGs for the jobs under root; returns the report's path."""
    out = Path(out or root)
    jobs = find_jobs(Path(root))
    if not jobs:
        raise FileNotFoundError(f"no job dirs (summary.json or .hydra/overrides.yaml) under {root}")
    out.mkdir(parents=True, exist_ok=True)
    keys = swept_keys(jobs)
    common = {k: v for k, v in jobs[0].overrides.items() if k not in keys and all(k in j.overrides for j in jobs)}
    n_done = sum(job.done for job in jobs)
    floors = shared_floors(jobs)
    groups = arms(jobs, keys)
    base = baseline_arm(groups, keys, baseline)
    lines = [f"# Report: {root}", "",
             f"{len(jobs)} jobs: {n_done} done, {len(jobs) - n_done} failed or unfinished.", ""]
    if common:
        lines += ["Common overrides: `" + " ".join(f"{k}={v}" for k, v in common.items()) + "`", ""]
    lines += job_table(jobs, keys)
    lines += ["", "## Arms against the baseline and the floor", ""] + arms_section(groups, base, floors)
    png = [plots.plot_arms({arm: _spread(members, "test_loss").values for arm, members in groups.items()},
                           base, out, floors)]
    if any(key in SIZE_KEYS for key in keys):
        section, scaling_png = scaling_section(jobs, keys, out, floors)
        lines += section
        png.append(scaling_png)
    lines += samples_section(groups)
    png += [plots.plot_metric_by_key(jobs, key, keys, out, floors) for key in keys if key != SEED_KEY]
    png.append(plots.plot_val_curves(jobs, keys, out, floors))
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in png if p is not None]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmlab.report",
                                     description="A table, statistics and plots of every job under DIR, offline.")
    parser.add_argument("dir", type=Path, help="a sweep dir or a folder of run dirs")
    parser.add_argument("--out", type=Path, default=None, help="where report.md and the PNGs go (default: DIR)")
    parser.add_argument("--baseline", default=None,
                        help="the arm the others are compared with, as the report labels it (e.g. 'variant=baseline'); "
                             "default: the arm with a swept value `baseline`, else the first")
    parser.add_argument("--wandb", action="store_true",
                        help="also save a W&B report comparing the arms (online; pip install -e '.[wandb-views]')")
    args = parser.parse_args(argv)
    from lmlab.report.wandb_views import save_view

    try:
        report = write_report(args.dir, args.out, args.baseline)
        view_url = save_view(args.dir) if args.wandb else None
    except (FileNotFoundError, ValueError) as e:
        print(f"lmlab.report: error: {e}", file=sys.stderr)
        return 2
    print(report)
    if view_url:
        print(f"W&B report: {view_url}")
    return 0
