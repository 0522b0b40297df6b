"""The models: plain `torch.nn` networks, and LightningModules of your own.

mlp.py, cnn.py   networks; the task (tasks/) adds the loss, metrics and optimizer around them
<yours>.py       a network, or a whole LightningModule with its own steps and optimizers

`configs/model/<name>.yaml` names either by `_target_`. Its constructor is given the data's
`input_shape` and the task's `num_outputs` (or `num_classes`) if it has parameters of those
names; everything else comes from the yaml. Serving and batch prediction rebuild only classes
from this package (checkpoints.py).
"""

import importlib
import inspect
from collections.abc import Sequence
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from .cnn import CNN
from .mlp import MLP

__all__ = ["CNN", "MLP", "build_model", "is_lightning_module", "model_class", "size_arguments"]


def model_class(model_cfg: DictConfig | dict) -> type:
    """The class `_target_` names (imported, not built)."""
    target = str(model_cfg.get("_target_", ""))
    module_name, _, class_name = target.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


def is_lightning_module(cls: type) -> bool:
    """True for a LightningModule subclass; told by name so that plain networks never make
    this process import Lightning (seconds of start-up)."""
    return any(
        base.__name__ == "LightningModule" and base.__module__.startswith(("lightning", "pytorch_"))
        for base in inspect.getmro(cls)
    )


def size_arguments(
    cls: type, input_shape: Sequence[int] | None, num_outputs: int | None
) -> dict[str, Any]:
    """The data's sizes for the constructor parameters of `cls` that take them."""
    sizes = {
        "input_shape": None if input_shape is None else tuple(int(s) for s in input_shape),
        "num_outputs": num_outputs,
        "num_classes": num_outputs,
    }
    parameters = inspect.signature(cls).parameters
    return {
        name: value for name, value in sizes.items() if name in parameters and value is not None
    }


def build_model(
    model_cfg: DictConfig, input_shape: Sequence[int] | None, num_outputs: int | None
) -> Any:
    """The network or LightningModule the `model` config group describes, for this data."""
    sizes = size_arguments(model_class(model_cfg), input_shape, num_outputs)
    # Plain lists and dicts, not OmegaConf's: a module's save_hyperparameters() then writes
    # values that torch.load(weights_only=True) reads back when serving.
    return instantiate(model_cfg, **sizes, _convert_="all")
