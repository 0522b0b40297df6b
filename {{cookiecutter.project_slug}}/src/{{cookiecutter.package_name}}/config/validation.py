"""Catch bad config values before Ray starts, with one clear line per problem.

Hydra already refuses overrides of keys that do not exist and options a group does not have.
What is left is checked here:
- the fixed sections (scaling, checkpoint, fault_tolerance, trainer's epochs) against typed
  schemas: wrong types and unknown keys;
- every node with a `_target_` (model, data, optimizer, schedulers, ...) against the signature
  of what it builds: unknown keys, and numbers where the parameter's default is a number;
- values that can never work: a learning rate <= 0, zero workers, a batch size of 0, ...;
- mandatory values (`???`) left unset.
"""

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..models import is_lightning_module

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}

# Lightning Trainer arguments the project sets itself, and the setting that owns each.
TRAINER_OWNERS = {
    "accelerator": "scaling.use_gpu (true: GPUs, false: CPUs)",
    "devices": "scaling.num_workers (one device per worker; scaling=local: one process)",
    "num_nodes": "scaling.num_workers (Ray places the workers on the cluster's nodes)",
    "strategy": "scaling.strategy (ddp, fsdp or deepspeed) and scaling.strategy_options",
    "plugins": "the scaling preset (the cluster environment; scaling.strategy_options)",
    "logger": "the logger group (logger=tensorboard, csv, mlflow, wandb, many, none)",
    "callbacks": "the callbacks group (callbacks=early_stopping, +callbacks.<name>._target_=...)",
    "enable_checkpointing": "checkpoint (checkpoint.every_n_epochs, checkpoint.num_to_keep)",
    "default_root_dir": "paths (paths.results_dir; a run's folder is hydra.run.dir)",
}
# Trainer arguments the shipped configs set: checked without importing Lightning (seconds) in the
# driver; any other key is looked up in lightning.Trainer's signature.
SHIPPED_TRAINER_ARGUMENTS = frozenset(
    {
        "max_epochs", "precision", "gradient_clip_val", "accumulate_grad_batches",
        "limit_train_batches", "limit_val_batches", "log_every_n_steps", "deterministic",
        "enable_progress_bar", "enable_model_summary", "overfit_batches", "profiler",
    }
)  # fmt: skip
STRATEGIES = ("ddp", "fsdp", "deepspeed")
# Precisions that need a GPU: torch's CPU autocast is bfloat16 only.
GPU_PRECISIONS = {"16-mixed", "16", "16-true", "transformer-engine", "transformer-engine-float16"}
# Trackers (configs/logger/) and the package each needs.
TRACKER_PACKAGES = {"MLFlowLogger": "mlflow", "WandbLogger": "wandb", "CometLogger": "comet_ml"}


class ConfigError(CompactHydraException, ValueError):
    """The config cannot work; the message lists every problem found.

    Compact: `train.py` prints the message alone, without a traceback.
    """


@dataclass
class ScalingSchema:
    name: str = "custom"
    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    threads_per_worker: int | None = None
    placement_strategy: str = "PACK"
    accelerator_type: str | None = None
    strategy: str = "ddp"
    strategy_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckpointSchema:
    every_n_epochs: int = 1
    num_to_keep: int | None = None
    metric: str = "val_loss"
    mode: str = "min"


@dataclass
class FaultToleranceSchema:
    max_failures: int = 0


SCHEMAS = {
    "scaling": ScalingSchema,
    "checkpoint": CheckpointSchema,
    "fault_tolerance": FaultToleranceSchema,
}

# (config key, test, what it must be). Keys that are absent are not checked.
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    (
        "scaling.num_workers",
        lambda v: v >= 0,
        "at least 1, or 0 for one process without a worker group (scaling=local)",
    ),
    ("scaling.threads_per_worker", lambda v: v is None or v >= 1, "null or at least 1"),
    (
        "scaling.placement_strategy",
        lambda v: v in {"PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"},
        "one of PACK, SPREAD, STRICT_PACK, STRICT_SPREAD",
    ),
    (
        "scaling.strategy",
        lambda v: v in STRATEGIES,
        "one of ddp, fsdp, deepspeed (Ray's Lightning strategies)",
    ),
    ("checkpoint.every_n_epochs", lambda v: v >= 1, "at least 1"),
    ("checkpoint.num_to_keep", lambda v: v is None or v >= 1, "null or at least 1"),
    ("checkpoint.mode", lambda v: v in {"min", "max"}, "min or max"),
    ("fault_tolerance.max_failures", lambda v: v >= -1, "-1 (retry forever) or more"),
    ("trainer.max_epochs", lambda v: isinstance(v, int) and v >= 1, "an integer of at least 1"),
    ("optimizer.lr", lambda v: _number(v) and v > 0, "a number above 0"),
    ("optimizer.weight_decay", lambda v: _number(v) and v >= 0, "a number of at least 0"),
    ("data.batch_size", lambda v: isinstance(v, int) and v >= 1, "an integer of at least 1"),
    ("data.val_fraction", lambda v: _number(v) and 0 < v < 1, "a number between 0 and 1"),
    ("data.test_fraction", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("model.hidden_dim", lambda v: isinstance(v, int) and v >= 1, "an integer of at least 1"),
    ("model.num_layers", lambda v: isinstance(v, int) and v >= 0, "an integer of at least 0"),
    ("model.dropout", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("search.num_samples", lambda v: isinstance(v, int) and v >= 1, "an integer of at least 1"),
    ("search.mode", lambda v: v in {"min", "max"}, "min or max"),
    ("search.reuse_actors", lambda v: isinstance(v, bool), "true or false"),
    ("search.shuffle_grid", lambda v: isinstance(v, bool), "true or false"),
]


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming every problem in `cfg` (the composed config of train.py)."""
    problems = [*_missing(cfg), *_schemas(cfg)]
    if not problems:  # values are only meaningful once their types are right
        problems += _rules(cfg) + _local_mode(cfg) + _splits(cfg)
        problems += _monitors(cfg) + _optimizer_of_own_module(cfg)
        problems += _trainer_options(cfg) + _strategy(cfg) + _trackers(cfg)
        checked = {problem.split(" ", 1)[0] for problem in problems}
        problems += [
            problem
            for node_key, node in _targets(cfg)
            for problem in _signature(node_key, node)
            if problem.split(" ", 1)[0] not in checked
        ]
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigError(f"Invalid config ({len(problems)} problem(s)):\n{lines}")


def _trainer_options(cfg: DictConfig) -> list[str]:
    """Every key of `trainer` must be a Lightning Trainer argument that the project leaves to
    the run; a precision that needs GPUs is refused on CPUs."""
    trainer = cfg.get("trainer")
    if not isinstance(trainer, DictConfig):
        return []
    problems = []
    for name in trainer:
        if name in TRAINER_OWNERS:
            problems.append(
                f"trainer.{name} is set by the project: choose it with {TRAINER_OWNERS[name]}"
            )
        elif name not in SHIPPED_TRAINER_ARGUMENTS and name not in (known := trainer_arguments()):
            options = ", ".join(sorted(known - set(TRAINER_OWNERS)))
            problems.append(
                f"trainer.{name} is not an argument of lightning.Trainer (it takes: {options})"
            )
    precision = str(trainer.get("precision", "32-true"))
    if precision in GPU_PRECISIONS and not OmegaConf.select(cfg, "scaling.use_gpu", default=False):
        problems.append(
            f"trainer.precision={precision} needs GPUs (scaling.use_gpu=true): CPUs compute in "
            "bfloat16 only, use trainer.precision=bf16-mixed there, or 32-true"
        )
    return problems


def trainer_arguments() -> set[str]:
    """The keyword arguments of lightning.Trainer."""
    from lightning import Trainer  # noqa: PLC0415 (seconds to import: only when needed)

    return set(inspect.signature(Trainer.__init__).parameters) - {"self"}


def _strategy(cfg: DictConfig) -> list[str]:
    """FSDP and DeepSpeed shard a model across the GPUs of a worker group."""
    strategy = OmegaConf.select(cfg, "scaling.strategy", default="ddp")
    if strategy not in ("fsdp", "deepspeed"):
        return []
    problems = []
    if not OmegaConf.select(cfg, "scaling.use_gpu", default=False):
        problems.append(
            f"scaling.strategy={strategy} needs GPUs: choose a GPU preset (e.g. scaling=4gpu "
            f"scaling.strategy={strategy}) or scaling.strategy=ddp on CPUs"
        )
    if OmegaConf.select(cfg, "scaling.num_workers", default=1) == 0:
        problems.append(
            f"scaling.strategy={strategy} runs in a worker group, and scaling.num_workers=0 "
            "(scaling=local) trains in this process: set scaling.num_workers to 1 or more"
        )
    if strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        problems.append(
            "scaling.strategy=deepspeed needs the deepspeed package, not installed here: "
            "pip install deepspeed"
        )
    return problems


def _trackers(cfg: DictConfig) -> list[str]:
    """Each tracker's package must be installed (mlflow, wandb: the project's extras)."""
    problems = []
    for name, node in (cfg.get("logger") or {}).items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        package = TRACKER_PACKAGES.get(str(node._target_).rsplit(".", 1)[-1])
        if package and importlib.util.find_spec(package) is None:
            extra = package.replace("_", "-")
            problems.append(
                f"logger.{name} needs the {package} package, not installed here: "
                f"pip install -e '.[{extra}]' (or pip install {extra})"
            )
    return problems


def _missing(node: Any, key: str = "") -> list[str]:
    """Keys left at `???`, found without resolving anything (paths need Hydra's runtime)."""
    problems = []
    children = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for child in children:
        path = f"{key}.{child}" if key else str(child)
        if path == "hydra":
            continue
        if OmegaConf.is_missing(node, child):
            problems.append(f"{path} is mandatory (???): give it a value, e.g. {path}=...")
        elif isinstance(value := node._get_node(child), DictConfig | ListConfig):
            problems += _missing(value, path)
    return problems


def _schemas(cfg: DictConfig) -> list[str]:
    problems = []
    for section, schema in SCHEMAS.items():
        if section not in cfg:
            continue
        try:
            OmegaConf.merge(OmegaConf.structured(schema), cfg[section])
        except OmegaConfBaseException as error:
            problems.append(f"{section}: {first_line(error)}")
    return problems


def _rules(cfg: DictConfig) -> list[str]:
    problems = []
    for key, test, expected in RULES:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        try:
            ok = bool(test(value))
        except TypeError:
            ok = False
        if not ok:
            problems.append(f"{key} must be {expected}, got {value!r}")
    return problems


def _local_mode(cfg: DictConfig) -> list[str]:
    """What one process without a worker group (scaling.num_workers=0) cannot do."""
    if OmegaConf.select(cfg, "scaling.num_workers", default=1) != 0:
        return []
    failures = OmegaConf.select(cfg, "fault_tolerance.max_failures", default=0)
    if failures:
        return [
            f"fault_tolerance.max_failures={failures} restarts a worker group, and "
            "scaling=local (scaling.num_workers=0) trains in this process without one: use "
            "scaling=cpu to be restarted, or fault_tolerance.max_failures=0"
        ]
    return []


def _splits(cfg: DictConfig) -> list[str]:
    """The validation and test shares must leave rows to train on."""
    val = OmegaConf.select(cfg, "data.val_fraction", default=None)
    test = OmegaConf.select(cfg, "data.test_fraction", default=None)
    if _number(val) and _number(test) and 0 < val < 1 and 0 <= test < 1 and val + test >= 1:
        return [
            f"data.test_fraction={test} and data.val_fraction={val} leave no rows to train on: "
            "together they must stay below 1"
        ]
    return []


def reported_metrics(cfg: DictConfig) -> tuple[str, ...] | None:
    """The metrics every epoch reports for this config: the task's, for a network it trains
    (tasks/). None for a LightningModule of yours: what it logs is known once it runs."""
    if _own_module(cfg) is not None:
        return None
    try:
        task = _locate(cfg.task._target_)
    except (ImportError, AttributeError, ValueError):
        return None  # reported by _signature
    return task.reported_metrics()


def _own_module(cfg: DictConfig) -> str | None:
    """The class name of a LightningModule of yours as the model (None for a network)."""
    try:
        model = _locate(cfg.model._target_)
    except (ImportError, AttributeError, ValueError):
        return None
    return model.__name__ if is_lightning_module(model) else None


def _optimizer_of_own_module(cfg: DictConfig) -> list[str]:
    """A LightningModule of yours configures its own optimizer: optimizer and scheduler settings
    given on the command line would change nothing, so they are refused."""
    name = _own_module(cfg)
    if name is None or not HydraConfig.initialized():
        return []
    given = [
        override
        for override in HydraConfig.get().overrides.task
        if override.lstrip("+~").split("=", 1)[0].split(".", 1)[0] in ("optimizer", "scheduler")
    ]
    return [
        f"{override} changes nothing: {name} configures its own optimizer (its "
        "configure_optimizers); set its own parameters instead (model.<name>=...)"
        for override in given
    ]


def _monitors(cfg: DictConfig) -> list[str]:
    """Settings that name a metric (checkpoint.metric, search.metric, EarlyStopping's and a
    scheduler's `monitor`) must name a reported one."""
    metrics = reported_metrics(cfg)
    if metrics is None:
        return []
    watched = {"checkpoint.metric": OmegaConf.select(cfg, "checkpoint.metric")}
    if OmegaConf.select(cfg, "search.metric") is not None:
        watched["search.metric"] = cfg.search.metric
    for name, callback in (cfg.get("callbacks") or {}).items():
        if isinstance(callback, DictConfig) and "monitor" in callback:
            watched[f"callbacks.{name}.monitor"] = callback.monitor
    scheduler = cfg.get("scheduler")
    if isinstance(scheduler, DictConfig) and "monitor" in scheduler:
        watched["scheduler.monitor"] = scheduler.monitor
    task = cfg.task._target_.rsplit(".", 1)[-1].lower()
    return [
        f"{key} must be a metric every epoch reports for task={task} ({', '.join(metrics)}), "
        f"got {value!r}"
        for key, value in watched.items()
        if value is not None and value not in metrics
    ]


def _targets(node: Any, key: str = "") -> Iterator[tuple[str, DictConfig]]:
    """Every config node with a `_target_`, outside Hydra's own settings."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield key, node
        for child in node:
            if not key and child == "hydra":
                continue
            yield from _targets(node._get_node(child), f"{key}.{child}" if key else str(child))
    elif isinstance(node, ListConfig):
        for index, child in enumerate(node):
            yield from _targets(child, f"{key}[{index}]")


def _signature(key: str, node: DictConfig) -> list[str]:
    """Keys a `_target_` cannot take, and numbers given as something else."""
    target = node._target_
    try:
        parameters = inspect.signature(_locate(target)).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return [f"{key}._target_: cannot import {target!r}"]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        known = None  # takes **kwargs: any key may be meant for it
    else:
        known = set(parameters)
    problems = []
    for name in node:
        if name in HYDRA_KEYS:
            continue
        if known is not None and name not in known:
            options = ", ".join(sorted(known - {"self"}))
            problems.append(f"{key}.{name} is not a parameter of {target} (it takes: {options})")
            continue
        if OmegaConf.is_interpolation(node, name):
            continue  # resolved when the run starts (a path in the run's folder needs Hydra's)
        parameter = parameters.get(name)
        default = parameter.default if parameter is not None else None
        value = node[name]
        if _number(default) and not isinstance(default, bool) and not _number(value):
            if value is not None:
                problems.append(f"{key}.{name} must be a number, got {value!r}")
    return problems


def _locate(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        parent = _locate(module)  # a nested attribute, e.g. a class method
        return getattr(parent, name)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def first_line(error: Exception) -> str:
    """The first line of an exception's message, for one-line error reports."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "no detail"


class _Absent:
    pass


_ABSENT = _Absent()
