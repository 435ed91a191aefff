"""A job's side of the sweeper: the trial it was launched for, found through its own config."""
from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

if TYPE_CHECKING:
    import optuna


def job_trial(sweeper_cfg: DictConfig) -> optuna.trial.Trial | None:
    """The trial this job runs (its `hydra.sweeper` config names it), opened on the study's
    storage with the study's pruner, to `report` intermediate values to and ask `should_prune`;
    None for a job that another sweeper, or none, launched."""
    if sweeper_cfg.get("trial") is None:
        return None
    import optuna
    from hydra.utils import instantiate

    storage = optuna.storages.get_storage(sweeper_cfg.storage)
    study = optuna.load_study(study_name=sweeper_cfg.study_name, storage=storage,
                              pruner=instantiate(sweeper_cfg.pruner))
    study_id = storage.get_study_id_from_name(sweeper_cfg.study_name)
    return optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, sweeper_cfg.trial))
