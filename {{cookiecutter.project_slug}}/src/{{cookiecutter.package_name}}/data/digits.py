"""scikit-learn's bundled handwritten digits: 1,797 8x8 grey images of 0-9, no download needed."""

import torch
from sklearn.datasets import load_digits

from .base import TensorDataModule


class DigitsDataModule(TensorDataModule):
    """Images shaped (1, 8, 8) with pixel values scaled to [0, 1]; 10 classes."""

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        return images, torch.tensor(digits.target, dtype=torch.int64)
