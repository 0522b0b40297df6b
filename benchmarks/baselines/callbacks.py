"""Lightning callbacks of the benchmarks, for the baselines and for the project's own runs.

`TorchThreads` also goes into the project's Trainer, by the override the benchmarks add to
every `train.py` they run (harness.THREADS_OVERRIDE; configs/callbacks: any entry with a
`_target_` is built into the Trainer). It prints one line when fitting starts; a Ray worker's
or Tune trial's line reaches the console with Ray's prefix.
"""

import math
import os
import shutil
import time

import lightning as L
import torch


def _mark(event: str, *values: object) -> None:
    print("BENCH", event, f"{time.time():.6f}", *values, flush=True)


class TorchThreads(L.Callback):
    """`BENCH torch_threads <time> <n>`: the torch threads this run trains with."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _mark("torch_threads", torch.get_num_threads())


class EpochMarks(L.Callback):
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _mark("epoch_end", trainer.current_epoch, trainer.global_step)


class ProjectCadenceCheckpoint(L.Callback):
    """Checkpoints at the project's cadence and by its keep policy (configs/checkpoint): every
    `every_n_epochs`-th epoch and the last one, at the end of the training epoch (after its
    validation), the best `num_to_keep` by `metric` kept, and always the latest. The project's
    run in one process does the same (training/callbacks.py, training/local.py), a worker group
    through Ray Train. Lightning's ModelCheckpoint(every_n_epochs=5) alone would skip the last
    epoch; Lightning's default writes one every epoch.
    """

    def __init__(
        self, folder: str, every_n_epochs: int, num_to_keep: int | None, metric: str, mode: str
    ) -> None:
        self.folder = folder
        self.every_n_epochs = every_n_epochs
        self.num_to_keep = num_to_keep
        self.metric = metric
        self.sign = 1 if mode == "min" else -1
        self.kept: list[tuple[str, float]] = []  # (path, signed metric), oldest first

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epochs = trainer.current_epoch + 1
        last = trainer.should_stop or (
            trainer.max_epochs is not None and epochs >= trainer.max_epochs
        )
        if not (last or epochs % self.every_n_epochs == 0):
            return
        value = trainer.callback_metrics.get(self.metric)
        rank = math.inf if value is None else self.sign * float(value)
        path = os.path.join(self.folder, f"epoch={epochs:04d}.ckpt")
        trainer.save_checkpoint(path)
        self.kept.append((path, rank))
        if self.num_to_keep is not None and len(self.kept) > self.num_to_keep:
            best = sorted(reversed(self.kept), key=lambda entry: entry[1])[: self.num_to_keep]
            keep = {entry[0] for entry in best} | {path}
            for old, _ in self.kept:
                if old not in keep:
                    os.remove(old)
            self.kept = [entry for entry in self.kept if entry[0] in keep]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        os.makedirs(self.folder)
