"""The Task interface: everything that differs between tasks, in one place per task.

The driver builds the task from `configs/task/<name>.yaml`, lets it check every label
(`check_labels`: and count the classes) and learn from the training rows' labels (`fit`: the
target's scale). From then on the task is plain values
(`state()`), shipped to the workers and saved in every checkpoint, so that serving and batch
prediction rebuild the same task (`load_task`) without unpickling code.
"""

import importlib
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import ray.data
import torch
from torchmetrics import MetricCollection


class Task:
    """Base class of the tasks. Subclasses set the class attributes and implement the methods.

    `metric_names` are logged per split besides the loss (`train_loss`, `val_acc`, ...):
    `checkpoint.metric` and `search.metric` are checked against `reported_metrics()`.
    """

    name: ClassVar[str] = ""
    metric_names: ClassVar[tuple[str, ...]] = ()
    # The dtype of the label column the model trains on.
    label_dtype: ClassVar[type] = np.int64

    # -- in the driver, before training ------------------------------------------------------
    def check_labels(self, table: ray.data.Dataset, label_column: str) -> None:
        """Check the labels of every row, before the split (a bad label among the validation
        rows counts too), and learn what all rows tell (the number of classes). Raise DataError
        with a one-line message if they cannot work."""

    def fit(self, train: ray.data.Dataset, label_column: str) -> None:
        """Learn what the task needs from the training rows' labels (never the validation
        rows': e.g. the target's mean and spread)."""

    @property
    def num_outputs(self) -> int:
        """The width of the network's output layer (RuntimeError while it is not known)."""
        raise NotImplementedError

    def known_num_outputs(self) -> int | None:
        """`num_outputs`, or None until the task has seen the labels or been told (a
        DataModule's classes are counted in the workers)."""
        try:
            return self.num_outputs
        except RuntimeError:
            return None

    # -- in the workers ----------------------------------------------------------------------
    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self) -> MetricCollection:
        """Fresh torchmetrics for one split; updated with (`metric_inputs(outputs)`, labels)."""
        raise NotImplementedError

    def metric_inputs(self, outputs: torch.Tensor) -> torch.Tensor:
        """What the metrics compare with the labels (by default the outputs themselves)."""
        return outputs

    # -- serving and batch prediction --------------------------------------------------------
    def predict(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's outputs for a batch as what the API and prediction files return:
        `prediction` (one per row) and any extra columns (e.g. `probabilities`)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What a client needs to know about the outputs (GET /metadata)."""
        return {"task": self.name}

    # -- as plain values ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Plain values (torch.load(weights_only=True) reads them back) that rebuild this task."""
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", **self.params()}

    def params(self) -> dict[str, Any]:
        """The constructor's arguments, after `fit`."""
        return {}

    @classmethod
    def reported_metrics(cls) -> tuple[str, ...]:
        """Every metric an epoch's report holds for a network trained on this task."""
        logged = [
            f"{split}_{name}" for split in ("train", "val") for name in ("loss", *cls.metric_names)
        ]
        return (*logged, "epoch", "step")


def load_task(state: Mapping[str, Any]) -> Task:
    """The task saved as `state` (Task.state()); only Task classes of this package qualify, since
    the state may come from a checkpoint someone else wrote."""
    target = str(state.get("_target_", ""))
    module_name, _, class_name = target.rpartition(".")
    if not (module_name == __package__ or module_name.startswith(__package__ + ".")):
        raise ValueError(f"unknown task {target!r}: tasks come from {__package__}")
    task_class = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(task_class, type) and issubclass(task_class, Task)):
        raise ValueError(f"{target!r} is not a Task class")
    return task_class(**{key: value for key, value in state.items() if key != "_target_"})
