"""A Lightning callback for tests of runs with several workers, added to a run on the command line
(`+callbacks.ranks._target_=tests.rank_recorder.RankRecorder +callbacks.ranks.folder=<dir>`).

Each worker writes what it trained and validated on (a digest of every input row, per epoch) to
`<folder>/rank<N>.json`, and its weights at the end to `<folder>/rank<N>.pt`.
"""

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def row_digests(batch: Any) -> list[str]:
    """A digest of each input row of a batch: (inputs, targets), or a dict with `features`."""
    inputs = batch["features"] if isinstance(batch, dict) else batch[0]
    rows = inputs.detach().cpu().reshape(len(inputs), -1).contiguous().numpy()
    return [hashlib.sha1(row.tobytes()).hexdigest()[:16] for row in rows]


class RankRecorder(Callback):
    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)
        self.seen: dict[str, dict[int, list[str]]] = {"train": defaultdict(list), "val": {}}

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.seen["train"][trainer.current_epoch].extend(row_digests(batch))

    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            epoch = self.seen["val"].setdefault(trainer.current_epoch, [])
            epoch.extend(row_digests(batch))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        record = {
            "world_size": trainer.world_size,
            "train": {str(epoch): rows for epoch, rows in self.seen["train"].items()},
            "val": {str(epoch): rows for epoch, rows in self.seen["val"].items()},
        }
        (self.folder / f"rank{rank}.json").write_text(json.dumps(record))
        state = {name: value.detach().cpu() for name, value in pl_module.state_dict().items()}
        torch.save(state, self.folder / f"rank{rank}.pt")
