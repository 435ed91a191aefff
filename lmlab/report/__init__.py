"""`python -m lmlab.report DIR`: a table, each arm at its own LR against the baseline (paired t or
Welch, an interval over seeds and test documents, Holm), the sweep's declared analysis (a verdict
per claim), the n-gram references, compute (scaling fit, iso-FLOP) and plots of every job under
DIR, offline; `--plan` and `--stage2 --seeds 1,2` print the commands that run more seeds at each
arm's chosen LR. docs/report.md is the reference.

DIR is a sweep dir (outputs/sweeps/<name>/<timestamp>) or a folder of single runs. Each job dir
holds `.hydra/overrides.yaml`, `summary.json` and `metrics.jsonl`; the report is `DIR/report.md`
plus PNGs beside it. Reads numbers and files only (no torch), so it runs anywhere:
jobs.py reads the job dirs, select.py picks each arm's LR, stats.py, analysis.py and scaling.py
compute, references.py names the n-gram references, sections.py, verdicts.py and compute.py write
the sections, plots.py draws, stage2.py writes the stage-2 commands (verdicts.py plans their seeds),
write.py puts the report together, cli.py reads the command line.
"""
from lmlab.report.cli import main

__all__ = ["main", "write_report"]


def __getattr__(name: str):
    """`write_report`, imported when first asked for: it imports scipy and matplotlib, which the
    command line's `--help` need not wait for (PEP 562)."""
    if name == "write_report":
        from lmlab.report.write import write_report
        return write_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
