"""The held-out test split (`data.test_fraction`): the best checkpoint evaluated on it, once.

Runs in the driver after training, on the whole test split, with Lightning's own `test` loop:
the model's `test_step` (TaskModule logs the task's metrics with a `test_` prefix; a module of
yours logs what it likes). Nothing here chooses anything by these metrics.
"""

import logging
import os
from collections.abc import Iterator
from typing import Any

import lightning as L
import ray.data
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

from ..checkpoints import CHECKPOINT_FILE
from ..data.pipeline import PreparedData
from .callbacks import EpochCount
from .loggers import tensorboard_logger
from .run import trained_epochs
from .worker import build_module, quiet_lightning

log = logging.getLogger(__name__)


class DatasetBatches:
    """(features, labels) batches of a whole Ray Dataset, in its order."""

    def __init__(self, dataset: ray.data.Dataset, batch_size: int) -> None:
        self.dataset = dataset
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.dataset.iter_torch_batches(batch_size=self.batch_size):
            yield batch["features"], batch["label"]


def evaluate_test_split(cfg: DictConfig, data: PreparedData, checkpoint_dir: str) -> dict[str, Any]:
    """The metrics of the checkpoint in `checkpoint_dir` on `data.test`, also written to the
    run's TensorBoard, if it has one. Empty, with a warning, if the model has no `test_step`."""
    quiet_lightning()  # in a worker group's or a sweep's driver, Lightning's first Trainer here
    model, _ = build_module(cfg, data.task, data.input_shape)
    checkpoint_file = os.path.join(checkpoint_dir, CHECKPOINT_FILE)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        callbacks=[EpochCount(tested=trained_epochs(checkpoint_file))],
        logger=tensorboard_logger(cfg),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    try:
        results = trainer.test(
            model,
            dataloaders=DatasetBatches(data.test, cfg.data.batch_size),
            ckpt_path=checkpoint_file,
            verbose=False,
        )
    except MisconfigurationException as error:
        log.warning("The test split was not evaluated: %s", error)
        return {}
    metrics = results[0] if results else {}
    return {name: float(value) for name, value in metrics.items() if name != "epoch"}
