"""The declared analysis's section of the report (a row per claim: effect, simultaneous interval,
verdict, and what an undecided claim would need), and `--plan`: stage 2 with the seeds each arm
needs for its claims to be decided at the margin, fixed before stage 2 runs."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from lmlab.report.analysis import MAX_SEEDS, Analysis, Claim, Contrast, contrast, fit, seeds_needed, verdict
from lmlab.report.sections import Row, cell, spread
from lmlab.report.stats import compare, holm

NEW_SEEDS_FROM = 0  # stage 2 runs seeds 0 .. n - 1 at each arm's chosen LR, the ones not run yet


@dataclass
class Decision:
    claim: Claim
    arm: Row | None  # None: no such arm in the report
    against: Row | None
    contrast: Contrast | str | None = None  # the blocked model's, or why none
    low: float | None = None  # the simultaneous interval
    high: float | None = None
    verdict: str = "cannot tell"
    seeds: int | None = None  # seeds per arm needed to decide at the margin (undecided rows)


def _row(rows: list[Row], arm: str) -> Row | None:
    """The row of the arm a claim names: by its name, or by the swept value that names it (size: variant=size)."""
    return next((row for row in rows if arm == row.arm.name
                 or arm in (part.split("=", 1)[-1] for part in row.arm.name.split(", "))), None)


def decide(analysis: Analysis, rows: list[Row], baseline: str) -> list[Decision]:
    """Every declared claim decided by the blocked model of its metric over all the arms' runs."""
    decisions = [Decision(claim, _row(rows, claim.arm), _row(rows, baseline if claim.against == "baseline"
                                                              else claim.against)) for claim in analysis.claims]
    groups = {row.arm.name: group for group, arms in analysis.groups.items() for arm in arms
              if (row := _row(rows, arm)) is not None}
    models = {}
    for d in decisions:
        if d.arm is None or d.against is None:
            d.contrast = f"no arm `{d.claim.arm if d.arm is None else d.claim.against}` in this report"
            continue
        metric = d.claim.metric
        if metric not in models:
            runs = [(row.arm.name, job.seed, job.metric(metric)) for row in rows for job in row.arm.chosen
                    if job.done and job.metric(metric) is not None]
            models[metric] = fit(runs, groups) if runs else f"no run has `{metric}`"
        model = models[metric]
        if isinstance(model, str) or d.arm.arm.name not in model["arms"] or d.against.arm.name not in model["arms"]:
            d.contrast = model if isinstance(model, str) else "the arm shares no seed with the others"
            continue
        c = d.contrast = contrast(model, d.arm.arm.name, d.against.arm.name)
        half = analysis.critical(c.df) * c.se
        d.low, d.high = c.effect - half, c.effect + half
        d.verdict = verdict(analysis, d.claim, d.low, d.high)
        if d.verdict == "cannot tell":
            d.seeds = seeds_needed(analysis, d.claim, c)
    return decisions


def claims_section(analysis: Analysis, rows: list[Row], baseline: str) -> list[str]:
    """The declared analysis, said in words, and a row per claim."""
    decisions = decide(analysis, rows, baseline)
    tested = [d for d in decisions if isinstance(d.contrast, Contrast)]
    adjusted = dict(zip(map(id, tested), holm([d.contrast.p() for d in tested])))
    paired = [_paired(d) for d in decisions]
    with_p = [i for i, c in enumerate(paired) if c is not None and c.p is not None]
    paired_holm = dict(zip(with_p, holm([paired[i].p for i in with_p])))
    lines = _explanation(analysis) + [
        "| claim | arm vs | metric | effect (blocked model) | simultaneous CI | p (Holm) | paired t [95% CI] (Holm) "
        "| verdict | detectable effect | seeds needed at δ |", "|---|---|---|---:|---:|---|---|---|---:|---:|"]
    for i, d in enumerate(decisions):
        t = paired[i]
        t_cell = "-" if t is None else (f"{t.diff:+.3f} [{t.low:+.3f}, {t.high:+.3f}] (p {t.p:.2g}, Holm "
                                        f"{paired_holm[i]:.2g})" if t.low is not None else cell(t.verdict))
        if isinstance(d.contrast, Contrast):
            c, undecided = d.contrast, d.verdict == "cannot tell"
            cells = [f"{c.effect:+.4f}", f"[{d.low:+.4f}, {d.high:+.4f}]", f"{c.p():.2g} ({adjusted[id(d)]:.2g})",
                     d.verdict, f"{analysis.detectable(c.se, c.df):.4f}",
                     ("-" if not undecided else f"more than {MAX_SEEDS}" if d.seeds is None else str(d.seeds))]
        else:
            cells = ["-", "-", "-", f"cannot tell: {d.contrast}", "-", "-"]
        claim = d.claim
        lines.append(f"| {cell(claim.claim)} | `{claim.arm}` vs `{claim.against}` ({claim.direction}) | "
                     f"{claim.metric} | " + " | ".join(cells[:3] + [t_cell] + cells[3:]) + " |")
    return lines + [""]


def _explanation(analysis: Analysis) -> list[str]:
    m, level = len(analysis.claims), analysis.level
    groups = "".join(f"{group}: {', '.join(arms)}; " for group, arms in analysis.groups.items())
    return ["## The declared analysis", "",
            f"Declared in the sweep's config before any run (`rootcause.analysis`): {m} claims, the only family "
            f"counted; margin δ = {analysis.margin:g} (a claim's own where it gives one). Deciding analysis, per "
            "metric: one linear model of every arm's runs at its chosen LR, value ~ arm + seed (the seed a block), "
            f"with a residual variance per variance group ({groups}every other arm: one group), weighted least "
            f"squares (statsmodels). Intervals: simultaneous at {level:.0%} over the {m} claims (each at "
            f"1 - {1 - level:g}/{m}: one that leaves out 0 is a rejection by Holm's procedure too). Verdict: "
            "supported (the interval beyond 0 the claimed way), contradicted (beyond 0 the other way), not "
            "supported (inside ±δ: two one-sided tests), cannot tell. Beside it, the paired t on the seeds both "
            f"arms ran, Holm over the claims. Every row: the smallest effect the design detects with "
            f"{analysis.power:.0%} power; undecided rows: the seeds per arm that would decide at δ.", ""]


def _paired(d: Decision):
    """The claim's paired t (or Welch) alone, on its metric; None where an arm or the metric is missing."""
    if d.arm is None or d.against is None:
        return None
    arm, against = spread(d.arm.arm.chosen, d.claim.metric), spread(d.against.arm.chosen, d.claim.metric)
    return compare(arm, against) if arm.n and against.n else None


def declared(rows: list[Row]) -> Analysis | None:
    """The analysis the baseline's jobs' config declares (rootcause.analysis), if any."""
    return next((Analysis.declared(job.config.get("rootcause")) for job in rows[0].arm.chosen if job.config), None)


def plan(groups: list[tuple[str, list[Row]]], max_seeds: int) -> tuple[dict[str, list[str]], list[str]]:
    """Arm name -> the seeds it should have at its chosen LR for its claims to be decided at the
    margin with the declared power (the most any of its claims needs, capped at max_seeds; never
    fewer than it ran), from a pilot: `groups` as write.comparisons gives them; and a line per
    claim the pilot cannot plan for, saying why."""
    seeds: dict[str, list[str]] = {}
    notes = []
    for corpus, rows in groups:
        analysis = declared(rows)
        if analysis is None:
            raise ValueError(f"the jobs of {corpus or 'the sweep'} declare no analysis (rootcause.analysis): "
                             "nothing to plan")
        need = {row.arm.name: row.test.n for row in rows}
        lr, values = pilot_values(rows[0], "test_loss")
        if lr != rows[0].arm.lr:
            notes.append(f"the spread over seeds where no blocked model has one: the baseline's {len(values)} seeds "
                         f"at LR {lr} (its chosen LR {rows[0].arm.lr} ran fewer)")
        for d in decide(analysis, rows, rows[0].arm.name):
            n = _pilot_seeds(analysis, d, rows[0]) if d.arm and d.against else f"{d.contrast}"
            if isinstance(n, str):
                notes.append(f"{d.claim.claim}: not planned: {n}")
                continue
            for row in (d.arm, d.against):
                if n != 0:
                    need[row.arm.name] = max(need[row.arm.name], min(n or max_seeds, max_seeds))
        seeds.update({name: [str(NEW_SEEDS_FROM + i) for i in range(n)] for name, n in need.items()})
    return seeds, notes


def pilot_values(baseline: Row, metric: str) -> tuple[str | None, list[float]]:
    """The baseline's `metric` over its seeds at its chosen LR; where fewer than 2 seeds ran there,
    over those at the LR of its grid that ran the most (a noise pilot run before stage 1 chose the
    LR: the plan reads the spread over seeds from it, not the level); and that LR."""
    pools = [(baseline.arm.lr, baseline.arm.chosen)] + [(point.lr, point.jobs) for point in baseline.arm.grid]
    runs = [(lr, [job.metric(metric) for job in jobs if job.done and job.metric(metric) is not None])
            for lr, jobs in pools]
    return runs[0] if len(runs[0][1]) >= 2 else max(runs, key=lambda run: len(run[1]))


def _pilot_seeds(analysis: Analysis, d: Decision, baseline: Row) -> int | None | str:
    """Seeds per arm for one claim (0: decided; None: more than analysis.MAX_SEEDS): from the
    blocked model where it has a residual variance, else from the pilot's baseline spread over
    seeds (a difference of two runs: sqrt(2) x it); or why neither is there."""
    if isinstance(d.contrast, Contrast):
        return 0 if d.verdict != "cannot tell" else d.seeds
    values = pilot_values(baseline, d.claim.metric)[1]
    if len(values) < 2 or statistics.stdev(values) == 0:
        return f"no spread of {d.claim.metric} over the baseline's seeds (the pilot needs it over several)"
    sd = math.sqrt(2) * statistics.stdev(values)
    return seeds_needed(analysis, d.claim, Contrast(0.0, sd, 1.0, 1))
