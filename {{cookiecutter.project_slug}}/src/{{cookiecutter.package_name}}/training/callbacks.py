"""Lightning callbacks that run inside every Ray Train worker."""

import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import ray.train
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

from ..checkpoints import CHECKPOINT_FILE
from ..data.preprocessing import CHECKPOINT_KEY


class RayReportCallback(L.Callback):
    """Report metrics to Ray Train every epoch, and a checkpoint every `every_n_epochs`.

    Ray's stock `RayTrainReportCallback` checkpoints every epoch, which made a small run ten
    times slower; metrics alone are cheap. The last epoch is always checkpointed, also when a
    callback ends the run early, if it decides by the end of validation (Lightning runs
    EarlyStopping's end-of-epoch check after this callback: callbacks/early_stopping.yaml sets
    `check_on_train_epoch_end: false`).
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
        # The run's last epoch: max_epochs reached, or a callback (EarlyStopping) stops it now.
        last = trainer.should_stop or (
            trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        )
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


class HyperparametersToTensorBoard(L.Callback):
    """Show the run's settings in TensorBoard's HParams tab, beside its last `metrics`.

    The tab then compares a sweep's trials (learning rate against val_acc, for instance). Only the
    metric names are written here: TensorBoard reads their values from the run's own curves, so a
    trial that a sweep stops early shows the epoch it reached. `hyperparameters` holds plain
    values (str, int, float, bool), as `flat_hyperparameters` makes them.
    """

    def __init__(self, hyperparameters: dict[str, Any], metrics: Sequence[str]) -> None:
        self.summaries = hparams(hyperparameters, dict.fromkeys(metrics, 0.0))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                writer = logger.experiment._get_file_writer()  # as Lightning's log_hyperparams
                for summary in self.summaries:
                    writer.add_summary(summary)


def flat_hyperparameters(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`settings` with nested keys joined by dots. Lists become strings; a None is kept, and
    TensorBoard leaves it out."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_hyperparameters(value, f"{name}."))
        elif value is None or isinstance(value, str | bool | int | float):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
