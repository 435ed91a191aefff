"""What `python -m lmlab` prints last, on stdout: where a finished run's files are and the commands
that use them; after a sweep, the command that reports it, or, when every job failed, one line on
stderr saying so and exit status 1. A Hydra callback (conf/config.yaml, hydra.callbacks), so a
sweep's line is printed once, by the process that launched its jobs."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

RUN_FILES = "summary.json, metrics.jsonl, samples.jsonl, test_scores.json, checkpoints/"


def run_lines(run_dir: Path, prompt: str) -> list[str]:
    best = run_dir / "checkpoints" / "best.pt"
    return [f"files: {run_dir} ({RUN_FILES})",
            "next:",
            f"  sample it:   python -m lmlab.generate {shlex.quote(f'checkpoint={best}')} "
            f"{shlex.quote(f'prompt={prompt}')} max_new_tokens=100",
            f"  score it:    python -m lmlab.evaluate {shlex.quote(f'checkpoint={best}')} split=test",
            "  a sweep:     python -m lmlab -m sweep=NAME ..., then python -m lmlab.report SWEEP_DIR "
            "(python -m lmlab --help lists the sweeps)"]


def sweep_lines(sweep_dir: Path) -> list[str]:
    return [f"files: {sweep_dir} (one folder per job, multirun.yaml)",
            f"next:  python -m lmlab.report {shlex.quote(str(sweep_dir))}   (writes report.md and its plots there)"]


def first_prompt(run_dir: Path, config: DictConfig) -> str:
    """The run's first sample prompt, as it sampled it (samples.jsonl: from its own corpus where the
    configured prompts are WikiText's, lmlab.generate.corpus_prompts), else as configured."""
    samples = run_dir / "samples.jsonl"
    lines = samples.read_text(encoding="utf-8").splitlines() if samples.is_file() else []
    if lines:
        return json.loads(lines[0])["prompt"]
    prompts = config.eval.sample_prompts
    return prompts[0] if prompts else ""


class NextSteps(Callback):
    def on_run_end(self, config: DictConfig, job_return: JobReturn | None = None, **kwargs: Any) -> None:
        from lmlab.distributed import this_process

        if job_return is None or job_return.status != JobStatus.COMPLETED or not this_process().main:
            return
        run_dir = Path(job_return.hydra_cfg.hydra.runtime.output_dir)
        summary = run_dir / "summary.json"
        if summary.is_file() and json.loads(summary.read_text(encoding="utf-8")).get("status") == "done":
            print("\n".join(run_lines(run_dir, first_prompt(run_dir, config))), flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = all_failed(sweep_dir)
        if failed:
            print(f"lmlab: error: every job of the sweep failed ({len(failed)} of {len(failed)}); the first: "
                  f"{failed[0]}", file=sys.stderr, flush=True)
            sys.exit(1)
        print("\n".join(sweep_lines(sweep_dir)), flush=True)


def all_failed(sweep_dir: Path) -> list[str]:
    """Why each job of the sweep failed (its summary's reason), in job-dir order, if none finished;
    else (or with no job) an empty list."""
    from lmlab.tracking import FINISHED

    summaries = []
    for job_dir in sorted(path.parent for path in sweep_dir.glob("*/.hydra")):
        path = job_dir / "summary.json"
        summaries.append(json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {})
    if any(summary.get("status") in FINISHED for summary in summaries):
        return []
    return [summary.get("reason") or summary.get("status") or "no summary.json" for summary in summaries]
