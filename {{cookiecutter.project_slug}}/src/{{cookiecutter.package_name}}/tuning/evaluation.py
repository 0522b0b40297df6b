"""The held-out test split of a sweep: its best trial's best checkpoint, evaluated once.

The best trial is chosen by the search metric on the validation split (results.best_trial)
before anything here runs; its test metrics describe it and choose nothing. The evaluation is
a single run's (training/run.py `test_metrics`), in the sweep's driver: one process, on the
trial's own config, and its metrics go to the trial's TensorBoard and result.json as well.
"""

import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict

from ..checkpoints import RESULT_FILE, CheckpointError, resolve
from ..data import PreparedData, reuse_prepared
from ..data.pipeline import uses_ray_data
from ..training.run import test_metrics
from .results import TrialSummary
from .space import SearchSpace
from .trial import compose_trial

log = logging.getLogger(__name__)


def trial_config(
    config: DictConfig, hydra_context: HydraContext, space: SearchSpace, row: TrialSummary
) -> DictConfig:
    """The config the trial `row` trained with, resolved, without Hydra's own node.

    Composed as the trial composed it (`trial.compose_trial`), from the sweep's config and the
    trial's values: its saved `.hydra/config.yaml` still holds `${hydra:...}` interpolations,
    which only the trial's Hydra node resolves.
    """
    trial = compose_trial(config, hydra_context, space, row.params, row.trial)
    hydra = HydraConfig.instance()
    sweep_hydra = hydra.cfg
    hydra.set_config(trial)  # what `${hydra:...}` reads
    try:
        with open_dict(trial):
            del trial["hydra"]
        return OmegaConf.create(OmegaConf.to_container(trial, resolve=True))
    finally:
        hydra.cfg = sweep_hydra


def evaluate_best_trial(
    config: DictConfig,
    hydra_context: HydraContext,
    space: SearchSpace,
    best: TrialSummary,
    data: PreparedData | None,
) -> dict[str, Any]:
    """The test metrics of `best`'s best checkpoint (the one its result.json names), if its data
    holds out a test split; also added to its result.json. Needs Ray (the data's datasets)."""
    cfg = trial_config(config, hydra_context, space, best)
    if not uses_ray_data(cfg.data) or not cfg.data.get("test_fraction"):
        return {}
    try:
        checkpoint_dir = str(Path(resolve(best.output_dir)).parent)
    except CheckpointError as error:
        log.warning("The best trial's test split was not evaluated: %s", error)
        return {}
    if data is not None:
        reuse_prepared(config.data, config.task, data)  # the trial's own, if it kept the sweep's
    metrics = test_metrics(cfg, checkpoint_dir)
    result_file = Path(best.output_dir) / RESULT_FILE
    summary = json.loads(result_file.read_text())
    summary["test_metrics"] = metrics
    result_file.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return metrics
