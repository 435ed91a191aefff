"""Run records: metrics.jsonl and summary.json always, W&B when logger.kind=wandb.

Reads numbers and writes files; never touches tensors.
"""
from __future__ import annotations

import json
import logging
import math
import netrc
import os
import time
from collections.abc import Sequence
from pathlib import Path

from lmlab.atomic import write_text

# A run's summary.json status when it ended as planned: done, or pruned by its Optuna study.
FINISHED = ("done", "pruned")
# How long the W&B server gets to answer before a run records offline: wandb.init itself retries
# an unreachable server for about 100 s, then raises.
PROBE_TIMEOUT_S = 5

log = logging.getLogger("lmlab")


def _finite(record: dict) -> dict:
    # JSON has no NaN or inf: write them as null rather than produce an unreadable file.
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def wandb_mode(logger_cfg) -> str:
    """online when an API key is configured, offline otherwise; logger.mode, then WANDB_MODE, override."""
    if logger_cfg.mode:
        return logger_cfg.mode
    if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return os.environ["WANDB_MODE"]
    return "online" if has_api_key() else "offline"


def asked_online(logger_cfg) -> bool:
    """Whether the user asked for online records only (logger.mode or WANDB_MODE), rather than
    getting online because a key is configured."""
    return (logger_cfg.mode or os.environ.get("WANDB_MODE")) == "online"


def wandb_server() -> str:
    """The W&B server runs talk to: WANDB_BASE_URL, else W&B's own."""
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")


def unreachable(url: str) -> str | None:
    """Why the server at `url` does not answer within PROBE_TIMEOUT_S, else None. Any HTTP answer,
    an error status included, means it is there."""
    import requests

    try:
        requests.head(url, timeout=PROBE_TIMEOUT_S)
    except requests.RequestException as e:
        return type(e).__name__
    return None


def online_or_offline(logger_cfg, run_dir: Path) -> str:
    """The W&B mode a run starts in: wandb_mode's, but offline, said in one line, when the server
    cannot be reached; a ConfigError, before anything is written, when online was asked for."""
    from lmlab.errors import ConfigError

    mode = wandb_mode(logger_cfg)
    why = unreachable(wandb_server()) if mode == "online" else None
    if why is None:
        return mode
    if asked_online(logger_cfg):
        raise ConfigError("logger.mode", f"online, but the W&B server {wandb_server()} cannot be reached ({why}): "
                                         "logger.mode=offline records now for `wandb sync` later; logger=none "
                                         "keeps local records only")
    log.warning("W&B: the server %s cannot be reached (%s): recording offline; upload later with: "
                "wandb sync %s/wandb/offline-run-*", wandb_server(), why, run_dir)
    return "offline"


def has_api_key() -> bool:
    """Whether W&B has an API key here: WANDB_API_KEY, or the one `wandb login` put in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return bool(netrc.netrc().authenticators("api.wandb.ai"))
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class Tracker:
    """One job's records. `close()` must run in a finally: W&B keeps one active run per process,
    so a multirun job that left its run open would log into the next job's."""

    def __init__(self, run_dir: Path, logger_cfg, config: dict, group: str, name: str,
                 resume_id: str | None = None, tags: Sequence[str] = ()):
        self.run_dir = Path(run_dir)
        self.run = None
        self.done = False
        if logger_cfg.kind == "wandb":
            import wandb

            self.run = wandb.init(project=logger_cfg.project, entity=logger_cfg.entity, group=group,
                                  name=name, tags=[*logger_cfg.tags, *tags], config=config,
                                  dir=str(self.run_dir), mode=online_or_offline(logger_cfg, self.run_dir),
                                  id=resume_id, resume="allow" if resume_id else None)
            self.run.define_metric("tokens")
            self.run.define_metric("*", step_metric="tokens")
            write_text(self.run_dir / "wandb_run_id", self.run.id)

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log(self, record: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(_finite(record)) + "\n")
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if v is not None})

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def write_summary(self, summary: dict) -> None:
        self.done = summary.get("status") in FINISHED
        write_text(self.run_dir / "summary.json", json.dumps(_finite(summary), indent=1))
        if self.run is not None:
            self.run.summary.update({k: v for k, v in summary.items() if v is not None})

    def close(self) -> None:
        """Finish the W&B run; it is marked failed unless a done or pruned summary was written."""
        if self.run is not None:
            self.run.finish(exit_code=0 if self.done else 1)
            self.run = None


def rewind_records(run_dir: Path, step: int) -> None:
    """Drop the run dir's .jsonl records (metrics, samples) logged after `step`: a run resumed from
    that step logs them again. A line cut short by a kill is dropped too."""
    for path in run_dir.glob("*.jsonl"):
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", step) <= step:
                    kept.append(line + "\n")
            except ValueError:
                continue
        write_text(path, "".join(kept))


def finished_summary(run_dir: Path) -> dict | None:
    """The summary.json of a run that finished (done, or pruned by its Optuna study), else None."""
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return summary if summary.get("status") in FINISHED else None


class RunEnd:
    """The one place a run's summary.json is written, however the run ends: done, pruned, failed
    or preempted; into the W&B run's summary too once `records` (a Tracker) exists. Written once,
    by the main process. A finished run's summary outlives a failed relaunch, and a start that
    failed before its records existed leaves an earlier summary as it was."""

    def __init__(self, run_dir: Path, main: bool):
        self.run_dir, self.main = run_dir, main
        self.records = None  # the run's Tracker, once made
        self.known: dict = {}  # what a failed run's summary can still say (its size, its threads)
        self.ended = False
        # When this start began: a sweep's launches are told apart by it (lmlab.report.jobs), also
        # in job records copied without their files' times.
        self.started_at = round(time.time(), 3)

    def write(self, summary: dict) -> None:
        if self.ended or not self.main:
            return
        self.ended = True
        summary = {**summary, "started_at": self.started_at}
        if summary["status"] not in FINISHED:
            if finished_summary(self.run_dir) is not None or \
                    (self.records is None and (self.run_dir / "summary.json").exists()):
                return
            summary = {**summary, **self.known}
        if self.records is None:
            write_text(self.run_dir / "summary.json", json.dumps(_finite(summary), indent=1))
        else:
            self.records.write_summary(summary)

    def failed(self, error: BaseException) -> None:
        from lmlab.errors import Preempted

        self.write({"status": "preempted" if isinstance(error, Preempted) else "failed",
                    "reason": f"{type(error).__name__}: {error}"})


class Pruned(Exception):
    """The run's Optuna trial was pruned: it stops early, and its results so far are a result,
    not a failure (summary.json status "pruned")."""

    def __init__(self, message: str, progress: dict):
        super().__init__(message)
        self.progress = progress


def trial_reporter(sweeper_cfg, may_stop: bool = True, first_eval_tokens: int | None = None):
    """The trainer's `on_eval` hook for a job that is a trial of lmlab's Optuna sweeper: reports
    the best validation loss so far (the objective the job returns) against tokens seen, and
    raises Pruned when the study's pruner says so, `may_stop` (the hook runs on the main process
    only, so a trial trained by several processes, which would all have to stop together, only
    reports) and the evaluation is not the final one (a trial that trained its whole budget is
    complete, with a test score). `first_eval_tokens` is the pruner's default `min_resource`.
    None for any other job."""
    from hydra_plugins.lmlab_optuna.trial import job_trial

    trial = job_trial(sweeper_cfg, first_eval_tokens)
    if trial is None:
        return None

    def on_eval(model, state, final: bool = False) -> None:
        if not state.tokens:  # the untrained model scores alike in every trial: nothing to compare yet
            return
        trial.report(state.best_val_loss, step=state.tokens)
        if may_stop and not final and trial.should_prune():
            raise Pruned(f"trial {trial.number} pruned by {type(trial.study.pruner).__name__} at "
                         f"{state.tokens:,} tokens", {"tokens_seen": state.tokens, "steps": state.step,
                                                      "best_val_loss": state.best_val_loss,
                                                      "best_val_ppl": math.exp(state.best_val_loss), **state.best_val})

    return on_eval


class NoRecords:
    """The records of a process that writes none: a data-parallel rank other than the main one."""

    run_id = None

    def log(self, record: dict) -> None:
        pass

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        pass

    def write_summary(self, summary: dict) -> None:
        pass

    def close(self) -> None:
        pass
