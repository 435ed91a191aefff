"""The Sweeper Hydra makes for `hydra/sweeper=optuna`. Hydra imports every plugin module at each
start, so Optuna (about a second to import) is imported by `_search` only when a sweep begins."""
from typing import Any, List

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        # Hydra passes the fields of config.OptunaSweeperConf; setup() is given them again, within
        # the whole config, and the search reads them there.
        self.config = self.hydra_context = self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from ._search import search

        return search(self.config, self.launcher, arguments, self.hydra_context)
