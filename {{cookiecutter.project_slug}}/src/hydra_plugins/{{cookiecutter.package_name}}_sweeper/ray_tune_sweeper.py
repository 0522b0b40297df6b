"""Hydra sweeper plugin: `python train.py -m search=asha ...` runs one Ray Tune experiment.

Hydra imports every module of the `hydra_plugins` namespace at start-up, so this one stays
light: the work is in `{{ cookiecutter.package_name }}.tuning`, imported only when a sweep runs.
"""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class RayTuneSweeperConf:
    """The sweep's settings live in the `search` config group, not here."""

    _target_: str = "hydra_plugins.{{ cookiecutter.package_name }}_sweeper.ray_tune_sweeper.RayTuneSweeper"


# Named after the package: Hydra loads the plugins of every project installed in the
# environment, and two projects' sweepers must not take each other's place.
ConfigStore.instance().store(
    group="hydra/sweeper",
    name="{{ cookiecutter.package_name }}_ray_tune",
    node=RayTuneSweeperConf,
)


class RayTuneSweeper(Sweeper):
    """Runs every job of a multirun as a trial of one Ray Tune experiment."""

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config

    def sweep(self, arguments: list[str]) -> Any:
        from {{ cookiecutter.package_name }}.tuning.sweep import run_sweep

        return run_sweep(
            config=self.config,
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            arguments=arguments,
        )
