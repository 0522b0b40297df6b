"""What a model learns, one module per task: the loss, the metrics, the size of the output layer,
what a label must be and what a prediction is.

base.py            the Task interface, the only thing training, tuning, serving and prediction see
classification.py  integer class labels; cross-entropy; accuracy; a class and its probabilities
regression.py      a float target; MSE on the standardised target; MAE and R2; the predicted value
labels.py          the label checks that run in Ray Data's workers (no torch)
module.py          TaskModule: the LightningModule that trains a plain network for any task

A new task is one module here and one yaml in configs/task/ (see the README's "Add a task").

The names below are imported when first used: a Ray Data worker that runs a label check
imports labels.py, and with it this file, without torch and torchmetrics.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "Classification": "classification",
    "Regression": "regression",
    "Task": "base",
    "load_task": "base",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
