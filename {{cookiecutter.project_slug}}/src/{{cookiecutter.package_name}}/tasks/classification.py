"""Classification: integer class labels 0 .. num_classes-1, one output (logit) per class."""

from functools import partial
from typing import Any, ClassVar

import numpy as np
import ray.data
import torch
from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from ..data.sources import DataError
from .base import Task
from .labels import label_summary


class Classification(Task):
    """Cross-entropy on the logits; accuracy; predictions are a class and its probabilities.

    `num_classes` None: one more than the largest label of the training rows.
    """

    name: ClassVar[str] = "classification"
    metric_names: ClassVar[tuple[str, ...]] = ("acc",)
    label_dtype: ClassVar[type] = np.int64

    def __init__(self, num_classes: int | None = None) -> None:
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"task.num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes

    def check_labels(self, table: ray.data.Dataset, label_column: str) -> None:
        self.num_classes = check_class_labels(table, label_column, self.num_classes)

    @property
    def num_outputs(self) -> int:
        if self.num_classes is None:
            raise RuntimeError("the number of classes is known once the task has seen the labels")
        return self.num_classes

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, labels)

    def metrics(self) -> MetricCollection:
        # micro: the share of rows classified right (torchmetrics' default is a mean over classes)
        return MetricCollection({"acc": MulticlassAccuracy(self.num_outputs, average="micro")})

    def predict(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        probabilities = torch.softmax(outputs.float(), dim=1)
        return {"prediction": probabilities.argmax(dim=1), "probabilities": probabilities}

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "classes": list(range(self.num_outputs))}

    def params(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes}


def check_class_labels(table: ray.data.Dataset, label_column: str, num_classes: int | None) -> int:
    """The number of classes, after checking that labels are class indices 0 .. num_classes-1."""
    summaries = table.map_batches(
        partial(label_summary, label_column=label_column), batch_format="pandas"
    ).take_all()
    bad = sum(int(row["bad"]) for row in summaries)
    if bad:
        example = next(row["example"] for row in summaries if row["bad"])
        raise DataError(
            f"label column {label_column!r} must hold integer class indices 0, 1, 2, ...; "
            f"{bad} row(s) do not, e.g. {example}. Map labels to indices first, or use "
            f"task=regression for a numeric target."
        )
    largest = max((int(row["max"]) for row in summaries if row["max"] >= 0), default=-1)
    if num_classes is None:
        if largest < 1:
            raise DataError(f"label column {label_column!r} needs at least two classes")
        return largest + 1
    if largest >= num_classes:
        raise DataError(
            f"label column {label_column!r} holds the label {largest}, but the number of "
            f"classes is {num_classes} (labels must be below it)"
        )
    return num_classes
