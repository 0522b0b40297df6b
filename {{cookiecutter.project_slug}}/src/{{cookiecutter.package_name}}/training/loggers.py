"""The run's trackers (configs/logger/): TensorBoard, CSV, MLflow, W&B, any set of them.

Each entry of `logger` is a Lightning logger built from its `_target_`; what a setting leaves at
null is filled in here from the run (its folder, the results folder, the environment). Lightning
writes to loggers on rank 0 only; HyperparametersToTensorBoard (callbacks.py) gives each the run's
flattened settings when the fit starts.

`check_trackers` runs in the driver before Ray starts: a tracker whose server cannot be reached
stops the run there, in one line. `driver_context` (driver side too) carries to the workers what
only the driver knows: MLFLOW_TRACKING_URI as train.py was given it (a worker of a cluster has
its own environment), and in a sweep, which sweep a trial belongs to and its values (Hydra knows
them there). Each trial is then one tracker run, tagged with its values and grouped under its
sweep (MLflow: an experiment named after the sweep's folder; W&B: a group of that name).

A run started again in its folder (to resume it, or restarted after a failure) continues its
tracker runs: the MLflow run tagged with that folder (found by the driver), and the W&B run whose
id the folder names.

A run's tracker runs end as the run ended (`end_runs`, in the worker): finished, also when a
sweep's scheduler stopped the trial, failed or killed. When its workers were killed before they
could say so (a stopped trial's worker group), the driver ends its MLflow run (`end_lost_runs`).
"""

import hashlib
import logging
import os
import socket
from typing import Any
from urllib.parse import urlparse

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..config import ConfigError

# The name of runs' MLflow experiment and W&B project when none is configured.
PROJECT = __name__.split(".", 1)[0]
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
RUN_DIR_TAG = "run_dir"  # the MLflow tag that names a run's folder


def build_loggers(cfg: DictConfig) -> list[Any]:
    """The Lightning loggers of `cfg.logger`, in the order configured (an empty list: none)."""
    _quiet_trackers()
    return [
        instantiate(node, **_filled_in(cfg, node))
        for node in (cfg.get("logger") or {}).values()
        if isinstance(node, DictConfig) and "_target_" in node
    ]


def log_settings(logger: Any, settings: dict[str, Any]) -> None:
    """Give a tracker the run's flattened settings (rank 0, when the fit starts).

    An MLflow run that is continued keeps its params, which MLflow never changes: only new ones
    are logged, and a setting changed since (e.g. a raised trainer.max_epochs) is kept as the tag
    `changed.<name>`."""
    if _kind_of(logger) == "MLFlowLogger":
        logged = logger.experiment.get_run(logger.run_id).data.params
        if logged:
            changed = {
                f"changed.{name}": str(value)
                for name, value in settings.items()
                if name in logged and logged[name] != str(value)
            }
            for name, value in changed.items():
                logger.experiment.set_tag(logger.run_id, name, value)
            settings = {name: value for name, value in settings.items() if name not in logged}
            if not settings:
                return
    logger.log_hyperparams(settings)


def _kind_of(logger: Any) -> str:
    return type(logger).__name__


def tensorboard_logger(cfg: DictConfig) -> Any:
    """The run's TensorBoard logger if it has one (the test split's metrics go there), else
    False (no logger)."""
    for node in (cfg.get("logger") or {}).values():
        if isinstance(node, DictConfig) and _kind(node) == "TensorBoardLogger":
            return instantiate(node)
    return False


def driver_context(cfg: DictConfig) -> dict[str, Any]:
    """What the workers' trackers need from the driver (`cfg.tracking` there)."""
    context = {
        "mlflow_tracking_uri": os.environ.get("MLFLOW_TRACKING_URI"),
        "sweep": sweep_of_run(cfg),
    }
    context["mlflow_run_id"] = _previous_mlflow_run(cfg, context["sweep"])
    return context


def _previous_mlflow_run(cfg: DictConfig, sweep: dict[str, Any] | None) -> str | None:
    """The MLflow run of this run's folder, if the folder was run before (resumed, restarted)."""
    run = _mlflow_run_of_folder(cfg, sweep)
    return run.info.run_id if run is not None else None


def _mlflow_run_of_folder(cfg: DictConfig, sweep: dict[str, Any] | None) -> Any:
    """The MLflow run tagged with this run's folder, if there is one (and MLflow is a tracker)."""
    node = next((n for n in (cfg.get("logger") or {}).values() if _kind(n) == "MLFlowLogger"), None)
    if node is None or node.get("run_id"):
        return None
    uri = mlflow_tracking_uri(cfg, node)
    if uri == _local_store(cfg) and not os.path.exists(uri[len("sqlite:///") :]):
        return None  # no local store yet: no run before this one
    folder = os.path.abspath(cfg.paths.output_dir)
    if "'" in folder:
        return None  # not expressible in MLflow's filter
    from mlflow.tracking import MlflowClient  # noqa: PLC0415 (only with an MLflow tracker)

    _quiet_trackers()
    client = MlflowClient(uri)
    name = node.get("experiment_name") or (sweep["sweep"] if sweep else PROJECT)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.{RUN_DIR_TAG} = '{folder}'", max_results=1
    )
    return runs[0] if runs else None


def run_status(error: BaseException | None) -> str:
    """How a run ended, in MLflow's words. A sweep's scheduler (ASHA) stops a trial with
    SystemExit(0) from `tune.report`: FINISHED at the epoch it reached, as a completed run.
    Ctrl-C (Lightning turns it into SystemExit(1)) is KILLED; any other error FAILED."""
    if error is None or (isinstance(error, SystemExit) and error.code in (0, None)):
        return "FINISHED"
    if isinstance(error, KeyboardInterrupt | SystemExit):
        return "KILLED"
    return "FAILED"


# W&B's run state follows the exit code a run finishes with (0: finished, else failed).
WANDB_EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "KILLED": 130}


def end_runs(loggers: list[Any], error: BaseException | None) -> None:
    """End the tracker runs of a fit that ended with `error` (None: completed); rank 0 only
    has them.

    Lightning ends a fit that raised as failed, whatever ended it, and finishes no W&B run then:
    MLflow gets the status `run_status` says, W&B its exit code. A W&B run is finished here in
    every case, so that its files are complete before the process (a Ray worker, a sweep's
    trial) moves on."""
    status = run_status(error)
    for logger in loggers:
        kind = _kind_of(logger)
        if kind == "MLFlowLogger" and error is not None:
            logger.finalize(status)  # MLflow's own status names pass through (rank 0 only)
        elif kind == "WandbLogger" and logger._experiment is not None:
            logger._experiment.finish(exit_code=WANDB_EXIT_CODES[status])


def end_lost_runs(cfg: DictConfig, error: BaseException) -> None:
    """In the driver, once a run has ended with `error`: an MLflow run of its folder still
    RUNNING lost its worker before it could say so (a sweep's scheduler stopped a worker
    group's trial: its workers are killed; a worker's process died), and gets its status here.
    """
    if not any(_kind(n) == "MLFlowLogger" for n in (cfg.get("logger") or {}).values()):
        return
    try:
        run = _mlflow_run_of_folder(cfg, sweep_of_run(cfg))
        if run is not None and run.info.status == "RUNNING":
            from mlflow.tracking import MlflowClient  # noqa: PLC0415 (only with MLflow)

            node = next(n for n in cfg.logger.values() if _kind(n) == "MLFlowLogger")
            MlflowClient(mlflow_tracking_uri(cfg, node)).set_terminated(
                run.info.run_id, run_status(error)
            )
    except Exception as problem:  # the run's own error matters more than its tracker's
        logging.getLogger(__name__).warning("Could not end the run's MLflow run: %s", problem)


def sweep_of_run(cfg: DictConfig) -> dict[str, Any] | None:
    """In a sweep's trial: the sweep's folder inside the results folder, and the trial's number
    and values (its command-line overrides). None for a single run."""
    from hydra.core.hydra_config import HydraConfig  # noqa: PLC0415
    from hydra.types import RunMode  # noqa: PLC0415

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra = HydraConfig.get()
    values = {}
    for override in hydra.overrides.task:
        key, _, value = override.lstrip("+~").partition("=")
        values[key] = value
    return {
        "sweep": _inside_results(cfg, hydra.sweep.dir),
        "trial": str(hydra.job.num),
        "values": values,
    }


def run_label(cfg: DictConfig) -> str:
    """The run's folder inside the results folder (runs/<date>/<time>, sweeps/<...>/<trial>):
    its name in MLflow and W&B."""
    return _inside_results(cfg, cfg.paths.output_dir)


def _inside_results(cfg: DictConfig, path: str) -> str:
    """`path` relative to the results folder if it is inside, else its last part."""
    path = os.path.abspath(path)
    results_dir = os.path.abspath(cfg.paths.results_dir)
    if path.startswith(results_dir + os.sep):
        return os.path.relpath(path, results_dir)
    return os.path.basename(path)


def mlflow_tracking_uri(cfg: DictConfig, node: DictConfig) -> str:
    """`tracking_uri` if set, else MLFLOW_TRACKING_URI (the driver's, then this process's),
    else the local store in the results folder."""
    if node.get("tracking_uri"):
        return str(node.tracking_uri)
    from_driver = OmegaConf.select(cfg, "tracking.mlflow_tracking_uri", default=None)
    if from_driver or os.environ.get("MLFLOW_TRACKING_URI"):
        return from_driver or os.environ["MLFLOW_TRACKING_URI"]
    return _local_store(cfg)


def _local_store(cfg: DictConfig) -> str:
    return f"sqlite:///{os.path.abspath(os.path.join(cfg.paths.results_dir, MLFLOW_DB))}"


def check_trackers(cfg: DictConfig) -> None:
    """Stop with one line when a tracker's server does not answer (before Ray starts): an MLflow
    tracking server, or the W&B host of a run that is online (an API key is set)."""
    for key, node in (cfg.get("logger") or {}).items():
        if not isinstance(node, DictConfig):
            continue
        kind = _kind(node)
        if kind == "MLFlowLogger":
            uri = mlflow_tracking_uri(cfg, node)
            settings = "logger.mlflow.tracking_uri / MLFLOW_TRACKING_URI"
            fix = f"start it, or set {settings} to one that runs"
            _check_reachable(uri, f"logger.{key}: the MLflow server at {uri}", fix)
        elif kind == "WandbLogger" and not _wandb_offline(node):
            url = os.environ.get("WANDB_BASE_URL") or WANDB_HOST
            fix = (
                "correct WANDB_BASE_URL, or run offline (logger.wandb.offline=true, or unset "
                "WANDB_API_KEY) and `wandb sync` later"
            )
            _check_reachable(url, f"logger.{key}: the W&B server at {url}", fix)


WANDB_HOST = "https://api.wandb.ai"  # W&B's own, when WANDB_BASE_URL names none
REACH_TIMEOUT_S = 5.0


def _wandb_offline(node: DictConfig) -> bool:
    """Whether a W&B run is written offline: as configured, else when no API key is set (or
    WANDB_MODE says so, which W&B obeys)."""
    if os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled"):
        return True
    if node.get("offline") is not None:
        return bool(node.offline)
    return not os.environ.get("WANDB_API_KEY")


def _check_reachable(url: str, what: str, fix: str) -> None:
    """Raise ConfigError "<what> cannot be reached (<why>); <fix>" if nothing accepts a
    connection at an http(s) `url`'s host and port (other URLs are not servers: left alone)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=REACH_TIMEOUT_S).close()
    except OSError as error:
        raise ConfigError(f"{what} cannot be reached ({error}); {fix}") from None


def _filled_in(cfg: DictConfig, node: DictConfig) -> dict[str, Any]:
    """The settings of a tracker that the config leaves to the run."""
    kind = _kind(node)
    sweep = OmegaConf.select(cfg, "tracking.sweep", default=None)  # from driver_context
    if kind == "MLFlowLogger":
        filled = {"tracking_uri": mlflow_tracking_uri(cfg, node)}
        if filled["tracking_uri"].startswith("sqlite:///"):
            # SQLite creates the database file, not its folder.
            os.makedirs(os.path.dirname(filled["tracking_uri"][len("sqlite:///") :]), exist_ok=True)
        if not node.get("experiment_name"):
            filled["experiment_name"] = sweep.sweep if sweep else PROJECT
        if not node.get("run_name"):
            filled["run_name"] = run_label(cfg)
        if not node.get("artifact_location") and filled["tracking_uri"] == _local_store(cfg):
            folder = os.path.abspath(os.path.join(cfg.paths.results_dir, MLFLOW_ARTIFACTS))
            filled["artifact_location"] = f"file://{folder}"
        tags = node.get("tags")
        filled["tags"] = OmegaConf.to_container(tags, resolve=True) if tags else {}
        if sweep:
            filled["tags"] = {
                "sweep": sweep.sweep,
                "trial": sweep.trial,
                **sweep["values"],
                **filled["tags"],
            }
        filled["tags"][RUN_DIR_TAG] = os.path.abspath(cfg.paths.output_dir)
        previous = OmegaConf.select(cfg, "tracking.mlflow_run_id", default=None)
        if previous and not node.get("run_id"):
            filled["run_id"] = previous  # the same folder again: carry on in its MLflow run
        return filled
    if kind == "WandbLogger":
        filled = {}
        if node.get("offline") is None:
            filled["offline"] = _wandb_offline(node)
        if not node.get("name"):
            filled["name"] = run_label(cfg)
        if not node.get("id"):
            # One W&B run per run folder: started again there, it carries on (resume="allow").
            folder = os.path.abspath(cfg.paths.output_dir)
            filled["id"] = hashlib.sha256(f"{node.project}:{folder}".encode()).hexdigest()[:16]
        if sweep and not node.get("group"):
            filled["group"] = sweep.sweep
        if sweep and not node.get("tags"):
            # W&B tags are short labels: each trial value as key=value.
            filled["tags"] = [f"{key}={value}"[:64] for key, value in sweep["values"].items()]
        if node.get("save_dir"):
            os.makedirs(node.save_dir, exist_ok=True)
        return filled
    return {}


def _kind(node: DictConfig) -> str:
    """The class name of a tracker's `_target_` (read, not imported: the driver checks trackers
    without importing Lightning)."""
    return str(node.get("_target_", "")).rsplit(".", 1)[-1]


def _quiet_trackers() -> None:
    """MLflow's database set-up notices and W&B's start-up lines, each run: warnings only."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its level on import
    os.environ.setdefault("WANDB_SILENT", "true")
    for name in ("mlflow", "alembic", "wandb"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # "Experiment with name ... not found. Creating it.": the first run of a new experiment.
    logging.getLogger("lightning.pytorch.loggers.mlflow").setLevel(logging.ERROR)
