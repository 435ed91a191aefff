"""`python -m lmlab.report DIR`: a table, seed statistics, the reference floors, a scaling fit and
plots of every job under DIR, offline.

DIR is a sweep dir (outputs/sweeps/<name>/<timestamp>) or a folder of single runs. Each job dir
holds `.hydra/overrides.yaml`, `summary.json` and `metrics.jsonl`; the report is `DIR/report.md`
plus PNGs beside it. Reads numbers and files only (no torch), so it runs anywhere:
jobs.py reads the job dirs, stats.py and scaling.py compute, plots.py draws, write.py writes.
"""
from lmlab.report.write import main, write_report

__all__ = ["main", "write_report"]
