"""Forwarding a Ray Train run's per-epoch reports to the Ray Tune trial that runs it.

Ray's own `TuneReportCallback` forwards metrics but not checkpoints, and population based
training needs the checkpoints: it restarts a trial from another trial's. Here the Train
controller puts each report (metrics and checkpoint path) on a queue; the trial's thread takes
them off and calls `tune.report`, so schedulers see every epoch while the run is going.
"""

import threading
from contextlib import contextmanager
from typing import Any

from ray import tune
from ray.train import Result
from ray.train.torch import TorchTrainer
from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Queue

_DONE = "__training_finished__"
_active: "TrialReporter | None" = None


class _ForwardReports(UserCallback):
    """Runs in the Train controller: hands rank 0's report to the trial's queue."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        self.queue.put((metrics[0], checkpoint.path if checkpoint else None))


class TrialReporter:
    """Created per trial by the sweeper; `training.run.train` uses it when one is active."""

    def __init__(self, **extra: Any) -> None:
        self.queue = Queue(actor_options={"num_cpus": 0})
        self.extra = extra  # added to every report, e.g. the trial's output folder

    @property
    def callbacks(self) -> list[UserCallback]:
        return [_ForwardReports(self.queue)]

    def fit(self, trainer: TorchTrainer) -> Result:
        """`trainer.fit()` in a thread while this thread reports to Tune as results arrive."""
        outcome: dict[str, Any] = {}

        def fit() -> None:
            try:
                outcome["result"] = trainer.fit()
            except BaseException as error:  # re-raised below, in the trial's thread
                outcome["error"] = error
            finally:
                self.queue.put(_DONE)

        thread = threading.Thread(target=fit, name="train-fit", daemon=True)
        thread.start()
        while (item := self.queue.get()) != _DONE:
            metrics, checkpoint_path = item
            checkpoint = (
                tune.Checkpoint.from_directory(checkpoint_path) if checkpoint_path else None
            )
            tune.report({**metrics, **self.extra}, checkpoint=checkpoint)
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]


def active() -> TrialReporter | None:
    """The reporter of the Tune trial running in this process, if any."""
    return _active


@contextmanager
def reporting_to_tune(**extra: Any):
    """Within this block, training runs report to the current Tune trial."""
    global _active
    _active = TrialReporter(**extra)
    try:
        yield _active
    finally:
        _active = None
