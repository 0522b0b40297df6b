"""The driver's side of the data: read, check, split, fit preprocessing, produce Ray Datasets.

Two kinds of source: tables (a numeric column per feature) and images (data/images.py). The
task (tasks/) checks the labels and learns what it needs from the training rows.

`prepare(cfg.data, cfg.task)` runs in the driver of a training run. Its `train` and `val`
datasets go to Ray Train, which hands each worker its own shard of both (see loader.py). Runs
with the same data config share one preparation: a basic multirun's jobs, and a Ray Tune sweep's
trials, which get their driver's (`prepare_reusing`, `reuse_prepared`).
"""

import json
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray.data
import ray.train
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..tasks import Task
from .preprocessing import InputTransform, ToExamples, fit_transform
from .sources import DataError, TableSource, columns
from .split import split_table


@dataclass(frozen=True)
class PreparedData:
    """Training-ready datasets (columns `features` and `label`) and what the model needs to know."""

    train: ray.data.Dataset
    val: ray.data.Dataset
    transform: InputTransform
    label_column: str
    task: Task
    # Known when the datasets are materialized; each worker then knows its number of batches.
    train_rows: int | None = None
    val_rows: int | None = None
    # The held-out rows (data.test_fraction), evaluated once with the best checkpoint.
    test: ray.data.Dataset | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.transform.input_shape

    @property
    def num_outputs(self) -> int:
        return self.task.num_outputs

    def worker_info(self) -> dict[str, Any]:
        """What each training worker needs besides its shards, as plain values."""
        return {
            "input_shape": list(self.input_shape),
            "num_outputs": self.num_outputs,
            "train_rows": self.train_rows,
            "val_rows": self.val_rows,
            "task": self.task.state(),
            "inputs": {**self.transform.state(), "label_column": self.label_column},
        }

    @staticmethod
    def ingest_config(num_workers: int) -> ray.train.DataConfig:
        """How Ray Train hands the splits to the workers, with the Ray Data options of prepare().

        Several workers each get a shard (`streaming_split`, which starts a coordinator actor
        per split). A single worker reads each split whole, without those two extra processes:
        on a small machine, starting processes is most of what a short run or a sweep trial
        costs.
        """
        with warnings.catch_warnings():
            # Ray's own defaults pass on an option Ray has deprecated; nothing to act on here.
            warnings.filterwarnings("ignore", message=r"`ExecutionOptions.exclude_resources`")
            options = ray.train.DataConfig.default_ingest_options()
        return ray.train.DataConfig(
            datasets_to_split="all" if num_workers > 1 else [], execution_options=options
        )

    def check_shards(self, num_workers: int) -> None:
        """Every worker must get at least one row of each split, or Lightning stops on that rank."""
        for split, rows in (("train", self.train_rows), ("val", self.val_rows)):
            if rows is not None and rows < num_workers:
                raise DataError(
                    f"the {split} split has {rows} rows, fewer than the {num_workers} workers; "
                    f"use more data, fewer workers or another data.val_fraction"
                )


# Where Ray Data warns, once in every process, that its progress bars are off.
PROGRESS_NOTICE_LOGGER = "ray.data._internal.progress"


def configure_context(data_cfg: DictConfig) -> None:
    """This process's Ray Data options; Ray Train carries them to the workers (ingest_config)."""
    context = ray.data.DataContext.get_current()
    # Otherwise every worker prints multi-line progress bars for each split in every epoch, and
    # on a small machine forwarding them to the driver costs more than the epoch itself.
    context.enable_progress_bars = False
    hide_progress_notice()
    # Not two lines for every dataset as it starts (its id, its operators; the Ray dashboard
    # shows both): only the one that says it finished, and how fast.
    context.print_on_execution_start = False
    # Blocks in a fixed order, not as they finish: the same seed then gives the same statistics,
    # batches and metrics.
    context.execution_options.preserve_order = bool(data_cfg.preserve_order)


def hide_progress_notice() -> None:
    """Spare this process's console Ray Data's notice that the progress bars are off (as set
    in configure_context, on purpose); its other warnings still show."""
    logging.getLogger(PROGRESS_NOTICE_LOGGER).setLevel(logging.ERROR)


def build_source(data_cfg: DictConfig) -> Any:
    """The `data.source` object: a TableSource, or an image source (data/images.py)."""
    return instantiate(data_cfg.source, _convert_="all")


def uses_ray_data(data_cfg: DictConfig) -> bool:
    """False when a LightningDataModule (`data.datamodule`) or the model's own dataloaders
    (`data=none`) feed the workers instead of a `data.source` read with Ray Data."""
    return data_cfg.get("source") is not None


def build_task(task_cfg: DictConfig) -> Task:
    return instantiate(task_cfg, _convert_="all")


def prepare(data_cfg: DictConfig, task_cfg: DictConfig, keep_here: bool = False) -> PreparedData:
    """Read `data_cfg.source`, check it, split it, fit the preprocessing and the task on the
    train split.

    `keep_here`: the materialized splits are made on this process's node where it has a CPU
    (else anywhere). A node lost during training then takes none of them with it: Ray would
    make a lost block again with the task that made it, which needs a CPU, and a worker group
    restarted on the nodes left may hold every CPU there is (seen: the run waited forever).
    """
    configure_context(data_cfg)
    source = build_source(data_cfg)
    task = build_task(task_cfg)
    table = source.read()
    images = getattr(source, "kind", "table") == "image"
    if images:
        split_columns = list(source.split_columns)
    else:
        split_columns = check_columns(table, source)
    if data_cfg.materialize:
        # Read once; the label check, split, fitting and transform all reuse the blocks.
        table = table.materialize()
    declared = getattr(source, "num_classes", None)
    if declared is not None and getattr(task, "num_classes", False) is None:
        task.num_classes = declared  # the data says how many classes there are
    task.check_labels(table, source.label_column)  # all rows, the validation rows' too
    train_table, val_table, test_table = split_table(
        table,
        split_columns,
        data_cfg.val_fraction,
        data_cfg.split_seed,
        test_fraction=float(data_cfg.get("test_fraction") or 0.0),
    )
    task.fit(train_table, source.label_column)
    if images:
        transform = source.fit_transform(train_table, data_cfg.preprocess)
    else:
        input_shape = source.input_shape or (len(split_columns),)
        if math.prod(input_shape) != len(split_columns):
            raise DataError(
                f"data.source.input_shape {list(input_shape)} holds {math.prod(input_shape)} "
                f"values, but there are {len(split_columns)} feature columns"
            )
        transform = fit_transform(train_table, split_columns, input_shape, data_cfg.preprocess)
    to_examples = ToExamples(transform, source.label_column, task.label_dtype)
    placed = this_node() if keep_here and data_cfg.materialize else {}
    train = train_table.map_batches(to_examples, batch_format="numpy", **placed)
    val = val_table.map_batches(to_examples, batch_format="numpy", **placed)
    test = None if test_table is None else test_table.map_batches(to_examples, batch_format="numpy")
    counts: tuple[int | None, int | None] = (None, None)
    if data_cfg.materialize:
        # Preprocessed once here instead of again in every epoch.
        train, val = train.materialize(), val.materialize()
        counts = (train.count(), val.count())
        for split, rows in zip(("train", "val"), counts, strict=True):
            if rows == 0:
                raise DataError(f"the {split} split is empty; adjust data.val_fraction")
    return PreparedData(train, val, transform, source.label_column, task, *counts, test=test)


def this_node() -> dict[str, Any]:
    """Ray task options that run a task on this process's node if it has room, else anywhere."""
    node = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}


_last_prepared: tuple[str, PreparedData] | None = None


def prepare_reusing(
    data_cfg: DictConfig, task_cfg: DictConfig, keep_here: bool = False
) -> PreparedData:
    """`prepare`, or this process's previous result if it was for the same data config.

    The jobs of Hydra's basic multirun (`-m` without a search) usually share their data config;
    they then read, check, split and preprocess once. A Ray Tune sweep's trials are handed the
    sweep driver's preparation (`reuse_prepared`). Only the latest preparation is kept, so a
    sweep over data configs holds one at a time. A source file that changes while the process
    runs is not read again. `keep_here`: see `prepare` (a reused preparation is kept as made).
    """
    global _last_prepared
    key = _data_key(data_cfg, task_cfg)
    if _last_prepared is None or _last_prepared[0] != key:
        _last_prepared = None  # let the previous datasets go before making new ones
        _last_prepared = (key, prepare(data_cfg, task_cfg, keep_here))
    else:
        configure_context(data_cfg)  # prepared in another process, or the context was changed
    return _last_prepared[1]


def reuse_prepared(data_cfg: DictConfig, task_cfg: DictConfig, data: PreparedData) -> None:
    """Make `prepare_reusing(data_cfg, task_cfg)` in this process return `data`, prepared
    elsewhere."""
    global _last_prepared
    _last_prepared = (_data_key(data_cfg, task_cfg), data)


def _data_key(data_cfg: DictConfig, task_cfg: DictConfig) -> str:
    # Resolved where they are: their interpolations may point anywhere in the whole config.
    resolved = {
        "data": OmegaConf.to_container(data_cfg, resolve=True),
        "task": OmegaConf.to_container(task_cfg, resolve=True),
    }
    return json.dumps(resolved, sort_keys=True, default=str)


def check_columns(table: ray.data.Dataset, source: TableSource) -> list[str]:
    """The feature columns, after checking that they and the label column exist and are numeric."""
    schema = table.schema()
    types = dict(zip(schema.names, schema.types, strict=True))
    wanted = [source.label_column] + (source.feature_columns or [])
    missing = [column for column in wanted if column not in types]
    if missing:
        raise DataError(
            f"column(s) {columns(missing)} not found in the data; it has: "
            f"{columns(schema.names)}. Set data.source.feature_columns / label_column."
        )
    features = source.feature_columns or [c for c in schema.names if c != source.label_column]
    if not features:
        raise DataError(f"the data has no columns besides the label {source.label_column!r}")
    not_numeric = [c for c in features if not _is_numeric(types[c])]
    if not_numeric:
        raise DataError(
            f"feature column(s) {columns(not_numeric)} are not numeric "
            f"({columns([str(types[c]) for c in not_numeric])}); encode them first or leave "
            f"them out of data.source.feature_columns"
        )
    return features


def _is_numeric(arrow_type: Any) -> bool:
    if not isinstance(arrow_type, pa.DataType):
        return np.issubdtype(np.dtype(arrow_type), np.number)
    return (
        pa.types.is_integer(arrow_type)
        or pa.types.is_floating(arrow_type)
        or pa.types.is_boolean(arrow_type)
        or pa.types.is_decimal(arrow_type)
    )
