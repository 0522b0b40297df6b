"""The generated project's config, model and data, for baselines that do not use Ray.

Baselines compose the project's own Hydra config (with the same overrides as the run they are
compared with), build the same network and LightningModule, read the same data source and take
the same seeded train/validation split and standardisation. Only Ray is left out.
"""

import argparse
import importlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import TensorDataset

# A standard deviation below this leaves a column unscaled, as the project's preprocessing does.
MIN_STD = 1e-8


def mark(event: str, *values: Any) -> None:
    """A line the harness timestamps: `BENCH <event> <wall time> <values...>`."""
    print("BENCH", event, f"{time.time():.6f}", *values, flush=True)


def parser(description: str) -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(description=description)
    arguments.add_argument("--project", default=".", help="the generated project's folder")
    arguments.add_argument("--package", required=True, help="its importable package name")
    arguments.add_argument("--threads", type=int, default=1, help="torch threads")
    arguments.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py")
    return arguments


def load_config(project: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(
        os.path.abspath(os.path.join(project, "configs")), version_base="1.3"
    ):
        return compose("train", overrides=overrides)


@dataclass
class Data:
    train: TensorDataset
    val: TensorDataset
    input_shape: tuple[int, ...]
    num_classes: int


def load_data(package: str, cfg: DictConfig) -> Data:
    """The project's source, split and standardisation, as in-memory tensors."""
    split = importlib.import_module(f"{package}.data.split")
    preprocessing = importlib.import_module(f"{package}.data.preprocessing")
    source = instantiate(cfg.data.source, _convert_="all")
    frame = source.frame()
    columns = source.feature_columns
    features = frame[columns]
    val_mask = split.is_validation(features, cfg.data.val_fraction, cfg.data.split_seed)
    train_rows = features[~val_mask].to_numpy(np.float64)
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
    labels = frame[source.label_column].to_numpy(np.int64)
    num_classes = source.num_classes or int(labels.max()) + 1

    def tensors(mask: np.ndarray) -> TensorDataset:
        inputs = torch.from_numpy(transform(features[mask].to_numpy()))
        return TensorDataset(inputs, torch.from_numpy(labels[mask]))

    return Data(tensors(~val_mask), tensors(val_mask), input_shape, num_classes)


def build_network(cfg: DictConfig, data: Data) -> torch.nn.Module:
    return instantiate(cfg.model, input_shape=data.input_shape, num_classes=data.num_classes)


def setup(args: argparse.Namespace) -> DictConfig:
    sys.path.insert(0, os.path.abspath(os.path.join(args.project, "src")))
    torch.set_num_threads(args.threads)
    return load_config(args.project, args.overrides)
