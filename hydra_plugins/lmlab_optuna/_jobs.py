"""The sweeper's side of one trial's job: the dir it runs in and whose it is, and how the study is
told what became of it (COMPLETE with a finite value, PRUNED, or FAIL with the reason in the
trial's user attr `fail_reason`)."""
from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import optuna
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

log = logging.getLogger(__name__)

OWNER = "optuna_trial.json"  # in a trial's job dir: the study, trial and config it was made for


def job_dir(sweep_dir: Path, study: optuna.Study, number: int) -> Path:
    return sweep_dir / study.study_name / str(number)


def owner(study: optuna.Study, storage: str, trial, job_cfg: DictConfig) -> dict:
    """What makes a job dir this trial's: the study (name, storage, and when the trial started,
    which tells a study made again under the same name apart) and the job's composed config."""
    task = OmegaConf.to_yaml(OmegaConf.masked_copy(job_cfg, [key for key in job_cfg if key != "hydra"]))  # unresolved
    return {"study": study.study_name, "storage": storage, "trial": trial.number,
            "trial_started": trial.datetime_start.isoformat(),
            "config_sha256": hashlib.sha256(task.encode()).hexdigest()}


def claim(path: Path, mine: dict) -> str | None:
    """Make `path` this trial's job dir, or say why not: it holds another study's trial, or this
    trial's with other hyperparameters, whose results (summary.json, checkpoints) are not this
    trial's to skip as done or to resume. Checked before Hydra writes anything into the dir."""
    record = path / OWNER
    if record.is_file():
        found = json.loads(record.read_text(encoding="utf-8"))
        if found == mine:
            return None
        what = ("this trial with another config (hyperparameters or fixed overrides changed since)"
                if {**found, "config_sha256": None} == {**mine, "config_sha256": None} else
                f"trial {found['trial']} of study {found['study']!r} on {found['storage']}, started "
                f"{found['trial_started']}")
    elif (path / "summary.json").exists() or (path / "checkpoints").exists():
        what = f"a run that no trial claims (no {OWNER})"
    else:
        path.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(mine, indent=1), encoding="utf-8")
        return None
    return (f"{path} holds {what}, not trial {mine['trial']} of study {mine['study']!r} on {mine['storage']}: "
            "neither skipped nor resumed. Give the sweep a new hydra.sweep.dir or hydra.sweeper.study_name, "
            "or delete that dir")


def fail(study: optuna.Study, trial, reason: str) -> None:
    log.warning("trial %d failed: %s", trial.number, reason)
    study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
    tell(study, trial.number, state=TrialState.FAIL)


def tell(study: optuna.Study, number: int, value: float | None = None, state: TrialState | None = None) -> None:
    try:
        study.tell(number, value, state=state)
    except RuntimeError as e:
        # The grid sampler calls study.stop() when its grid is done, which only study.optimize()
        # accepts; the trial's result is stored by then.
        if "Study.stop" not in str(e):
            raise


def ended(study: optuna.Study, trial, path: Path, ret: JobReturn | None, launch_error: str | None) -> bool:
    """Tell the study how `trial`'s job ended, from its summary.json: pruned; done, with the
    finite objective it returned; or failed, with why. False for a job stopped by a signal
    (summary status "preempted"): its trial stays running, to resume from its checkpoint when the
    sweep is launched again."""
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    status = summary.get("status")
    if status == "preempted" and ret is not None:
        return False
    if status == "pruned":
        tell(study, trial.number, state=TrialState.PRUNED)
        return True
    value = summary.get("best_val_loss")  # the objective the job returned
    if status == "done" and value is not None and math.isfinite(value):
        tell(study, trial.number, float(value))
    elif status in ("done", "failed"):
        fail(study, trial, summary.get("reason") or f"its objective is {value}")
    else:
        error = ret._return_value if ret is not None and ret.status == JobStatus.FAILED else None
        fail(study, trial, f"its job ended without a summary.json ({launch_error or error or 'killed?'})")
    return True
