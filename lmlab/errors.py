"""Errors a user causes and can fix: reported in one line, never as a traceback."""
from lmlab.checkpoint import CheckpointError
from lmlab.config import ConfigError
from lmlab.data import DataError
from lmlab.train import TrainingDiverged

USER_ERRORS = (ConfigError, DataError, CheckpointError, TrainingDiverged)
