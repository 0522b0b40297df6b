"""Data as Ray Datasets: sources, the seeded split, preprocessing, worker shards, prediction.

sources.py       where rows come from (digits, diabetes, synthetic, parquet, csv)
images.py        images from class folders, their transform, augmentation, decoding
split.py         the seeded train/validation split
preprocessing.py the fitted transform, stored in checkpoints (`load_transform` for serving)
pipeline.py      the driver's side: read, check, split, fit, materialize
loader.py        the worker's side: its shard of each split, as Lightning batches
prediction.py    offline batch prediction with a trained checkpoint

The names below are imported when first used: Ray Data's workers run functions of split.py and
preprocessing.py, and importing this file must not bring pipeline.py's Ray Train, torch and
torchmetrics into each of them.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "PreparedData": "pipeline",
    "build_source": "pipeline",
    "prepare": "pipeline",
    "prepare_reusing": "pipeline",
    "reuse_prepared": "pipeline",
    "Transform": "preprocessing",
    "load_transform": "preprocessing",
    "CsvSource": "sources",
    "DataError": "sources",
    "DiabetesSource": "sources",
    "DigitsSource": "sources",
    "ParquetSource": "sources",
    "SyntheticSource": "sources",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
