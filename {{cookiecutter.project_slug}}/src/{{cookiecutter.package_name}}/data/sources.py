"""Where the rows come from: each source reads one table of feature columns and a label column.

Every source gives the same shape of data, so splitting, preprocessing, training and batch
prediction never care where it came from: a Ray Dataset with one numeric column per feature and
an integer label column, plus `input_shape`, the shape the model sees after the feature columns
of a row are stacked (e.g. 64 pixel columns seen as one 1x8x8 image).
"""

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
import ray.data
from hydra.errors import CompactHydraException

# Rows per block for data generated in memory: several blocks let Ray Data work in parallel.
_ROWS_PER_BLOCK = 4096


class MissingDataError(CompactHydraException, FileNotFoundError):
    """A local data path does not exist (printed without a traceback)."""


class DataError(CompactHydraException, ValueError):
    """The data does not fit its config: a column missing or not numeric, labels that are not
    class indices, a split too small (printed without a traceback)."""


def columns(names: list[str], shown: int = 8) -> str:
    """`names` for a message: the first `shown` of a long list, then how many there are."""
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])}, ... ({len(names)} in all)"


class TableSource:
    """A table of features and labels. Subclasses implement `read()`.

    `feature_columns` None means every column but the label. `input_shape` None means a flat
    vector of the feature columns. `num_classes` None means one more than the largest label.
    """

    def __init__(
        self,
        feature_columns: Sequence[str] | None = None,
        label_column: str = "label",
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"data.source.num_classes must be at least 2, got {num_classes}")
        self.feature_columns = list(feature_columns) if feature_columns is not None else None
        self.label_column = label_column
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.num_classes = num_classes

    def check(self) -> None:
        """Fail now, before anything starts, if reading cannot work (nothing to check here)."""

    def read(self) -> ray.data.Dataset:
        """All rows, lazily: nothing is read until the dataset is consumed."""
        raise NotImplementedError


class DigitsSource(TableSource):
    """scikit-learn's bundled handwritten digits: 1,797 8x8 grey images of 0-9, no download.

    Columns `pixel_0` ... `pixel_63` hold pixel values scaled to [0, 1]; the model sees 1x8x8.
    """

    def __init__(self) -> None:
        super().__init__(
            feature_columns=[f"pixel_{i}" for i in range(64)],
            input_shape=(1, 8, 8),
            num_classes=10,
        )

    def frame(self) -> pd.DataFrame:
        from sklearn.datasets import load_digits

        digits = load_digits()
        table = pd.DataFrame(digits.data / 16.0, columns=self.feature_columns)
        table[self.label_column] = digits.target.astype(np.int64)
        return table

    def read(self) -> ray.data.Dataset:
        return _from_pandas(self.frame())


class DiabetesSource(TableSource):
    """scikit-learn's bundled diabetes table, a regression target: 442 patients, 10 numeric
    features (age, sex, bmi, bp, s1-s6), `target` a measure of disease progression a year later
    (25-346). No download."""

    def __init__(self) -> None:
        super().__init__(label_column="target")

    def frame(self) -> pd.DataFrame:
        from sklearn.datasets import load_diabetes

        return load_diabetes(as_frame=True).frame.astype(np.float64)

    def read(self) -> ray.data.Dataset:
        return _from_pandas(self.frame())


class SyntheticSource(TableSource):
    """Random but learnable data of any size: each class is a Gaussian blob around its own centre.

    `input_shape` is free: `[32]` gives feature vectors (for the MLP), `[1, 8, 8]` images (for
    the CNN). `noise` is the blobs' standard deviation: higher is harder. `seed` fixes the data.
    """

    def __init__(
        self,
        num_samples: int = 4096,
        input_shape: Sequence[int] = (32,),
        num_classes: int = 10,
        noise: float = 1.0,
        seed: int = 0,
    ) -> None:
        if num_samples < 2:
            raise ValueError(f"data.source.num_samples must be at least 2, got {num_samples}")
        width = int(np.prod(input_shape))
        super().__init__(
            feature_columns=[f"x_{i}" for i in range(width)],
            input_shape=input_shape,
            num_classes=num_classes,
        )
        self.num_samples = num_samples
        self.noise = noise
        self.seed = seed

    def frame(self) -> pd.DataFrame:
        rng = np.random.default_rng(self.seed)
        width = len(self.feature_columns)
        centres = rng.standard_normal((self.num_classes, width))
        labels = rng.permutation(np.arange(self.num_samples) % self.num_classes)
        features = centres[labels] + rng.standard_normal((self.num_samples, width)) * self.noise
        table = pd.DataFrame(features.astype(np.float32), columns=self.feature_columns)
        table[self.label_column] = labels.astype(np.int64)
        return table

    def read(self) -> ray.data.Dataset:
        return _from_pandas(self.frame())


class FileSource(TableSource):
    """Parquet or CSV files: one file, a folder of them, or a cloud URI (s3://, gs://, ...).

    Local paths are made absolute here, in the driver: Ray tasks do not run in this folder.
    Cloud URIs go to Ray Data's reader unchanged; pyarrow finds credentials the usual way
    (environment, instance profile, ~/.aws or gcloud).
    """

    format = ""

    def __init__(self, path: str | Sequence[str], **kwargs) -> None:
        super().__init__(**kwargs)
        paths = [path] if isinstance(path, str) else list(path)
        if not paths:
            raise ValueError("data.source.path is empty: give a file, a folder or a URI")
        self.paths = [resolve_path(p) for p in paths]

    def check(self) -> None:
        """Local paths must exist here (cloud URIs are only checked when read)."""
        for path in self.paths:
            if not is_uri(path) and not os.path.exists(path):
                raise MissingDataError(
                    f"data.source.path: {path} does not exist (relative paths are relative to "
                    f"the folder train.py runs in: {os.getcwd()})"
                )

    def read(self) -> ray.data.Dataset:
        self.check()
        return self._reader(self.paths)

    def _reader(self, paths: list[str]) -> ray.data.Dataset:
        raise NotImplementedError


class ParquetSource(FileSource):
    """Parquet files read with `ray.data.read_parquet`."""

    format = "parquet"

    def _reader(self, paths: list[str]) -> ray.data.Dataset:
        return ray.data.read_parquet(paths)


class CsvSource(FileSource):
    """CSV files (with a header row) read with `ray.data.read_csv`."""

    format = "csv"

    def _reader(self, paths: list[str]) -> ray.data.Dataset:
        return ray.data.read_csv(paths)


def is_uri(path: str) -> bool:
    """True for s3://, gs://, hdfs://, ... paths, which only a filesystem client can check."""
    return "://" in path and not path.startswith("file://")


def resolve_path(path: str) -> str:
    """An absolute local path, or the URI unchanged."""
    if is_uri(path):
        return path
    return os.path.abspath(os.path.expanduser(path.removeprefix("file://")))


def _from_pandas(table: pd.DataFrame) -> ray.data.Dataset:
    chunks = [table.iloc[i : i + _ROWS_PER_BLOCK] for i in range(0, len(table), _ROWS_PER_BLOCK)]
    return ray.data.from_pandas(chunks)
