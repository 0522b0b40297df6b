"""The function each Ray Train worker runs: build data, model and Lightning trainer, then fit."""

import logging
import os
import warnings
from contextlib import ExitStack
from typing import Any

import lightning as L
import ray.train
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from omegaconf import DictConfig, OmegaConf
from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer

from .. import teardown
from ..checkpoints import CHECKPOINT_FILE
from ..data.loader import ShardBatches
from ..data.pipeline import hide_progress_notice
from ..models import METRICS, Classifier, build_net
from .callbacks import (
    HyperparametersToTensorBoard,
    RayReportCallback,
    SaveDataState,
    flat_hyperparameters,
)

# What TensorBoard's HParams tab lists for a run: the settings a sweep varies, and every metric
# Lightning writes to TensorBoard (all but the step, which is each point's x); the epoch column
# shows how far a trial that a sweep stopped got.
HYPERPARAMETER_GROUPS = ("model", "data", "optimizer", "trainer")
TENSORBOARD_METRICS = tuple(name for name in METRICS if name != "step")


def build_model(cfg: DictConfig, input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    """The configured network wrapped in the Lightning classifier."""
    net = build_net(cfg.model, input_shape, num_classes)
    architecture = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "input_shape": [int(size) for size in input_shape],
        "num_classes": int(num_classes),
    }
    return Classifier(net=net, optimizer=instantiate(cfg.optimizer), architecture=architecture)


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


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point of every worker. `config` is the run's resolved config as plain containers."""
    cfg = OmegaConf.create(config)
    # Ray Train starts each worker in a folder of its own: relative paths (a logger.save_dir, a
    # file your model reads) mean here what they mean to train.py, as in a plain script.
    if os.path.isdir(cfg.launch_dir):  # not on another machine of a cluster
        os.chdir(cfg.launch_dir)
    # Lightning's start-up notices, once per worker, drown the run's own log.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    threads = cfg.scaling.get("threads_per_worker")
    if threads:
        torch.set_num_threads(int(threads))
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    # The driver prepared the data (run.py); this worker reads only its own shard of each split.
    info = cfg.data_info
    model = build_model(cfg, info.input_shape, info.num_classes)
    train_batches = ShardBatches(
        "train",
        cfg.data.batch_size,
        shuffle_buffer=cfg.data.shuffle_buffer,
        seed=cfg.seed,
        prefetch_batches=cfg.data.prefetch_batches,
        num_rows=info.train_rows,
        cache=cfg.data.cache_in_worker,
    )
    val_batches = ShardBatches(
        "val",
        cfg.data.batch_size,
        prefetch_batches=cfg.data.prefetch_batches,
        num_rows=info.val_rows,
        cache=cfg.data.cache_in_worker,
    )
    world_size = ray.train.get_context().get_world_size()
    _quiet_false_alarms(world_size)
    trainer = L.Trainer(
        **cfg.trainer,
        accelerator="gpu" if cfg.scaling.use_gpu else "cpu",
        **_distribution(world_size),
        callbacks=[
            RayReportCallback(cfg.checkpoint.every_n_epochs),
            SaveDataState(OmegaConf.to_container(info.checkpoint_state)),
            HyperparametersToTensorBoard(hyperparameters(cfg), TENSORBOARD_METRICS),
            *(instantiate(callback) for callback in cfg.callbacks.values()),
        ],
        # No "hp_metric" placeholder (-1 in every run): HyperparametersToTensorBoard names the
        # real metrics.
        logger=TensorBoardLogger(
            save_dir=cfg.logger.save_dir, name="", version="", default_hp_metric=False
        ),
        enable_checkpointing=False,
    )
    if world_size > 1:
        trainer = prepare_trainer(trainer)  # checks the strategy and environment are Ray's

    with ExitStack() as stack:
        trainer.fit(model, train_batches, val_batches, ckpt_path=_resume_path(stack, cfg))


def _distribution(world_size: int) -> dict[str, Any]:
    """Lightning's devices, strategy and plugins for a worker group of `world_size`.

    Several workers train with DDP in Ray's process group. A single worker trains as a plain
    one-device run: DDP around one process only adds work to every step (about a tenth of the
    digits' epoch time on 2 cores).
    """
    if world_size == 1:
        return {"devices": 1}
    return {
        "devices": "auto",
        "strategy": RayDDPStrategy(),
        "plugins": [RayLightningEnvironment()],
    }


def _quiet_false_alarms(world_size: int) -> None:
    """Silence messages that say nothing about the run: three warnings every run printed, and
    on the console, the errors of a worker caught mid-report by its run's teardown."""
    teardown.quiet_console()
    hide_progress_notice()  # Ray Train brought the driver's Ray Data options, bars off
    # Lightning 2.6 still builds torch's LeafSpec, which recent torch deprecates, in every fit.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
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
