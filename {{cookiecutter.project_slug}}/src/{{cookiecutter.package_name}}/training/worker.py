"""The function each Ray Train worker runs: build data, model and Lightning trainer, then fit.

Nothing here depends on the task: the model is either a LightningModule of yours or a network
that TaskModule trains for the configured task (tasks/), and the data either comes as this
worker's Ray Data shards, from a LightningDataModule (`data.datamodule`), or from the model's
own dataloaders (`data=none`).
"""

import logging
import os
import warnings
from contextlib import ExitStack
from typing import Any

import lightning as L
import ray.train
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from omegaconf import DictConfig, OmegaConf
from ray.train.lightning import prepare_trainer

from .. import logs, teardown
from ..checkpoints import CHECKPOINT_FILE, project_state
from ..data.loader import ShardBatches
from ..data.pipeline import hide_progress_notice
from ..models import build_model
from ..tasks import Task, load_task
from ..tasks.module import TaskModule
from . import tracker_env
from .callbacks import (
    EpochCount,
    EpochLine,
    HyperparametersToTensorBoard,
    KeepConfiguredOptimizerSettings,
    LocalReports,
    RayReportCallback,
    RayTrainReports,
    SaveProjectState,
    flat_hyperparameters,
)
from .local import CheckpointFolder
from .loggers import build_loggers, end_runs
from .options import distribution, trainer_options

# What TensorBoard's HParams tab lists for a run: the settings a sweep varies, and every metric
# Lightning writes to TensorBoard (all but the step, which is each point's x); the epoch column
# shows how far a trial that a sweep stopped got.
HYPERPARAMETER_GROUPS = ("model", "data", "task", "optimizer", "scheduler", "trainer")


def build_module(
    cfg: DictConfig, task: Task, input_shape: tuple[int, ...] | None
) -> tuple[L.LightningModule, str]:
    """The LightningModule to fit, and its kind: "module" (yours, as configured) or "network"
    (the configured network in TaskModule, with the task's loss and metrics)."""
    model = build_model(cfg.model, input_shape, task.known_num_outputs())
    if isinstance(model, L.LightningModule):
        return model, "module"
    scheduler = instantiate(cfg.scheduler) if "_target_" in cfg.get("scheduler", {}) else None
    return TaskModule(model, task, instantiate(cfg.optimizer), scheduler), "network"


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The run's seed, worker count and model, data, optimizer and trainer settings, flat."""
    settings = {
        group: OmegaConf.to_container(cfg[group], resolve=True) for group in HYPERPARAMETER_GROUPS
    }
    settings["seed"] = cfg.seed
    settings["scaling"] = {"num_workers": cfg.scaling.num_workers}
    # Each `_target_` names the class (MLP or CNN, Adam or SGD); `_partial_` says nothing.
    flat = flat_hyperparameters(settings)
    return {name: value for name, value in flat.items() if not name.endswith("._partial_")}


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Entry point of every worker. `config` is the run's resolved config as plain containers.

    In one process (`scaling=local`, Ray Train's local mode: `config["local_run_dir"]` is set)
    this is the only worker, and returns the last epoch's metrics."""
    config = dict(config)  # a copy: in one process, the caller's dict
    tracker_env.receive(config.pop(tracker_env.LOOP_KEY, None))
    cfg = OmegaConf.create(config)
    # Ray Train starts each worker in a folder of its own: relative paths (a logger.save_dir, a
    # file your model reads) mean here what they mean to train.py, as in a plain script.
    if os.path.isdir(cfg.launch_dir):  # not on another machine of a cluster
        os.chdir(cfg.launch_dir)
    quiet_lightning()
    logs.quiet_ray_console()  # Ray Data's notices
    if cfg.get("local_run_dir") is None:
        logs.quiet_train_worker_reports()
    threads = cfg.scaling.get("threads_per_worker")
    if not threads and cfg.get("local_run_dir") is not None:
        # In one process, as many torch threads as a worker would get: its reserved CPUs (Ray
        # sets a worker's threads so). All of a small machine's cores, which Ray's own
        # processes also use, made small models many times slower, not faster.
        threads = max(1, int((cfg.scaling.get("resources_per_worker") or {}).get("CPU", 1)))
    if threads:
        torch.set_num_threads(int(threads))
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    # The driver prepared the data (run.py) and fitted the task; with Ray Data, this worker
    # reads only its own shard of each split.
    info = cfg.data_info
    task = load_task(OmegaConf.to_container(info.task))
    local = cfg.get("local_run_dir") is not None
    # Inside a sweep's trial, Ray Train's local mode refuses its context: one process is one rank.
    world_size = 1 if local else ray.train.get_context().get_world_size()
    data = _data(cfg, world_size)
    input_shape = info.input_shape
    if "datamodule" in data:
        input_shape = _datamodule_sizes(data["datamodule"], task)
    model, kind = build_module(cfg, task, input_shape)
    state = project_state(
        OmegaConf.to_container(cfg.model, resolve=True),
        kind,
        input_shape,
        task.known_num_outputs(),
        task.state(),
        OmegaConf.to_container(info.inputs) if info.inputs else None,
    )
    reports = _local_reports(cfg) if local else RayTrainReports()
    _quiet_false_alarms(world_size)
    trainer = L.Trainer(
        **trainer_options(cfg),
        accelerator="gpu" if cfg.scaling.use_gpu else "cpu",
        **distribution(cfg.scaling, world_size),
        callbacks=[
            RayReportCallback(
                cfg.checkpoint.every_n_epochs, cfg.checkpoint.metric, cfg.checkpoint.mode, reports
            ),
            EpochCount(),
            SaveProjectState(state),
            KeepConfiguredOptimizerSettings(),
            HyperparametersToTensorBoard(hyperparameters(cfg), _shown_metrics(cfg, task, kind)),
            *([EpochLine()] if cfg.get("epoch_lines") else []),
            *(instantiate(callback) for callback in cfg.callbacks.values()),
        ],
        logger=build_loggers(cfg),  # configs/logger/: rank 0 writes, each gets hyperparameters()
        enable_checkpointing=False,
    )
    if world_size > 1:
        trainer = prepare_trainer(trainer)  # checks the strategy and environment are Ray's

    with ExitStack() as stack:
        resume = _local_resume_path(reports, cfg) if local else _resume_path(stack, cfg)
        try:
            trainer.fit(model, **data, ckpt_path=resume)
        except BaseException as error:  # a sweep's scheduler stopping the trial, too
            end_runs(trainer.loggers, error)
            raise
    end_runs(trainer.loggers, None)
    return {"metrics": reports.last_metrics} if local else None


def _local_reports(cfg: DictConfig) -> LocalReports:
    """Reports of a run in one process: kept in its run folder, and in a sweep's trial handed
    to Tune as well (tuning/reporting.py)."""
    from ..tuning import reporting  # noqa: PLC0415 (tuning imports training)

    folder = CheckpointFolder.with_policy(cfg.local_run_dir, cfg.checkpoint)
    trial = reporting.active()
    return LocalReports(folder, forward=trial.forward if trial is not None else None)


def _local_resume_path(reports: LocalReports, cfg: DictConfig) -> str | None:
    """In one process: the run folder's latest checkpoint (the same run started again), else
    `resume_from`."""
    return reports.folder.latest() or cfg.get("resume_from") or None


def _data(cfg: DictConfig, world_size: int) -> dict[str, Any]:
    """trainer.fit's data arguments: this worker's Ray Data shards, a LightningDataModule, or
    nothing (the model's own dataloaders). Lightning shards the latter two across workers with
    its distributed sampler."""
    if cfg.data.get("source") is not None:
        return {
            "train_dataloaders": ShardBatches(
                "train",
                cfg.data.batch_size,
                shuffle_buffer=cfg.data.shuffle_buffer,
                seed=cfg.seed,
                prefetch_batches=cfg.data.prefetch_batches,
                num_rows=cfg.data_info.train_rows,
                cache=cfg.data.cache_in_worker,
                augment=cfg.data.get("augment"),
                world_size=world_size,
            ),
            "val_dataloaders": ShardBatches(
                "val",
                cfg.data.batch_size,
                prefetch_batches=cfg.data.prefetch_batches,
                num_rows=cfg.data_info.val_rows,
                cache=cfg.data.cache_in_worker,
                world_size=world_size,
            ),
        }
    if cfg.data.get("datamodule") is not None:
        return {"datamodule": instantiate(cfg.data.datamodule)}
    return {}


def _datamodule_sizes(datamodule: L.LightningDataModule, task: Task) -> tuple[int, ...] | None:
    """The input shape of a LightningDataModule's first training batch; the task takes its
    `num_classes` attribute if it has one and the task was not told how many classes there are.
    """
    if getattr(task, "num_classes", False) is None and getattr(datamodule, "num_classes", None):
        task.num_classes = int(datamodule.num_classes)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    inputs = batch[0] if isinstance(batch, list | tuple) else batch
    return tuple(inputs.shape[1:]) if isinstance(inputs, torch.Tensor) else None


def _shown_metrics(cfg: DictConfig, task: Task, kind: str) -> tuple[str, ...]:
    """The metrics TensorBoard's HParams tab lists: the task's, or for a module of yours the
    one that ranks checkpoints (what else it logs is known only once it runs)."""
    if kind == "network":
        return tuple(name for name in task.reported_metrics() if name != "step")
    return (cfg.checkpoint.metric, "epoch")


def quiet_lightning() -> None:
    """Lightning's start-up notices (once per Trainer: devices, a tip) to warnings only, and
    a deprecation warning every fit printed: in a worker, and in the driver's test evaluation."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    # Lightning 2.6 still builds torch's LeafSpec, which recent torch deprecates, in every fit.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )


def _quiet_false_alarms(world_size: int) -> None:
    """Silence messages that say nothing about the run: warnings every run printed, and on the
    console, the errors of a worker caught mid-report by its run's teardown."""
    teardown.quiet_console()
    teardown.exit_quietly_on_sigterm()
    hide_progress_notice()  # Ray Train brought the driver's Ray Data options, bars off
    if world_size == 1:
        # Ray Train sets up a process group even for one worker, so Lightning takes the
        # one-device run for a distributed one and asks for the sync_dist=True it already has.
        warnings.filterwarnings(
            "ignore", message=r"It is recommended to use `self.log\(", category=PossibleUserWarning
        )


def _resume_path(stack: ExitStack, cfg: DictConfig) -> str | None:
    """The Lightning checkpoint to continue from, if any.

    Ray's own latest checkpoint comes first: it is there after a worker failure or when the same
    run is started again. Otherwise `resume_from` (set by the sweeper when a trial is restored or
    exploits another trial's checkpoint).
    """
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        directory = stack.enter_context(checkpoint.as_directory())
        return os.path.join(directory, CHECKPOINT_FILE)
    return cfg.get("resume_from") or None
