"""What `python -m lmlab` prints last, on stdout: where a finished run's files are and the commands
that use them; after a sweep, the command that reports it. A Hydra callback (conf/config.yaml,
hydra.callbacks), so a sweep's line is printed once, by the process that launched its jobs."""
from __future__ import annotations

import json
import shlex
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


class NextSteps(Callback):
    def on_run_end(self, config: DictConfig, job_return: JobReturn | None = None, **kwargs: Any) -> None:
        from lmlab.distributed import this_process

        if job_return is None or job_return.status != JobStatus.COMPLETED or not this_process().main:
            return
        run_dir = Path(job_return.hydra_cfg.hydra.runtime.output_dir)
        summary = run_dir / "summary.json"
        if summary.is_file() and json.loads(summary.read_text(encoding="utf-8")).get("status") == "done":
            prompts = config.eval.sample_prompts
            print("\n".join(run_lines(run_dir, prompts[0] if prompts else "")), flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print("\n".join(sweep_lines(Path(config.hydra.sweep.dir))), flush=True)
