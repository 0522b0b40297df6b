"""The train/validation(/test) split: a row's side depends only on its feature values and the seed.

Hashing the contents, instead of shuffling row positions, makes the split the same in every run
whatever the number of workers, files, blocks or read order, and keeps identical rows on the
same side so that duplicates cannot leak validation rows into training. The validation share is
`val_fraction` up to sampling noise (about 1% of the rows for a thousand rows).
"""

from collections.abc import Sequence

import numpy as np
import pandas as pd
import ray.data

TRAIN, VALIDATION, TEST = 0, 1, 2


def is_validation(features: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
    """For each row of `features`, whether it belongs to the validation split."""
    return sides(features, val_fraction, 0.0, seed) == VALIDATION


def sides(
    features: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """For each row of `features`, its split: TRAIN, VALIDATION or TEST. A row's validation
    side does not depend on `test_fraction`: the test rows come out of the training rows."""
    # Numbers as float64 first, so that an int column in a CSV and the same values as floats
    # agree; text (an image's path) as it is.
    keys = features.apply(
        lambda column: (
            column.astype(np.float64)
            if pd.api.types.is_numeric_dtype(column)
            else column.astype(str)
        )
    )
    hashes = pd.util.hash_pandas_object(keys, index=False).to_numpy()
    uniform = (_mix(hashes, seed) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    side = np.full(len(uniform), TRAIN, dtype=np.int8)
    side[uniform < val_fraction] = VALIDATION
    side[(uniform >= val_fraction) & (uniform < val_fraction + test_fraction)] = TEST
    return side


def _mix(hashes: np.ndarray, seed: int) -> np.ndarray:
    """Row hashes scrambled by the seed (splitmix64's finaliser; uint64 arithmetic wraps)."""
    mixed = hashes ^ np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return mixed ^ (mixed >> np.uint64(31))


class _KeepSide:
    """map_batches function keeping the rows of one side of the split."""

    def __init__(
        self,
        feature_columns: Sequence[str],
        val_fraction: float,
        test_fraction: float,
        seed: int,
        side: int,
    ) -> None:
        self.feature_columns = list(feature_columns)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.side = side

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        found = sides(batch[self.feature_columns], self.val_fraction, self.test_fraction, self.seed)
        return batch[found == self.side]


def split_table(
    table: ray.data.Dataset,
    feature_columns: Sequence[str],
    val_fraction: float,
    seed: int,
    test_fraction: float = 0.0,
) -> tuple[ray.data.Dataset, ray.data.Dataset, ray.data.Dataset | None]:
    """(train, validation, test) rows of `table`, seeded by `seed`; test is None without a
    `test_fraction`."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    if not 0.0 <= test_fraction < 1.0 - val_fraction:
        raise ValueError(
            f"data.test_fraction must be at least 0 and leave training rows beside "
            f"data.val_fraction={val_fraction}, got {test_fraction}"
        )
    wanted = (TRAIN, VALIDATION, TEST) if test_fraction > 0 else (TRAIN, VALIDATION)
    parts = [
        table.map_batches(
            _KeepSide(feature_columns, val_fraction, test_fraction, seed, side),
            batch_format="pandas",
        )
        for side in wanted
    ]
    return parts[0], parts[1], parts[2] if test_fraction > 0 else None
