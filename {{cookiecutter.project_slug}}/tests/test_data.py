"""Datasets: shapes, seeded splits that never overlap, learnable synthetic data."""

import torch

from {{ cookiecutter.package_name }}.data import DigitsDataModule, SyntheticDataModule


def test_digits_shapes_and_range() -> None:
    data = DigitsDataModule(batch_size=32)
    assert data.input_shape == (1, 8, 8)
    assert data.num_classes == 10
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (32, 1, 8, 8) and labels.dtype == torch.int64
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_split_is_seeded_disjoint_and_complete() -> None:
    def split(seed: int) -> tuple[set, set]:
        train, val = DigitsDataModule(seed=seed, val_fraction=0.25)._splits
        key = lambda dataset: {tuple(row.flatten().tolist()) + (int(y),) for row, y in dataset}  # noqa: E731
        return key(train), key(val)

    train, val = split(0)
    again_train, again_val = split(0)
    other_train, _ = split(1)
    assert (train, val) == (again_train, again_val)
    assert train != other_train
    assert not train & val
    assert len(DigitsDataModule(seed=0, val_fraction=0.25)._splits[1]) == int(1797 * 0.25)


def test_synthetic_sizes_from_config() -> None:
    data = SyntheticDataModule(num_samples=100, input_shape=(1, 4, 4), num_classes=3, seed=0)
    assert data.input_shape == (1, 4, 4)
    assert data.num_classes == 3
    features, labels = data.load()
    assert features.shape == (100, 1, 4, 4)
    assert set(labels.tolist()) == {0, 1, 2}
