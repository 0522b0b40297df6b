"""Networks (plain `torch.nn` modules) and the LightningModule that trains them."""

from typing import Any

from .cnn import CNN
from .mlp import MLP

__all__ = ["CNN", "MLP", "Classifier"]


def __getattr__(name: str) -> Any:
    # Importing Lightning takes seconds: only the processes that train (Ray Train workers) pay
    # for it, not the driver, sweep trials or serving replicas that merely build networks.
    if name == "Classifier":
        from .classifier import Classifier

        return Classifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
