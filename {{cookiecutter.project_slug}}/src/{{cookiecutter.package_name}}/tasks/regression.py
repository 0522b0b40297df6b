"""Regression: one float target per row, one output."""

from functools import partial
from typing import Any, ClassVar

import numpy as np
import ray.data
import torch
from torch.nn import functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, R2Score

from ..data.sources import DataError
from .base import Task
from .labels import target_moments


class Regression(Task):
    """MSE on the standardised target; MAE, RMSE and R2 in the target's own units.

    The network learns the target standardised with the training rows' mean and standard
    deviation (`standardize`: a target in the hundreds would otherwise need its own learning
    rate); predictions and metrics are in the target's units. `target_mean` / `target_std`
    None: fitted on the training rows.
    """

    name: ClassVar[str] = "regression"
    metric_names: ClassVar[tuple[str, ...]] = ("mae", "rmse", "r2")
    label_dtype: ClassVar[type] = np.float32

    def __init__(
        self,
        standardize: bool = True,
        target_mean: float | None = None,
        target_std: float | None = None,
        target_name: str | None = None,
    ) -> None:
        self.standardize = standardize
        self.target_mean = target_mean
        self.target_std = target_std
        self.target_name = target_name

    def check_labels(self, table: ray.data.Dataset, label_column: str) -> None:
        self._moments(table, label_column)  # every row's label must be a finite number

    def fit(self, train: ray.data.Dataset, label_column: str) -> None:
        parts = self._moments(train, label_column)
        count = sum(int(part["count"]) for part in parts)
        if count < 2:
            raise DataError(f"label column {label_column!r} needs at least two rows to learn from")
        mean = sum(float(part["sum"]) for part in parts) / count
        # Sums of squared deviations from each part's mean, merged exactly (Chan et al.).
        m2 = sum(
            float(part["m2"])
            + int(part["count"]) * (float(part["sum"]) / int(part["count"]) - mean) ** 2
            for part in parts
            if int(part["count"])
        )
        std = (m2 / count) ** 0.5
        self.target_name = self.target_name or label_column
        if self.target_mean is None:
            self.target_mean = mean if self.standardize else 0.0
        if self.target_std is None:
            self.target_std = std if self.standardize and std > 1e-12 else 1.0

    @staticmethod
    def _moments(table: ray.data.Dataset, label_column: str) -> list[dict[str, Any]]:
        """Each block's count, sum and squared deviations of the label, after checking that
        every label is a finite number."""
        parts = table.map_batches(
            partial(target_moments, column=label_column), batch_format="pandas"
        ).take_all()
        bad = sum(int(part["bad"]) for part in parts)
        if bad:
            example = next(part["example"] for part in parts if part["bad"])
            raise DataError(
                f"label column {label_column!r} must hold finite numbers for task=regression; "
                f"{bad} row(s) do not, e.g. {example}"
            )
        return parts

    @property
    def num_outputs(self) -> int:
        return 1

    def _scale(self) -> tuple[float, float]:
        """Unfitted (a DataModule's labels are not seen in advance): the target as it is."""
        mean = 0.0 if self.target_mean is None else self.target_mean
        std = 1.0 if self.target_std is None else self.target_std
        return mean, std

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        mean, std = self._scale()
        return F.mse_loss(outputs.squeeze(-1), (labels.float() - mean) / std)

    def metrics(self) -> MetricCollection:
        return MetricCollection(
            {"mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False), "r2": R2Score()}
        )

    def metric_inputs(self, outputs: torch.Tensor) -> torch.Tensor:
        mean, std = self._scale()
        return outputs.squeeze(-1).float() * std + mean

    def predict(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"prediction": self.metric_inputs(outputs)}

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "target": self.target_name}

    def params(self) -> dict[str, Any]:
        return {
            "standardize": self.standardize,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "target_name": self.target_name,
        }
