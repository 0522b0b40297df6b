"""The training driver: one Hydra config in, one Ray Train run out, summarised in result.json."""

import json
import logging
import os
import shlex
from functools import partial
from pathlib import Path
from typing import Any

import ray
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf, open_dict
from ray.train import (
    CheckpointConfig,
    ControllerError,
    FailureConfig,
    LoggingConfig,
    Result,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

from .. import logs, teardown
from ..checkpoints import RESULT_FILE, CheckpointError, is_placeholder
from ..config import ConfigError, first_line, validate
from ..data import build_source, prepare_reusing
from ..data.pipeline import build_task, uses_ray_data
from ..data.sources import resolve_path
from ..models import build_model, is_lightning_module, model_class
from ..tuning import reporting
from . import cluster, tracker_env
from .local import CheckpointFolder
from .loggers import check_trackers, driver_context, end_lost_runs

log = logging.getLogger(__name__)

# Times Ray Train starts a worker group again when it could not be placed within
# RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s by default), on a cluster that does not add nodes
# (ray.autoscaling=false). Ray's default, forever, left a run whose nodes were lost waiting
# for nodes that would never come.
GROUP_START_RETRIES = 2

# Networks up to this size are also given a batch by the driver before training (check_model).
FORWARD_CHECK_PARAMETERS = 10_000_000


def run_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """What each Ray Train worker runs (`worker.py`). Imported there, in the worker: Lightning
    takes seconds to import, which the driver and sweep trials need not pay."""
    from .worker import train_loop_per_worker as loop

    return loop(config)


def scaling_config(scaling: DictConfig) -> ScalingConfig:
    return ScalingConfig(
        num_workers=scaling.num_workers,
        use_gpu=scaling.use_gpu,
        resources_per_worker=cluster.worker_bundle(scaling),
        placement_strategy=scaling.placement_strategy,
        accelerator_type=scaling.get("accelerator_type"),
    )


def run_config(cfg: DictConfig, callbacks: list | None = None) -> RunConfig:
    return RunConfig(
        name=cfg.run_name,
        storage_path=resolve_path(cfg.paths.storage_path),  # Ray takes no relative path
        checkpoint_config=CheckpointConfig(
            num_to_keep=cfg.checkpoint.num_to_keep,
            checkpoint_score_attribute=cfg.checkpoint.metric,
            checkpoint_score_order=cfg.checkpoint.mode,
        ),
        failure_config=FailureConfig(
            max_failures=cfg.fault_tolerance.max_failures,
            controller_failure_limit=-1 if cfg.ray.autoscaling else GROUP_START_RETRIES,
        ),
        callbacks=[teardown.QuietConsole(), *(callbacks or [])],
        # Ray Train's own notices (the worker group starting, each report, each checkpoint) to
        # the console and its application logs only from WARNING; its system log files
        # (/tmp/ray/session_*/logs/train/ray-train-sys-*.log) keep every level.
        logging_config=LoggingConfig(log_level="WARNING"),
    )


def trained_epochs(path: str) -> int:
    """How many epochs the Lightning checkpoint file `path` has trained; fails now, in plain
    words, if it is missing or unreadable."""
    if not Path(path).is_file():
        raise CheckpointError(f"resume_from={path}: no such checkpoint file")
    try:  # mapped, not read: only the epoch counter is needed, and checkpoints can be large
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"resume_from={path} is not a readable checkpoint ({type(error).__name__}: "
            f"{first_line(error)})"
        ) from error
    return int(checkpoint.get("epoch", -1)) + 1  # Lightning saves the 0-based epoch index


def check_model(
    model_cfg: DictConfig, input_shape: tuple[int, ...], num_outputs: int, forward: bool = True
) -> None:
    """Fail here, in one message, if the network cannot take the data, rather than in every
    worker once they have started.

    The network is built on PyTorch's meta device (shapes, no memory, whatever its size). With
    `forward` (workers on CPUs, like this driver: a GPU model may use CUDA-only kernels), one of
    up to FORWARD_CHECK_PARAMETERS parameters is then built for real and passed a batch of 2
    (milliseconds). A forward pass on the meta device would cost a second of imports instead.
    A LightningModule of yours is not checked here: building it would import Lightning.
    """
    if is_lightning_module(model_class(model_cfg)):
        return
    try:
        with torch.device("meta"):
            net = build_model(model_cfg, input_shape, num_outputs)
    except InstantiationException:
        # The constructor refused (its message is printed without a traceback), or it cannot
        # run on the meta device: a real build raises the former again and passes the latter.
        net = build_model(model_cfg, input_shape, num_outputs)
    if not forward or sum(p.numel() for p in net.parameters()) > FORWARD_CHECK_PARAMETERS:
        return
    name = model_cfg.get("_target_", "the model")
    try:
        with torch.no_grad():
            outputs = build_model(model_cfg, input_shape, num_outputs).eval()(
                torch.zeros(2, *input_shape)
            )
    except Exception as error:
        raise ConfigError(
            f"{name} cannot take this data's inputs, shaped {tuple(input_shape)}: "
            f"{type(error).__name__}: {first_line(error)}"
        ) from error
    if tuple(outputs.shape) != (2, num_outputs):
        raise ConfigError(
            f"{name} gives outputs shaped {tuple(outputs.shape)} for a batch of 2; for this "
            f"task they must be shaped (2, {num_outputs})"
        )


def build_trainer(
    cfg: DictConfig, callbacks: list | None = None, epoch_lines: bool = True
) -> TorchTrainer:
    """A TorchTrainer for `cfg`, checked against the cluster it will run on. `epoch_lines`:
    print a line per epoch (a sweep's trials do not: the sweep prints a line per result)."""
    validate(cfg)
    check_trackers(cfg)  # a tracker's server that does not answer: stop before Ray starts
    if cfg.get("resume_from"):
        with open_dict(cfg):  # workers run in a folder of Ray's: they get the path from here
            cfg.resume_from = resolve_path(cfg.resume_from)
        done = trained_epochs(cfg.resume_from)
        if done >= cfg.trainer.max_epochs:
            raise ConfigError(
                f"resume_from={cfg.resume_from} has trained {done} epochs and "
                f"trainer.max_epochs={cfg.trainer.max_epochs}: nothing is left to train. Raise "
                "trainer.max_epochs to train on."
            )
    ray_data = uses_ray_data(cfg.data)
    local = is_local(cfg)
    if ray_data and not ray.is_initialized():
        # This process starts Ray (or joins it) now: a missing data file fails first, in
        # seconds. Inside a sweep's trial the driver has read the data, maybe on another node.
        build_source(cfg.data).check()
    if local:
        cluster.check_local(cfg.scaling)
        # The loop runs here; Ray Data runs on Ray, and Ray Train starts Ray anyway if not.
        cluster.connect(cfg.ray, with_dashboard=False)
    else:
        cluster.check_fits_here(cfg.scaling, cfg.ray)
        cluster.connect(cfg.ray)
        cluster.check_fits(cfg.scaling, autoscaling=cfg.ray.autoscaling)
    loop_config = OmegaConf.to_container(cfg, resolve=True)
    loop_config["launch_dir"] = os.getcwd()
    loop_config["epoch_lines"] = epoch_lines
    loop_config["tracking"] = driver_context(cfg)  # the tracking URI, the sweep of a trial
    if local:
        loop_config["local_run_dir"] = str(local_run_dir(cfg))
    else:  # the trackers' credentials set here, for the workers (by reference: tracker_env.py)
        loop_config[tracker_env.LOOP_KEY] = tracker_env.ship()
    if not ray_data:
        # A LightningDataModule or the model's own dataloaders: the workers load the data.
        loop_config["data_info"] = unprepared_data_info(cfg.task)
        return TorchTrainer(
            run_worker,
            train_loop_config=loop_config,
            scaling_config=scaling_config(cfg.scaling),
            run_config=run_config(cfg, callbacks),
        )
    # The driver reads, splits and preprocesses once; Ray Train gives each worker its shards.
    # With restarts, no split is lost with a node: see prepare's `keep_here`.
    data = prepare_reusing(cfg.data, cfg.task, keep_here=cfg.fault_tolerance.max_failures != 0)
    data.check_shards(max(1, cfg.scaling.num_workers))
    check_model(cfg.model, data.input_shape, data.num_outputs, forward=not cfg.scaling.use_gpu)
    loop_config["data_info"] = data.worker_info()
    return TorchTrainer(
        run_worker,
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg.scaling),
        run_config=run_config(cfg, callbacks),
        datasets={"train": data.train, "val": data.val},
        dataset_config=data.ingest_config(cfg.scaling.num_workers),
    )


def is_local(cfg: DictConfig) -> bool:
    """Whether `cfg` trains in one process, without a worker group (`scaling=local`)."""
    return cfg.scaling.num_workers == 0


def local_run_dir(cfg: DictConfig) -> Path:
    """Where a run in one process keeps its checkpoints: the folder Ray Train would use."""
    return Path(resolve_path(cfg.paths.storage_path)) / cfg.run_name


def unprepared_data_info(task_cfg: DictConfig) -> dict[str, Any]:
    """The workers' data_info when no Ray Dataset feeds them: the task as configured (it sees no
    labels in advance, so a network's output size comes from `task.num_classes`), inputs
    unknown until the first batch."""
    task = build_task(task_cfg)
    return {
        "input_shape": None,
        "num_outputs": task.known_num_outputs(),
        "train_rows": None,
        "val_rows": None,
        "task": task.state(),
        "inputs": None,
    }


def summarize_local(metrics: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    """summarize() for a run in one process, from the checkpoints it kept (local.py)."""
    folder = CheckpointFolder.with_policy(local_run_dir(cfg), cfg.checkpoint)
    kept = folder.checkpoints()
    best = folder.best(kept)
    return {
        "metrics": _plain(metrics),
        "best_checkpoint": best[0] if best else None,
        "best_checkpoint_metrics": _plain(best[1]) if best else {},
        "latest_checkpoint": kept[-1][0] if kept else None,
        "storage_path": str(folder.run_dir),
        "output_dir": cfg.paths.output_dir,
    }


def summarize(result: Result, cfg: DictConfig) -> dict[str, Any]:
    """What result.json holds: final metrics, the best checkpoint and where everything is."""
    best = None
    if result.best_checkpoints:
        ranked = [m.get(cfg.checkpoint.metric) for _, m in result.best_checkpoints]
        if any(value is None or is_placeholder(value) for value in ranked):
            best = result.best_checkpoints[-1][0]  # the model does not log it: the latest
        else:
            best = result.get_best_checkpoint(cfg.checkpoint.metric, cfg.checkpoint.mode)
    best_metrics = next((m for c, m in result.best_checkpoints if best and c.path == best.path), {})
    return {
        "metrics": _plain(result.metrics or {}),
        "best_checkpoint": best.path if best else None,
        "best_checkpoint_metrics": _plain(best_metrics),
        "latest_checkpoint": result.checkpoint.path if result.checkpoint else None,
        "storage_path": result.path,
        "output_dir": cfg.paths.output_dir,
    }


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job under Ray Train and write `<output_dir>/result.json`.

    Inside a Ray Tune trial (a sweep), every epoch's report is forwarded to Tune as it happens:
    by the Train controller of a worker group, or by the loop itself in one process
    (`scaling=local`, where TorchTrainer runs the loop in this process).
    """
    tune_reporter = reporting.active()
    if tune_reporter is not None:
        logs.trial_console()
    local = is_local(cfg)
    if tune_reporter is not None and not local:
        trainer = build_trainer(cfg, callbacks=tune_reporter.callbacks, epoch_lines=False)
        fit = partial(tune_reporter.fit, trainer)
    else:
        trainer = build_trainer(cfg, epoch_lines=tune_reporter is None)
        fit = trainer.fit
    try:
        result = fit()
    except BaseException as error:
        end_lost_runs(cfg, error)  # trackers that its workers could not end (killed)
        if isinstance(error, ControllerError) and isinstance(
            error.controller_failure, WorkerGroupStartupTimeoutError
        ):
            raise cluster.ResourceError(cluster.unplaceable(cfg.scaling)) from error
        if isinstance(error, KeyboardInterrupt | SystemExit) and tune_reporter is None:
            # Ctrl-C: Ray Train aborts the run, then exits. In a trial: Tune stopped it.
            log.warning(
                "Training stopped before its last epoch. To continue from its latest "
                "checkpoint, run: %s",
                resume_command(cfg.paths.output_dir),
            )
        raise
    if local:
        summary = summarize_local(result.return_value["metrics"], cfg)
    else:
        summary = summarize(result, cfg)
    if tune_reporter is None:  # a sweep evaluates its best trial only, once it is known
        summary["test_metrics"] = test_metrics(cfg, summary["best_checkpoint"])
    write_result(summary, cfg.paths.output_dir)
    return summary


def test_metrics(cfg: DictConfig, checkpoint_dir: str | None) -> dict[str, Any]:
    """The best checkpoint's metrics on the held-out test split, if the data has one."""
    if not checkpoint_dir or not uses_ray_data(cfg.data) or not cfg.data.get("test_fraction"):
        return {}
    from .evaluation import evaluate_test_split  # noqa: PLC0415 (imports Lightning)

    data = prepare_reusing(cfg.data, cfg.task)
    metrics = evaluate_test_split(cfg, data, checkpoint_dir)
    log.info("Test metrics of the best checkpoint: %s", metrics)
    return metrics


def resume_command(output_dir: str) -> str:
    """The command that continues this run: its overrides again (Hydra keeps its own, such as
    hydra.run.dir, apart), in its own folder."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return shlex.join(["python", "train.py", *overrides, f"hydra.run.dir={output_dir}"])


def write_result(summary: dict[str, Any], output_dir: str) -> Path:
    path = Path(output_dir) / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info("Final metrics: %s", summary["metrics"])
    log.info("Best checkpoint: %s", summary["best_checkpoint"])
    log.info("Summary written to %s", path)
    log.info("TensorBoard: tensorboard --logdir %s", output_dir)
    return path


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready metrics, without the placeholder of a metric the model does not log."""
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, int | float | str | bool) and not is_placeholder(v)
    }
