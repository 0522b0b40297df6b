"""In-memory datasets: features and labels as tensors, split into train/val by a seeded shuffle."""

from functools import cached_property

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class TensorDataModule(L.LightningDataModule):
    """Base for datasets that fit in memory. Subclasses implement `load()`.

    Under Ray Train, Lightning's distributed sampler gives each worker its own shard of the
    train split every epoch; the split itself depends only on `seed`, so it is the same in every
    worker and in every run.
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be at least 1, got {batch_size}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.seed = seed

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (features as float32, labels as int64 class indices)."""
        raise NotImplementedError

    @cached_property
    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.load()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self._tensors[0].shape[1:])

    @property
    def num_classes(self) -> int:
        return int(self._tensors[1].max()) + 1

    @cached_property
    def _splits(self) -> tuple[TensorDataset, TensorDataset]:
        features, labels = self._tensors
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(labels), generator=generator)
        num_val = max(1, int(len(labels) * self.val_fraction))
        val, train = order[:num_val], order[num_val:]
        return TensorDataset(features[train], labels[train]), TensorDataset(
            features[val], labels[val]
        )

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader(self._splits[0], shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._splits[1], shuffle=False)

    def _loader(self, dataset: TensorDataset, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )
