"""The generated project's config, model and data, for baselines that do not use Ray.

Baselines compose the project's own Hydra config (with the same overrides as the run they are
compared with), build the same network, task and LightningModule (the project's TaskModule),
read the same data source and take the same seeded train/validation split and standardisation.
They feed it the way the project's worker does (`MemoryBatches`: whole batches sliced from
tensors in memory, a seeded permutation per epoch). Only Ray is left out. Table data and
classification only: the default project's digits and synthetic blobs.
"""

import argparse
import importlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

# A standard deviation below this leaves a column unscaled, as the project's preprocessing does.
MIN_STD = 1e-8


def mark(event: str, *values: Any) -> None:
    """A line the harness timestamps: `BENCH <event> <wall time> <values...>`."""
    print("BENCH", event, f"{time.time():.6f}", *values, flush=True)


def parser(description: str) -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(description=description)
    arguments.add_argument("--project", default=".", help="the generated project's folder")
    arguments.add_argument("--package", required=True, help="its importable package name")
    arguments.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default, all cores)"
    )
    arguments.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    return arguments


def load_config(project: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(
        os.path.abspath(os.path.join(project, "configs")), version_base="1.3"
    ):
        return compose("train", overrides=overrides)


class MemoryBatches:
    """(features, labels) batches sliced from two in-memory tensors, as the project's worker
    feeds Lightning (data/loader.py, `ShardBatches` with `cache_in_worker`): each pass takes a
    permutation seeded by `seed` and the pass number (or the stored order without `shuffle`),
    then gathers `batch_size` rows at a time. No per-sample indexing, no collation."""

    def __init__(
        self,
        tensors: tuple[torch.Tensor, torch.Tensor],
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        self.features, self.labels = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rows = len(self.labels)
        order = torch.arange(rows)
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(rows, generator=generator)
        self.epoch += 1
        for start in range(0, rows, self.batch_size):
            picked = order[start : start + self.batch_size]
            yield self.features[picked], self.labels[picked]

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)


@dataclass
class Data:
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    input_shape: tuple[int, ...]
    task: Any  # the project's Task, its number of classes set from the data

    def batches(self, batch_size: int, seed: int) -> tuple[MemoryBatches, MemoryBatches]:
        """Training batches shuffled per epoch, validation batches in stored order."""
        return (
            MemoryBatches(self.train, batch_size, shuffle=True, seed=seed),
            MemoryBatches(self.val, batch_size),
        )


def load_data(package: str, cfg: DictConfig) -> Data:
    """The project's source, split, standardisation and task, as in-memory tensors."""
    split = importlib.import_module(f"{package}.data.split")
    preprocessing = importlib.import_module(f"{package}.data.preprocessing")
    source = instantiate(cfg.data.source, _convert_="all")
    task = instantiate(cfg.task, _convert_="all")
    frame = source.frame()
    columns = source.feature_columns
    features = frame[columns]
    # The project's split; rows it holds out for a test (data.test_fraction) train neither arm.
    test_fraction = float(cfg.data.get("test_fraction") or 0.0)
    side = split.sides(features, cfg.data.val_fraction, test_fraction, cfg.data.split_seed)
    train_mask, val_mask = side == split.TRAIN, side == split.VALIDATION
    train_rows = features[train_mask].to_numpy(np.float64)
    mean, std = None, None
    if cfg.data.preprocess == "standard":
        mean = train_rows.mean(axis=0)
        std = train_rows.std(axis=0)
        std = np.where(std >= MIN_STD, std, 1.0)
    input_shape = tuple(source.input_shape or (len(columns),))
    transform = preprocessing.Transform(
        feature_columns=tuple(columns),
        input_shape=input_shape,
        mean=None if mean is None else tuple(mean),
        std=None if std is None else tuple(std),
    )
    labels = frame[source.label_column].to_numpy(task.label_dtype)
    if getattr(task, "num_classes", False) is None:  # as the project's data preparation does
        task.num_classes = source.num_classes or int(labels.max()) + 1

    def tensors(mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.from_numpy(transform(features[mask].to_numpy()))
        return inputs, torch.from_numpy(labels[mask])

    return Data(tensors(train_mask), tensors(val_mask), input_shape, task)


def build_network(package: str, cfg: DictConfig, data: Data) -> torch.nn.Module:
    models = importlib.import_module(f"{package}.models")
    return models.build_model(cfg.model, data.input_shape, data.task.num_outputs)


def build_module(package: str, cfg: DictConfig, data: Data) -> Any:
    """The project's TaskModule around the configured network, optimizer and scheduler."""
    module = importlib.import_module(f"{package}.tasks.module")
    scheduler = instantiate(cfg.scheduler) if "_target_" in cfg.get("scheduler", {}) else None
    return module.TaskModule(
        build_network(package, cfg, data), data.task, instantiate(cfg.optimizer), scheduler
    )


def set_threads(threads: int) -> int:
    """Set torch's intra-op threads (0: leave torch's default); the count in effect."""
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def setup(args: argparse.Namespace) -> DictConfig:
    sys.path.insert(0, os.path.abspath(os.path.join(args.project, "src")))
    set_threads(args.threads)
    return load_config(args.project, args.overrides)
