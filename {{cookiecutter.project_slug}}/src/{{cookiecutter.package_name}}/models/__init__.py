"""Networks (plain `torch.nn` modules) and the LightningModule that trains them."""

from .classifier import Classifier
from .cnn import CNN
from .mlp import MLP

__all__ = ["CNN", "MLP", "Classifier"]
