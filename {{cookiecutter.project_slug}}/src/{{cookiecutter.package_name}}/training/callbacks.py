"""Lightning callbacks that run inside every Ray Train worker."""

import os
import tempfile
from typing import Any

import lightning as L
import ray.train

from ..checkpoints import CHECKPOINT_FILE
from ..data.preprocessing import CHECKPOINT_KEY


class RayReportCallback(L.Callback):
    """Report metrics to Ray Train every epoch, and a checkpoint every `every_n_epochs`.

    Ray's stock `RayTrainReportCallback` checkpoints every epoch, which made a small run ten
    times slower; metrics alone are cheap. The last epoch is always checkpointed.
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"checkpoint.every_n_epochs must be at least 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        metrics = {name: value.item() for name, value in trainer.callback_metrics.items()}
        metrics["epoch"] = epoch
        metrics["step"] = trainer.global_step
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        for logger in trainer.loggers:
            # To disk now: a sweep may stop this run (ending its process) after this report.
            logger.save()
        if not (last or (epoch + 1) % self.every_n_epochs == 0):
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            # Every rank calls save_checkpoint (it may be collective); rank 0's file is kept.
            trainer.save_checkpoint(os.path.join(directory, CHECKPOINT_FILE))
            checkpoint = None
            if trainer.global_rank == 0:
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint)


class SaveDataState(L.Callback):
    """Store the data's preprocessing and columns in every checkpoint, under `checkpoint["data"]`.

    Batch prediction and serving rebuild the exact training-time transform from it with
    `data.preprocessing.load_transform`. Plain values only, for torch.load(weights_only=True).
    """

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CHECKPOINT_KEY] = self.state
