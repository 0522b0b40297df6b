"""The worker's side of the data: its own shard of a split, as batches for Lightning.

Ray Train splits every dataset passed to the TorchTrainer across the workers
(`streaming_split(num_workers, equal=True)`): in each epoch a worker sees only its own rows,
and all workers get the same number of rows so that they take the same number of DDP steps. Up
to num_workers - 1 rows of a split are left out of an epoch for that.
"""

import math
from collections.abc import Iterator, Mapping
from typing import Any

import ray.train
import torch


class ShardBatches:
    """Iterable of (features, labels) batches over this worker's shard of `split`.

    Each pass (epoch) shuffles within a buffer of `shuffle_buffer` rows, seeded by `seed` and
    the epoch, so a 1-worker run repeats exactly. A buffer at least as large as the shard is a
    full shuffle; 0 keeps the stored order (use it for validation).

    With `cache`, the first pass reads the worker's whole shard into memory and every pass
    shuffles it there: Ray Data's start-up cost per pass (about 0.2 s on 2 cores, more than a
    whole epoch of the digits) is paid once. The worker keeps the rows of its first shard.

    `augment` (images: `{hflip: bool, crop_padding: int}`, see data/images.py) changes each
    batch at random, seeded like the shuffle. `world_size`: the workers sharing the split.
    """

    def __init__(
        self,
        split: str,
        batch_size: int,
        shuffle_buffer: int = 0,
        seed: int | None = None,
        prefetch_batches: int = 1,
        num_rows: int | None = None,
        cache: bool = False,
        augment: Mapping[str, Any] | None = None,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be at least 1, got {batch_size}")
        self.shard = ray.train.get_dataset_shard(split)
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.prefetch_batches = prefetch_batches
        self.num_rows = num_rows
        self.cache = cache
        self.cached: tuple[torch.Tensor, torch.Tensor] | None = None
        self.epoch = 0
        self.augment = dict(augment) if augment else None
        self.world_size = world_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self._batches()
        if not self.augment:
            return batches
        from .images import augment  # images only

        generator = torch.Generator()
        if self.seed is not None:
            generator.manual_seed(self.seed + 7919 * self.epoch)
        return (
            (augment(features, generator, **self.augment), labels) for features, labels in batches
        )

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seed = None if self.seed is None else self.seed + self.epoch
        self.epoch += 1
        if self.cache:
            # Read the whole shard up front: Lightning stops at len(self) batches without
            # exhausting the iterator, so a shard kept "at the end of a pass" was never kept.
            if self.cached is None:
                self.cached = self._read_shard()
            if self.cached is not None:
                yield from self._from_cache(seed)
            return
        batches = self.shard.iter_torch_batches(
            batch_size=self.batch_size,
            local_shuffle_buffer_size=self.shuffle_buffer or None,
            local_shuffle_seed=seed if self.shuffle_buffer else None,
            prefetch_batches=self.prefetch_batches,
        )
        for batch in batches:
            yield batch["features"], batch["label"]

    def _read_shard(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This worker's whole shard as two tensors, in stored order (None if it is empty)."""
        parts = [
            (batch["features"], batch["label"])
            for batch in self.shard.iter_torch_batches(
                batch_size=max(self.batch_size, 4096), prefetch_batches=self.prefetch_batches
            )
        ]
        if not parts:
            return None
        return torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts])

    def _from_cache(self, seed: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        features, labels = self.cached
        order = torch.arange(len(labels))
        if self.shuffle_buffer:
            generator = torch.Generator()
            if seed is not None:
                generator.manual_seed(seed)
            order = torch.randperm(len(labels), generator=generator)
        order = order.to(features.device)
        for start in range(0, len(labels), self.batch_size):
            rows = order[start : start + self.batch_size]
            yield features[rows], labels[rows]

    def __len__(self) -> int:
        # Lightning asks for the length; unknown for datasets streamed without materializing.
        if self.cached is not None:
            return math.ceil(len(self.cached[1]) / self.batch_size)
        if self.num_rows is None:
            raise TypeError("the number of rows of a streamed dataset is not known in advance")
        rows_per_worker = self.num_rows // self.world_size
        return math.ceil(rows_per_worker / self.batch_size)
