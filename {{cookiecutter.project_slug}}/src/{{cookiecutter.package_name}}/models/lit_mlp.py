"""An example of a LightningModule of your own: `python train.py model=lit_mlp`.

Written as any Lightning user would, without the project's TaskModule: its own steps, logging
and `configure_optimizers`. The project gives it the data's `input_shape` and `num_classes`
because its constructor asks for them, trains it under Ray Train, ranks its checkpoints by a
metric it logs (`val_loss`) and serves it. Sweep its own settings (`model.lr=...`): the
`optimizer` and `scheduler` groups do not apply to it.
"""

import math

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F


class LitMLP(L.LightningModule):
    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        hidden_dim: int = 128,
        dropout: float = 0.0,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        inputs, labels = batch
        loss = F.cross_entropy(self(inputs), labels)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, labels = batch
        logits = self(inputs)
        self.log("val_loss", F.cross_entropy(logits, labels), sync_dist=True)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        self.log("val_acc", accuracy, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
