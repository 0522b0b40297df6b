"""An example of a LightningDataModule of your own: `python train.py data=digits_datamodule`.

A plain Lightning data module (tensors in memory, torch DataLoaders), as a researcher may already
have one. Named by `data.datamodule._target_`, it replaces the Ray Data pipeline: every Ray Train
worker builds it, and Lightning's distributed sampler gives each worker its share of the
batches. The network's input shape is read from its first training batch, the number of classes
from its `num_classes` attribute (or `task.num_classes`).
"""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset, random_split


class DigitsDataModule(L.LightningDataModule):
    """scikit-learn's digits as 1x8x8 float images in [0, 1], split at random by `seed`."""

    num_classes = 10

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.train: TensorDataset | None = None
        self.val: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return  # already set up (setup may be called more than once)
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
        labels = torch.tensor(digits.target, dtype=torch.int64)
        rows = TensorDataset(images, labels)
        num_val = int(len(rows) * self.val_fraction)
        generator = torch.Generator().manual_seed(self.seed)
        self.train, self.val = random_split(rows, [len(rows) - num_val, num_val], generator)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val, batch_size=self.batch_size)
