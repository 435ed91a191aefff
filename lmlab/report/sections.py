"""The report's comparison sections: each arm (at its chosen LR) against the baseline and the n-gram
references, the LR each arm got, and the loss by window position."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from lmlab.report import references
from lmlab.report.jobs import Job
from lmlab.report.select import Arm
from lmlab.report.stats import (LEVEL, Comparison, Spread, aligned_documents, compare, document_bootstrap,
                                needs_more_seeds)

METRICS = {"test_loss": ("test nats/token", ".3f"), "test_word_ppl": ("test word ppl", ".1f"),
           "test_bpb": ("test bits/byte", ".4f")}


def fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def cell(text: str, limit: int = 200) -> str:
    text = text.replace("\n", " ")
    text = text if len(text) <= limit else text[:limit - 3] + "..."  # the full text is in summary.json
    return text.replace("|", "\\|")


def spread_cell(spread: Spread, spec: str) -> str:
    if not spread.n:
        return "-"
    return f"{spread.mean:{spec}}" + (f" ± {spread.sd:{spec}}" if spread.sd is not None else " (1 seed)")


def spread(members: list[Job], metric: str) -> Spread:
    done = [job for job in members if job.done and job.metric(metric) is not None]
    return Spread([job.metric(metric) for job in done], [job.seed for job in done])


def shared_floors(jobs: list[Job]) -> dict | None:
    """The floors every done job shares (one tokenizer, one corpus), else None."""
    distinct = {json.dumps(job.summary["floors"], sort_keys=True) for job in jobs
                if job.done and job.summary.get("floors")}
    return json.loads(distinct.pop()) if len(distinct) == 1 else None


@dataclass
class Row:
    arm: Arm
    test: Spread
    comparison: Comparison | None = None  # None for the baseline, or where either has no done seed
    documents: tuple[float, float] | str | None = None  # the interval over seeds and documents, or why none


def _doc_scores(members: list[Job]) -> dict | None:
    """seed -> test_scores.json's content, of each done job; None where a done job has no scores file."""
    done = [job for job in members if job.done and job.summary.get("test_loss") is not None]
    if not done or any(job.test_scores is None for job in done):
        return None
    return {job.seed: job.test_scores for job in done}


def _documents_interval(arm: dict, baseline: dict, comparison: Comparison) -> tuple[float, float] | str:
    """The interval over seeds and test documents, the seeds as pairs where the t-test pairs them
    (the seeds both ran), the documents paired by their hashes."""
    paired = comparison.test.startswith("paired t")
    seeds = sorted(set(arm) & set(baseline)) if paired else None
    runs = [arm[s] for s in seeds] + [baseline[s] for s in seeds] if paired else [*arm.values(), *baseline.values()]
    documents = aligned_documents(runs)
    if isinstance(documents, str):
        return documents
    k = len(seeds) if paired else len(arm)
    return document_bootstrap(documents[:k], documents[k:], paired=paired)


def compare_arms(arms: list[Arm], baseline: str) -> list[Row]:
    """A row per arm, the baseline first; Holm's correction is left to the caller (over the report)."""
    ordered = sorted(arms, key=lambda arm: arm.name != baseline)
    base = spread(ordered[0].chosen, "test_loss")
    base_docs = _doc_scores(ordered[0].chosen)
    rows = []
    for arm in ordered:
        row = Row(arm, spread(arm.chosen, "test_loss"))
        if arm.name != baseline and row.test.n and base.n:
            row.comparison = compare(row.test, base)
            docs = _doc_scores(arm.chosen)
            row.documents = _documents_interval(docs, base_docs, row.comparison) if docs and base_docs else None
        rows.append(row)
    return rows


def _common_cell(members: list[Job]) -> str:
    windows = {job.summary.get("common_window") for job in members if job.done} - {None}
    text = spread_cell(spread(members, "test_common_loss"), ".3f")
    return text + (f" (T={windows.pop()})" if len(windows) == 1 and text != "-" else "")


def arms_section(rows: list[Row], floors: dict | None, declared: bool = False) -> list[str]:
    """The table of arms against the baseline (rows[0]) and the references, then what it says;
    `declared`: a declared analysis decides, and the table's p-values are not adjusted."""
    chosen = [job for row in rows for job in row.arm.chosen]
    lr_grid = any(row.arm.grid for row in rows)
    common = any(job.summary.get("test_common_loss") is not None for job in chosen)
    flops = any(job.summary.get("train_flops") is not None for job in chosen)
    documents = any(row.documents is not None for row in rows)
    columns = ([("arm", "---")] + [("LR (chosen on validation)", "---:")] * lr_grid + [("seeds done", "---:")]
               + [(name, "---:") for name, _ in METRICS.values()]
               + [("test nats/token on common windows", "---:")] * common + [("training FLOPs", "---:")] * flops
               + [(f"Δ nats/token vs baseline [{LEVEL:.0%} CI over seeds]", "---:")]
               + [(f"Δ [{LEVEL:.0%} CI over seeds and test documents]", "---:")] * documents
               + [("differs? (p < 0.05, unadjusted)" if declared else "differs? (after Holm)", "---"),
                  ("below the floor by (nats/token)", "---:")]
               + [("beats on test (highest order)", "---")] * bool(floors))
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "|".join(a for _, a in columns) + "|"]
    base = rows[0].test
    for row in rows:
        members, c = row.arm.chosen, row.comparison
        margins = Spread([job.floor["test_loss"] - job.summary["test_loss"] for job in members
                          if job.done and job.floor and job.summary.get("test_loss") is not None])
        interval = f" [{c.low:+.3f}, {c.high:+.3f}] {c.test}" if c is not None and c.low is not None else ""
        delta = "-" if c is None else f"{c.diff:+.3f}{interval}"
        docs = row.documents if isinstance(row.documents, tuple) else None
        cells = ([cell(row.arm.name)] + [(row.arm.lr or "-") + (" (grid edge)" if row.arm.at_edge else "")] * lr_grid
                 + [f"{sum(job.done for job in members)}/{len(members)}"]
                 + [spread_cell(spread(members, metric), spec) for metric, (_, spec) in METRICS.items()]
                 + [_common_cell(members)] * common + [spread_cell(spread(members, "train_flops"), ".3g")] * flops
                 + [delta] + [f"[{docs[0]:+.3f}, {docs[1]:+.3f}]" if docs else "-"] * documents
                 + ["(baseline)" if row is rows[0] else c.verdict if c else "-", spread_cell(margins, ".3f")]
                 + [references.beaten(row.test.mean, floors) if row.test.n else "-"] * bool(floors))
        lines.append("| " + " | ".join(cells) + " |")
    for key, entry in references.entries(floors):
        tag = " (the floor)" if key == floors["floor"] else ""
        cells = ([f"{references.name(key)}{tag}: counted on train, tuned on validation"] + ["-"] * lr_grid + ["-"]
                 + [fmt(entry.get(metric), spec) for metric, (_, spec) in METRICS.items()]
                 + [fmt(entry.get("test_common_loss"), ".3f")] * common + ["-"] * flops
                 + [f"{entry['test_loss'] - base.mean:+.3f}" if base.n else "-"] + ["-"] * documents + ["-", "-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""] + _verdicts(rows, floors)


def _verdicts(rows: list[Row], floors: dict | None) -> list[str]:
    base, baseline = rows[0].test, rows[0].arm.name
    lines = []
    why_no_docs = {row.arm.name: row.documents for row in rows if isinstance(row.documents, str)}
    for arm, reason in why_no_docs.items():
        lines += [f"No document interval for `{arm}`: {reason}.", ""]
    if floors and base.n:
        margin = floors[floors["floor"]]["test_loss"] - base.mean
        name = references.name(floors["floor"])
        if margin > 0:
            spread_note = (f"{margin / base.sd:.0f} x its seed spread, SD {base.sd:.4f} over {base.n} seeds" if base.sd
                           else "1 seed, no spread to compare the margin with")
            lines += [f"The baseline beats the floor ({name}) on test by {margin:.3f} nats/token ({spread_note}).", ""]
        else:
            lines += [f"The baseline does not beat the floor ({name}): its mean test loss is {-margin:.3f} "
                      "nats/token above the floor's.", ""]
    elif not floors:
        lines += ["No reference rows: the done jobs carry no `floors` in summary.json, or differ in tokenizer or data.",
                  ""]
    lines += _late_gains(rows)
    more_seeds = [row.arm.name for row in rows[1:] if row.comparison and needs_more_seeds(row.test, base)]
    if more_seeds or base.n < 3:
        lines += ["Short of 3 seeds, which the baseline needs, and every arm within twice the larger spread of "
                  "it or without a spread to judge by: "
                  + ", ".join(f"`{a}`" for a in ([baseline] if base.n < 3 else []) + more_seeds) + ".", ""]
    return lines


def _late_gains(rows: list[Row]) -> list[str]:
    """Each arm's validation gain over its last 10% of steps; and, against the declared margin,
    whether the baseline's curve had flattened: an effect measured mid-descent need not last."""
    gains = [(row.arm.name, Spread([gain for job in row.arm.chosen if job.done and (gain := job.late_gain) is not None]))
             for row in rows]
    if not any(gain.n for _, gain in gains):
        return []
    line = ("Validation loss gained over the last 10% of steps (the last evaluation at or before 90% of a run's steps "
            "minus its last; mean ± SD over seeds): "
            + ", ".join(f"`{name}` {spread_cell(gain, '.4f')}" for name, gain in gains if gain.n) + ".")
    margin = next((job.config["rootcause"]["margin"] for job in rows[0].arm.chosen
                   if (job.config.get("rootcause") or {}).get("margin") is not None), None)
    if margin is not None and gains[0][1].n:
        flat = gains[0][1].mean < margin
        line += (f" The baseline's curve {'has flattened' if flat else 'has not flattened'}: it gains "
                 f"{'less' if flat else 'more'} than the margin δ = {margin:g} in its last 10% of steps.")
    return [line, ""]


def explanation(baseline: str, declared: bool = False) -> list[str]:
    return [f"Baseline: `{baseline}`. Each cell is the mean ± the sample standard deviation over the arm's done "
            "seeds (one seed: no spread, shown as such). Δ is the arm's mean test loss minus the baseline's. Its "
            f"{LEVEL:.0%} interval over seeds comes from a paired t-test on the per-seed differences where the arm "
            "and the baseline ran the same seeds (the seeds both ran), else from Welch's t-test (named in the cell); "
            "the interval over seeds and test documents adds the test documents' variance to the seeds' (the "
            "documents paired by their text), so it covers training noise and the choice of test text "
            "together. "
            + ("Differs = p < 0.05, unadjusted: the declared analysis below decides, its claims the only family. "
               if declared else "Differs = Holm-adjusted p < 0.05 over all the arms of this report. ")
            + "Below the floor = the strongest reference's test loss minus the arm's; beats = the "
            "highest-order n-gram reference whose test loss is above the arm's mean.", ""]


def lr_section(rows: list[Row]) -> list[str]:
    """Each arm's LR grid: mean best validation loss on the choice's seeds at each LR, the chosen one in bold."""
    lines = ["## Learning rate per arm", "",
             "Each arm is reported at the LR with the lowest mean best validation loss over the seeds every scored "
             "LR of the arm ran (stage 1's: seeds added at the chosen LR do not move the choice); test plays no "
             "part in it. A diverged LR counts as tried: the grid is not extended towards it.", "",
             "| arm | mean best validation loss at each LR (seeds) | chosen LR | note |", "|---|---|---:|---|"]
    for row in rows:
        arm = row.arm
        grid = ", ".join(f"{p.lr}: diverged" if p.diverged else f"{p.lr}: - (0)" if not p.val.n else
                         (f"**{p.lr}: {p.mean_on(arm.choice_seeds):.4f}**" if p.lr == arm.lr
                          else f"{p.lr}: {p.mean_on(arm.choice_seeds):.4f}")
                         + f" ({sum(seed in arm.choice_seeds for seed in p.val.seeds)})"
                         for p in arm.grid)
        note = "best at the grid's edge: extend the grid" if arm.at_edge else ""
        lines.append(f"| {cell(arm.name)} | {grid} | {arm.lr or '-'} | {note} |")
    return lines + [""]
