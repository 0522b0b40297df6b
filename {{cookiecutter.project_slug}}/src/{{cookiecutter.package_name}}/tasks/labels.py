"""What the tasks compute over a label column in Ray Data's workers, one block at a time.

Pandas and numpy only: a worker that runs these imports this module, not torch or torchmetrics
(seconds for every new worker process, and a short run or sweep starts several).
"""

import numpy as np
import pandas as pd


def label_summary(batch: pd.DataFrame, label_column: str) -> pd.DataFrame:
    """How many labels are not class indices (one example of them), and the largest that is."""
    labels = batch[label_column]
    # Through object first: Arrow-backed text (how Ray hands over parquet strings) would
    # otherwise come back from to_numeric as missing-but-not-NaN and pass as a label.
    numeric = pd.to_numeric(labels.astype(object), errors="coerce").astype(np.float64)
    bad = numeric.isna() | (numeric < 0) | (numeric != np.floor(numeric))
    good = numeric[~bad]
    return pd.DataFrame(
        {
            "bad": [int(bad.sum())],
            "max": [int(good.max()) if len(good) else -1],
            "example": [repr(labels[bad].iloc[0]) if bad.any() else ""],
        }
    )


def target_moments(batch: pd.DataFrame, column: str) -> pd.DataFrame:
    """How many targets are not finite numbers (one example of them); the count, sum and sum of
    squared deviations of those that are."""
    labels = batch[column]
    values = pd.to_numeric(labels.astype(object), errors="coerce").astype(np.float64)
    bad = ~np.isfinite(values)
    good = values[~bad].to_numpy()
    mean = good.mean() if len(good) else 0.0
    return pd.DataFrame(
        {
            "bad": [int(bad.sum())],
            "example": [repr(labels[bad].iloc[0]) if bad.any() else ""],
            "count": [len(good)],
            "sum": [float(good.sum())],
            "m2": [float(((good - mean) ** 2).sum())],
        }
    )
