"""Lightning callbacks that tests add to a run (`+callbacks.<name>._target_=tests.callbacks...`):
Ray runs train.py's jobs with the project's folder on their path, so its workers import them."""

import json
import os

import lightning as L

from {{ cookiecutter.package_name }}.training import tracker_env


class FailAtEpoch(L.Callback):
    """Raises at the end of epoch `epoch` (0-based) in the run that trains with learning rate
    `lr`: one trial of a sweep made to fail. Every other run is left alone."""

    def __init__(self, lr: float, epoch: int = 0) -> None:
        self.lr = lr
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        if trainer.current_epoch == self.epoch and abs(lr - self.lr) <= 1e-12:
            raise RuntimeError(f"made to fail at epoch {self.epoch} (lr={lr})")


class TrackerEnvToFile(L.Callback):
    """Writes the trackers' variables that rank 0's process sees to the JSON file `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            seen = {name: os.environ[name] for name in tracker_env.NAMES if name in os.environ}
            with open(self.path, "w") as file:
                json.dump(seen, file)
