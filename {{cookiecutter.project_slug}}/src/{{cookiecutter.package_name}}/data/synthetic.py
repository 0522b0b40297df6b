"""Random but learnable data of any size, for tests and benchmarks."""

import torch

from .base import TensorDataModule


class SyntheticDataModule(TensorDataModule):
    """Each class is a Gaussian blob around its own random centre.

    `input_shape` is free: `[32]` gives feature vectors (for the MLP), `[1, 8, 8]` images (for
    the CNN). `noise` is the blobs' standard deviation relative to the distance between centres:
    higher is harder.
    """

    def __init__(
        self,
        num_samples: int = 4096,
        input_shape: tuple[int, ...] = (32,),
        num_classes: int = 10,
        noise: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if num_samples < 2:
            raise ValueError(f"data.num_samples must be at least 2, got {num_samples}")
        if num_classes < 2:
            raise ValueError(f"data.num_classes must be at least 2, got {num_classes}")
        self.num_samples = num_samples
        self.shape = tuple(input_shape)
        self.classes = num_classes
        self.noise = noise

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed)
        centres = torch.randn(self.classes, *self.shape, generator=generator)
        labels = torch.arange(self.num_samples) % self.classes
        labels = labels[torch.randperm(self.num_samples, generator=generator)]
        noise = torch.randn(self.num_samples, *self.shape, generator=generator) * self.noise
        return centres[labels] + noise, labels
