"""report.md: the job table, the arms (each at its chosen LR) against the baseline and the n-gram
references, the LR grid, compute (scaling fit, iso-FLOP), the last samples of each arm, and the plots."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lmlab.report import plots
from lmlab.report.compute import compute_section
from lmlab.report.jobs import LR_KEY, SEED_KEY, Job, arms, baseline_arm, by_corpus, find_jobs, label, swept_keys
from lmlab.report.sections import (Row, arms_section, cell, compare_arms, explanation, fmt, lr_section,
                                   shared_floors)
from lmlab.report.select import choose
from lmlab.report.stage2 import write_stage2
from lmlab.report.stats import after_holm
from lmlab.report.trials import search_params, trials_section
from lmlab.report.verdicts import claims_section, declared, plan


def job_table(jobs: list[Job], keys: list[str], tested: set[Path] | None = None) -> list[str]:
    """A row per job; with an LR grid, test only for the jobs in `tested` (those at their arm's chosen LR)."""
    flops = any(job.summary.get("train_flops") is not None for job in jobs)
    lines = ["| # | overrides | n_params | tokens | " + "training FLOPs | " * flops
             + "best val ppl | test ppl | tokens/s | status |",
             "|---|---|---:|---:|" + "---:|" * flops + "---:|---:|---:|---|"]
    for job in jobs:
        s = job.summary
        test = fmt(s.get("test_ppl"), ".2f") if tested is None or job.path in tested else "(other LR)"
        lines.append(f"| {job.num} | {cell(label(job, keys))} | {fmt(s.get('n_params'), ',')} | "
                     f"{fmt(job.tokens, ',')} | " + f"{fmt(s.get('train_flops'), '.3g')} | " * flops
                     + f"{fmt(s.get('best_val_ppl'), '.2f')} | {test} | "
                     f"{fmt(s.get('tokens_per_s'), ',.0f')} | {cell(job.status, limit=100)} |")
    return lines


def samples_section(rows: list[Row]) -> list[str]:
    """Each arm's text at its last evaluation (first seed's run), from samples.jsonl."""
    lines = ["## Samples at the last evaluation", "", "| arm | prompt | continuation |", "|---|---|---|"]
    for arm, members in ((row.arm.name, row.arm.chosen) for row in rows):
        path = next((job.path / "samples.jsonl" for job in members if (job.path / "samples.jsonl").is_file()), None)
        if path is None:
            continue
        samples = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        last = max(sample["step"] for sample in samples)
        lines += [f"| {cell(arm)} | {cell(repr(sample['prompt']))} | {cell(repr(sample['text']), 400)} |"
                  for sample in samples if sample["step"] == last]
    return lines + [""] if len(lines) > 4 else []


def _position_curve(members: list[Job]) -> list[float] | None:
    """Test loss at each window position, over the arm's done seeds (weighted by targets scored)."""
    scores = [job.test_scores for job in members if job.done and job.test_scores]
    if not scores:
        return None
    length = max(len(s["position_loss"]) for s in scores)
    total, count = np.zeros(length), np.zeros(length)
    for s in scores:
        tokens = np.asarray(s["position_tokens"], dtype=float)
        total[:len(tokens)] += np.nan_to_num(np.asarray(s["position_loss"], dtype=float)) * tokens
        count[:len(tokens)] += tokens
    return list(np.where(count > 0, total / np.maximum(count, 1), np.nan))


def comparisons(jobs: list[Job], keys: list[str], baseline: str | None) -> list[tuple[str, list[Row]]]:
    """Per corpus and tokenizer: its arms, each at its chosen LR, against its baseline; the
    verdicts Holm-corrected over every arm of the report."""
    corpora = {corpus: arms(members, keys) for corpus, members in by_corpus(jobs).items()}
    if baseline is not None and not any(baseline in named for named in corpora.values()):
        names = [name for named in corpora.values() for name in named]
        raise ValueError(f"--baseline {baseline!r} is not an arm; the arms are: {'; '.join(names)}")
    groups = []
    for corpus, named in corpora.items():
        base = baseline_arm(named, keys, baseline if baseline in named else None)
        groups.append((corpus, compare_arms([choose(name, members, LR_KEY in keys) for name, members in named.items()],
                                            base)))
    # A declared analysis is its own family (its claims): those arms' p-values stay unadjusted here.
    after_holm([row.comparison for _, rows in groups if declared(rows) is None for row in rows if row.comparison])
    return groups


def write_report(root: Path, out: Path | None = None, baseline: str | None = None) -> Path:
    """Write report.md and the PNGs for the jobs under root; returns the report's path."""
    out = Path(out or root)
    jobs = find_jobs(Path(root))
    if not jobs:
        raise FileNotFoundError(f"no job dirs (summary.json or .hydra/overrides.yaml) under {root}")
    out.mkdir(parents=True, exist_ok=True)
    keys = swept_keys(jobs)
    common = {k: v for k, v in jobs[0].overrides.items() if k not in keys and all(k in j.overrides for j in jobs)}
    n_done, n_pruned = sum(job.done for job in jobs), sum(job.pruned for job in jobs)
    search = search_params(Path(root))  # an Optuna search: trials, not arms against trial 0
    groups = [] if search else comparisons(jobs, keys, baseline)
    lr_grid = LR_KEY in keys and not search
    lines = [f"# Report: {root}", "", f"{len(jobs)} jobs: {n_done} done, "
             + (f"{n_pruned} pruned (stopped early by the sweeper), " if n_pruned else "")
             + f"{len(jobs) - n_done - n_pruned} failed or unfinished.", ""]
    if common:
        lines += ["Common overrides: `" + " ".join(f"{k}={v}" for k, v in common.items()) + "`", ""]
    lines += job_table(jobs, keys, {job.path for _, rows in groups for row in rows for job in row.arm.chosen}
                       if lr_grid else None)
    if lr_grid:
        lines += ["", "Test is shown only at each arm's chosen LR: the choice is made on validation alone."]
    if len(groups) > 1:
        lines += ["", f"The jobs were measured in {len(groups)} corpora or tokenizers. Nats/token are compared only "
                  "within one (a section each below); across them, compare the bits/byte column."]
    png, chosen = [], []
    if search:
        section, search_png = trials_section(jobs, search, out)
        lines += [""] + section
        png += [search_png, plots.plot_val_curves(jobs, keys, out, shared_floors(jobs))]
    for index, (corpus, rows) in enumerate(groups):
        members = [job for row in rows for job in row.arm.chosen]
        chosen += members
        floors = shared_floors(members)
        lines += ["", "## Arms against the baseline and the floor" + (f": {corpus}" if len(groups) > 1 else ""), ""]
        analysis = declared(rows)
        lines += explanation(rows[0].arm.name, analysis is not None) + arms_section(rows, floors, analysis is not None)
        if analysis is not None:
            lines += claims_section(analysis, rows, rows[0].arm.name)
        lines += lr_section(rows) if any(row.arm.grid for row in rows) else []
        if any(row.test.n for row in rows):
            png.append(plots.plot_arms({row.arm.name: row.test.values for row in rows}, rows[0].arm.name, out, floors,
                                       f"test_loss_by_arm{f'_{index + 1}' if index else ''}.png"))
    floors = shared_floors(chosen)
    section, compute_png = compute_section(chosen, keys, out, floors, len(groups))
    lines += section
    png.append(compute_png)
    curves = {(f"{row.arm.name} ({corpus})" if len(groups) > 1 else row.arm.name): _position_curve(row.arm.chosen)
              for corpus, rows in groups for row in rows}
    if any(curve is not None for curve in curves.values()):
        png.append(plots.plot_position_loss({arm: c for arm, c in curves.items() if c is not None}, out))
    lines += samples_section([row for _, rows in groups for row in rows])
    metric = "val_bpb" if len(groups) > 1 else "best_val_ppl"  # per token only within one tokenizer
    if n_done and not search:  # a search draws its objective by searched value instead
        png += [plots.plot_metric_by_key(jobs, key, keys, out, floors, metric) for key in keys if key != SEED_KEY]
    for index, (corpus, rows) in enumerate(groups):  # nats/token: a plot per corpus and tokenizer
        members = [job for job in jobs if job.corpus == corpus]
        png.append(plots.plot_val_curves(members, keys, out, shared_floors(members),
                                         f"val_loss_curves{f'_{index + 1}' if index else ''}.png",
                                         corpus if len(groups) > 1 else ""))
    drawn = [p for p in png if p is not None]
    lines += ["## Plots", ""] + ([f"![{p.stem}]({p.name})" for p in drawn] if drawn else ["No plots: no job finished."])
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def write_plan(root: Path, max_seeds: int, baseline: str | None = None) -> Path:
    """DIR/stage2.sh with each arm's seeds from the declared analysis on the pilot in DIR."""
    jobs = find_jobs(Path(root))
    if not jobs:
        raise FileNotFoundError(f"no job dirs (summary.json or .hydra/overrides.yaml) under {root}")
    seeds, notes = plan(comparisons(jobs, swept_keys(jobs), baseline), max_seeds)
    counts = ", ".join(f"{arm} {len(s)}" for arm, s in seeds.items())
    return write_stage2(root, seeds, f"--plan --max-seeds {max_seeds}: seeds per arm fixed before stage 2 runs: "
                        + counts, notes)
