"""Networks (plain `torch.nn` modules) and the LightningModule that trains them."""

from collections.abc import Sequence
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from .cnn import CNN
from .mlp import MLP

__all__ = ["CNN", "MLP", "METRICS", "Classifier", "build_net"]

# What each epoch's report holds: the Classifier's logged metrics, then the epoch and step that
# training/callbacks.py adds. checkpoint.metric and search.metric must name one of them, and
# are checked before Ray starts: a metric you log yourself belongs here too.
METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "epoch", "step")


def build_net(model_cfg: DictConfig, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """The network the `model` config group describes, for inputs of `input_shape`."""
    return instantiate(model_cfg, input_shape=tuple(input_shape), num_classes=num_classes)


def __getattr__(name: str) -> Any:
    # Importing Lightning takes seconds: only the processes that train (Ray Train workers) pay
    # for it, not the driver, sweep trials or serving replicas that merely build networks.
    if name == "Classifier":
        from .classifier import Classifier

        return Classifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
