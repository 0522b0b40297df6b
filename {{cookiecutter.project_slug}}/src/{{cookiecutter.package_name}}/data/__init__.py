"""Datasets as LightningDataModules. Each one says its `input_shape` and `num_classes`."""

from .base import TensorDataModule
from .digits import DigitsDataModule
from .synthetic import SyntheticDataModule

__all__ = ["DigitsDataModule", "SyntheticDataModule", "TensorDataModule"]
