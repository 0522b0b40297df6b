"""Data as Ray Datasets: sources, the seeded split, preprocessing, worker shards, prediction.

sources.py       where rows come from (digits, diabetes, synthetic, parquet, csv)
images.py        images from class folders, their transform, augmentation, decoding
split.py         the seeded train/validation split
preprocessing.py the fitted transform, stored in checkpoints (`load_transform` for serving)
pipeline.py      the driver's side: read, check, split, fit, materialize
loader.py        the worker's side: its shard of each split, as Lightning batches
prediction.py    offline batch prediction with a trained checkpoint
"""

from .pipeline import PreparedData, build_source, prepare, prepare_reusing, reuse_prepared
from .preprocessing import Transform, load_transform
from .sources import (
    CsvSource,
    DataError,
    DiabetesSource,
    DigitsSource,
    ParquetSource,
    SyntheticSource,
)

__all__ = [
    "CsvSource",
    "DataError",
    "DiabetesSource",
    "DigitsSource",
    "ParquetSource",
    "PreparedData",
    "SyntheticSource",
    "Transform",
    "build_source",
    "load_transform",
    "prepare",
    "prepare_reusing",
    "reuse_prepared",
]
