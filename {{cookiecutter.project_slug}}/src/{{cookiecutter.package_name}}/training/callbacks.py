"""Lightning callbacks that run inside every Ray Train worker."""

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import ray.train
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard.summary import hparams

from .. import logs
from ..checkpoints import CHECKPOINT_FILE, PROJECT_KEY
from ..data.preprocessing import TensorInputs
from .local import CheckpointFolder
from .loggers import log_settings

log = logging.getLogger(__name__)


def epochs_completed(trainer: L.Trainer) -> int:
    """How many epochs the run has trained once the current one ends: 1 after the first.

    Every place a researcher reads an epoch counts this way: the per-epoch reports (result.json,
    a sweep's trials.csv and plot), the console lines, checkpoint folders and the trackers'
    `epoch` (EpochCount). Lightning's `current_epoch` counts from 0.
    """
    return trainer.current_epoch + 1


class EpochCount(L.Callback):
    """Log `epoch` as epochs completed (epochs_completed) with each epoch's metrics, in place of
    Lightning's own 0-based `current_epoch`, which it adds only where a row has no `epoch`.

    `tested`: the epochs the checkpoint under test has trained, logged with the test metrics
    (a test restores the weights only, and Lightning's counter stands at 0 there).
    """

    def __init__(self, tested: int | None = None) -> None:
        self.tested = tested

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(pl_module, epochs_completed(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(pl_module, epochs_completed(trainer))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.tested is not None:
            self._log(pl_module, self.tested)

    @staticmethod
    def _log(pl_module: L.LightningModule, epochs: int) -> None:
        # The same number on every rank: syncing it keeps Lightning from asking for sync_dist.
        pl_module.log("epoch", float(epochs), on_step=False, on_epoch=True, sync_dist=True)


class RayTrainReports:
    """Where a worker of a Ray Train worker group reports: Ray Train, which keeps the
    checkpoints by the run's CheckpointConfig (rank 0's copy) and forwards them to a sweep."""

    def report(self, trainer: L.Trainer, metrics: dict[str, Any], checkpoint: bool) -> None:
        if not checkpoint:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            # Every rank calls save_checkpoint (it may be collective); rank 0's file is kept.
            trainer.save_checkpoint(os.path.join(directory, CHECKPOINT_FILE))
            kept = (
                ray.train.Checkpoint.from_directory(directory) if trainer.global_rank == 0 else None
            )
            ray.train.report(metrics, checkpoint=kept)


class LocalReports:
    """Where a run in one process (Ray Train's local mode, `scaling=local`) reports: its own
    CheckpointFolder, then `forward(metrics, checkpoint folder or None)` if given (a sweep
    trial's reporter). Ray Train's local mode keeps no checkpoints, and inside a Tune trial
    refuses `ray.train.report` altogether."""

    def __init__(
        self,
        folder: CheckpointFolder,
        forward: Callable[[dict[str, Any], str | None], None] | None = None,
    ) -> None:
        self.folder = folder
        self.forward = forward
        self.last_metrics: dict[str, Any] = {}

    def report(self, trainer: L.Trainer, metrics: dict[str, Any], checkpoint: bool) -> None:
        path = self.folder.save(metrics, trainer.save_checkpoint) if checkpoint else None
        self.last_metrics = metrics
        if self.forward is not None:
            self.forward(metrics, path)


class RayReportCallback(L.Callback):
    """Report metrics every epoch, and a checkpoint every `every_n_epochs`, to `reports`
    (RayTrainReports in a worker group, LocalReports in one process).

    Ray's stock `RayTrainReportCallback` checkpoints every epoch, which made a small run ten
    times slower; metrics alone are cheap. The last epoch is always checkpointed, also when a
    callback ends the run early, if it decides by the end of validation (Lightning runs
    EarlyStopping's end-of-epoch check after this callback: callbacks/early_stopping.yaml sets
    `check_on_train_epoch_end: false`).

    Checkpoints are ranked by `metric`. A model of your own may not log it (or log no
    validation metric at all): the run then says so once, and every report carries the worst
    possible value in its place, so that the latest checkpoints are kept and the last one is
    the best; summaries leave such placeholders out (checkpoints.is_placeholder).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        metric: str = "val_loss",
        mode: str = "min",
        reports: "RayTrainReports | LocalReports | None" = None,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"checkpoint.every_n_epochs must be at least 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.metric = metric
        self.placeholder = math.inf if mode == "min" else -math.inf
        self.reports = reports or RayTrainReports()
        self.warned = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = epochs_completed(trainer)
        metrics = {name: value.item() for name, value in trainer.callback_metrics.items()}
        metrics["epoch"] = epoch
        metrics["step"] = trainer.global_step
        if self.metric not in metrics:
            if not self.warned and trainer.is_global_zero:
                log.warning(
                    "The model logs no %r (it logs: %s): checkpoints follow the latest epoch. Set "
                    "checkpoint.metric (and search.metric) to a metric it logs to keep the best.",
                    self.metric,
                    ", ".join(sorted(metrics)),
                )
            self.warned = True
            metrics[self.metric] = self.placeholder
        # The run's last epoch: max_epochs reached, or a callback (EarlyStopping) stops it now.
        last = trainer.should_stop or (
            trainer.max_epochs is not None and epoch >= trainer.max_epochs
        )
        for logger in trainer.loggers:
            # To disk now: a sweep may stop this run (ending its process) after this report.
            logger.save()
        checkpoint = last or epoch % self.every_n_epochs == 0
        self.reports.report(trainer, metrics, checkpoint)


class SaveProjectState(L.Callback):
    """Store what rebuilds the model for inference in every checkpoint, under PROJECT_KEY: the
    model's config, the task and the input transform (checkpoints.project_state).

    Batch prediction and serving rebuild the exact model and preprocessing from it. Plain values
    only, for torch.load(weights_only=True). Where the data's inputs are not known in advance
    (a DataModule, the model's own dataloaders), the first training batch tells their shape.
    """

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.state.get("inputs") is not None:
            return
        inputs = batch[0] if isinstance(batch, list | tuple) else batch
        if isinstance(inputs, torch.Tensor):
            shape = tuple(int(size) for size in inputs.shape[1:])
            self.state["inputs"] = TensorInputs(shape).state()
            self.state["input_shape"] = list(shape)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[PROJECT_KEY] = self.state


class KeepConfiguredOptimizerSettings(L.Callback):
    """A resumed run trains with the optimizer settings it is configured with now, not those
    saved in the checkpoint it resumes from.

    Lightning restores the optimizer's state, learning rate included, after the model has
    configured its optimizers: a run resumed with a new `lr` (population based training does
    this) would otherwise go on with the old one. Works for any LightningModule. With a
    learning-rate scheduler the restored schedule is kept as it is (it computes each step's
    rate from its own saved values), and the run says so if the configured rate differs.
    """

    KEYS = ("lr", "weight_decay", "momentum")

    def __init__(self) -> None:
        self.configured: list[list[dict[str, Any]]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Called after configure_optimizers, before the checkpoint's state is restored.
        self.configured = [
            [{key: group[key] for key in self.KEYS if key in group} for group in opt.param_groups]
            for opt in trainer.optimizers
        ]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is None:
            return
        scheduled = bool(trainer.lr_scheduler_configs)
        for optimizer, groups in zip(trainer.optimizers, self.configured, strict=False):
            for group, settings in zip(optimizer.param_groups, groups, strict=False):
                for key, value in settings.items():
                    if key == "lr" and scheduled:
                        if value != group.get("initial_lr", value) and trainer.is_global_zero:
                            log.warning(
                                "Resumed with lr=%s, but the restored learning-rate schedule "
                                "goes on from lr=%s.",
                                value,
                                group["initial_lr"],
                            )
                        continue
                    group[key] = value


class HyperparametersToTensorBoard(L.Callback):
    """Show the run's settings in TensorBoard's HParams tab, beside its last `metrics`.

    The tab then compares a sweep's trials (learning rate against val_acc, for instance). Only the
    metric names are written here: TensorBoard reads their values from the run's own curves, so a
    trial that a sweep stops early shows the epoch it reached. `hyperparameters` holds plain
    values (str, int, float, bool), as `flat_hyperparameters` makes them.

    Every other tracker (CSV, MLflow, W&B: training/loggers.py) gets the same settings through
    its own `log_hyperparams`.
    """

    def __init__(self, hyperparameters: dict[str, Any], metrics: Sequence[str]) -> None:
        self.hyperparameters = hyperparameters
        self.summaries = hparams(hyperparameters, dict.fromkeys(metrics, 0.0))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                writer = logger.experiment._get_file_writer()  # as Lightning's log_hyperparams
                for summary in self.summaries:
                    writer.add_summary(summary)
            else:
                log_settings(logger, self.hyperparameters)


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


class EpochLine(L.Callback):
    """One console line per epoch on rank 0: its number, train and validation metrics, how long
    it took and how long the rest will take at that pace."""

    def __init__(self) -> None:
        self.logger = logs.progress_logger()
        self.started = 0.0
        self.epoch_times: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        seconds = time.monotonic() - self.started
        self.epoch_times.append(seconds)
        done, total = epochs_completed(trainer), trainer.max_epochs
        logged = trainer.callback_metrics.items()
        metrics = {name: value.item() for name, value in logged if name != "epoch"}
        parts = [f"epoch {done}/{total}" if total and total > 0 else f"epoch {done}"]
        groups: dict[str, list[str]] = {"train_": [], "val_": [], "": []}
        for name, value in sorted(metrics.items()):
            prefix = next((p for p in ("train_", "val_") if name.startswith(p)), "")
            groups[prefix].append(f"{name} {value:.4g}")
        parts += [" ".join(shown) for shown in groups.values() if shown]
        pace = sum(self.epoch_times[-3:]) / len(self.epoch_times[-3:])
        timing = f"{seconds:.1f} s"
        if total and total > done and not trainer.should_stop:
            timing += f", ETA {pace * (total - done):.0f} s"
        parts.append(timing)
        self.logger.info(" | ".join(parts))
