"""The LightningModule: any network from `models/` trained as a classifier."""

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class Classifier(L.LightningModule):
    """Cross-entropy training with loss and accuracy logged for the train and val splits.

    `optimizer` is a partial (Hydra's `_partial_: true`) that takes the parameters. The learning
    rate it carries wins over the one saved in a checkpoint, so a run resumed with a new `lr`
    (population based training does this) trains with the new value.

    `architecture` says how to rebuild `net` (its model config, `input_shape`, `num_classes`). It
    is saved in every checkpoint as plain Python values, so that serving can rebuild the network
    from a checkpoint read with `torch.load(weights_only=True)`, which unpickles no code.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        architecture: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        if architecture:
            self.save_hyperparameters({"architecture": architecture})

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        inputs, labels = batch
        logits = self(inputs)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        # Epoch means, averaged over workers once per epoch.
        self.log(f"{split}_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{split}_acc", accuracy, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(params=self.parameters())

    def on_train_start(self) -> None:
        # A resumed optimizer state brings back its old hyperparameters; apply the configured ones.
        configured = self.optimizer_factory(params=[torch.zeros(1, requires_grad=True)])
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                for key in ("lr", "weight_decay", "momentum"):
                    if key in group and key in configured.defaults:
                        group[key] = configured.defaults[key]
