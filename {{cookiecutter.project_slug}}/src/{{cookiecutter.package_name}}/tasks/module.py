"""TaskModule: the LightningModule that trains a plain `torch.nn` network for any task.

A LightningModule of your own (configs/model/<name>.yaml naming it by `_target_`) replaces it
whole: then your module's steps, logging and `configure_optimizers` rule.
"""

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from ..training import schedulers
from .base import Task

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class TaskModule(L.LightningModule):
    """`net` trained with `task`'s loss, its metrics logged for the train and val splits.

    `optimizer` and `scheduler` are partials (Hydra's `_partial_: true`): the optimizer takes the
    parameters, the scheduler builder (training/schedulers.py) the optimizer and the run's
    length.
    """

    def __init__(
        self,
        net: nn.Module,
        task: Task,
        optimizer: OptimizerFactory,
        scheduler: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.task = task
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        metrics = task.metrics()
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        inputs, labels = batch
        outputs = self(inputs)
        loss = self.task.loss(outputs, labels)
        # Epoch means, averaged over workers once per epoch; the metrics sync themselves.
        self.log(f"{split}_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        metrics = {"train": self.train_metrics, "val": self.val_metrics, "test": self.test_metrics}
        metrics = metrics[split]
        metrics.update(self.task.metric_inputs(outputs.detach()), labels)
        self.log_dict(metrics, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        scheduler = schedulers.build(
            self.scheduler_factory,
            optimizer,
            self.trainer.estimated_stepping_batches,  # inf for a stream of unknown length
            int(self.trainer.max_epochs or 1),
        )
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
