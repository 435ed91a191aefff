"""A job's side of the sweeper: the trial it was launched for, found through its own config; and
what keeps the storage URL's password out of the files a sweep writes."""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from lmlab.atomic import write_text

if TYPE_CHECKING:
    import optuna

# user:password@ in a URL (postgresql://user:pw@host/db): the password is what `redact` hides.
_PASSWORD = re.compile(r"(\b[a-z][\w+.-]*://[^:/@\s'\"]*:)[^@\s'\"]*@", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every URL's password as ***."""
    return _PASSWORD.sub(r"\1***@", text)


def redact_files(folder: Path) -> None:
    """Hide URL passwords in the YAML files Hydra wrote into `folder` (a job's .hydra): a storage
    URL typed on the command line is in hydra.yaml's sweeper config and override list."""
    for path in folder.glob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        if (hidden := redact(text)) != text:
            write_text(path, hidden)


def make_pruner(pruner_cfg: Any, first_eval_tokens: int | None = None) -> optuna.pruners.BasePruner:
    """The pruner `hydra.sweeper.pruner` describes. Its steps are tokens, so a `min_resource` left
    null is the tokens of a trial's first evaluation (Optuna's own default, one step, would be
    one token: Hyperband would make a bracket for every power of its reduction factor up to a
    run's millions of tokens, all judged at the first evaluation)."""
    from hydra.utils import instantiate

    from lmlab.errors import ConfigError

    if not isinstance(pruner_cfg, DictConfig):
        raise ConfigError("hydra.sweeper.pruner", f"is a config group: pick a pruner with "
                          f"hydra/sweeper/pruner={pruner_cfg} (a slash, not a dot)")
    resource = {"min_resource": first_eval_tokens or 1} if pruner_cfg.get("min_resource", "") is None else {}
    return instantiate(pruner_cfg, **resource)


def job_trial(sweeper_cfg: DictConfig, first_eval_tokens: int | None = None) -> optuna.trial.Trial | None:
    """The trial this job runs (its `hydra.sweeper` config names it), opened on the study's
    storage with the study's pruner (see `make_pruner`), to `report` intermediate values to and
    ask `should_prune`; None for a job that another sweeper, or none, launched."""
    if sweeper_cfg.get("trial") is None:
        return None
    import optuna

    storage = optuna.storages.get_storage(sweeper_cfg.storage)
    study = optuna.load_study(study_name=sweeper_cfg.study_name, storage=storage,
                              pruner=make_pruner(sweeper_cfg.pruner, first_eval_tokens))
    study_id = storage.get_study_id_from_name(sweeper_cfg.study_name)
    return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, sweeper_cfg.trial))
