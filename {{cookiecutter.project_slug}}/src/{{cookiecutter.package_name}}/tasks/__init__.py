"""What a model learns, one module per task: the loss, the metrics, the size of the output layer,
what a label must be and what a prediction is.

base.py            the Task interface, the only thing training, tuning, serving and prediction see
classification.py  integer class labels; cross-entropy; accuracy; a class and its probabilities
regression.py      a float target; MSE on the standardised target; MAE and R2; the predicted value
module.py          TaskModule: the LightningModule that trains a plain network for any task

A new task is one module here and one yaml in configs/task/ (see the README's "Add a task").
"""

from .base import Task, load_task
from .classification import Classification
from .regression import Regression

__all__ = ["Classification", "Regression", "Task", "load_task"]
