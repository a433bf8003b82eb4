"""The Hydra Sweeper plugin; the search itself is in _impl.py, loaded when a search starts."""

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class DltipsOptunaSweeper(Sweeper):
    """Hydra sweeper: an Optuna study, asked and told `n_jobs` trials at a time."""

    def __init__(self, **sweeper_cfg: Any) -> None:
        from hydra_plugins.dltips_optuna_sweeper._impl import OptunaSearch

        self.search = OptunaSearch(**sweeper_cfg)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.sweep(arguments)
