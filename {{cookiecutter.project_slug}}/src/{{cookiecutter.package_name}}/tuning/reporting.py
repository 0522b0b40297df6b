"""Forwarding a Ray Train run's per-epoch reports to the Ray Tune trial that runs it.

A run in the trial's own process (`scaling=local`) hands each report to `TrialReporter.forward`
from its training loop. A worker group reports through its Train controller, as follows.

Ray's own `TuneReportCallback` forwards metrics but not checkpoints, and population based
training needs the checkpoints: it restarts a trial from another trial's. Here the Train
controller puts each report (metrics and checkpoint path) on a queue; the trial's thread takes
them off and calls `tune.report`, so schedulers see every epoch while the run is going.

Tune may hand a finished or stopped trial's process to the next trial (`reuse_actors`). The
queue then serves every trial of that process, each run's items tagged with its own id. When a
scheduler stops or pauses a trial, `tune.report` raises SystemExit in the trial's thread: the
run is aborted at once, so that its workers give their CPUs back to the next trial and it
trains no further epochs that Tune will not see.

The last epoch's report is held back until the run has ended and the trial has written its
result.json: Tune may end the trial's process as soon as it has that report (ASHA stops trials
at their last epoch, PBT pauses them there), which would cut short the run's final steps.
"""

import logging
import os
import threading
import uuid
from contextlib import contextmanager
from typing import Any

import ray
from ray import tune
from ray.actor import ActorHandle
from ray.train import Result
from ray.train.torch import TorchTrainer
from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Queue

log = logging.getLogger(__name__)

# How long an aborted run gets to stop its workers (Ray Train gives them 5 s) and free their
# placement group before its controller is killed.
ABORT_TIMEOUT_S = 60.0
# Tune hands a stopped trial's process to the next trial once the trial's thread has ended, and
# waits TUNE_FUNCTION_THREAD_TIMEOUT_S (2 s by default) for that: here, for an abort.
THREAD_TIMEOUT_S = 2 * ABORT_TIMEOUT_S

_DONE = "__training_finished__"
_active: "TrialReporter | None" = None
_queue: Queue | None = None


def _process_queue() -> Queue:
    """One queue actor per trial process, shared by the trials Tune runs in it."""
    global _queue
    if _queue is None:
        _queue = Queue(actor_options={"num_cpus": 0})
    return _queue


class _ForwardReports(UserCallback):
    """Runs in the Train controller: hands rank 0's report to the trial's queue."""

    def __init__(self, queue: Queue, run_id: str) -> None:
        self.queue = queue
        self.run_id = run_id

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        # The controller's own handle goes along: a stopped trial aborts the run with it.
        controller = ray.get_runtime_context().current_actor
        report = (metrics[0], checkpoint.path if checkpoint else None, controller)
        try:
            self.queue.put((self.run_id, report))
        except ray.exceptions.RayActorError:
            # The trial has ended, and the queue with its process (Tune ends a stopped trial's
            # process when no trial is left to reuse it), while this run's control loop was
            # still handing on a report collected before the abort. No one waits for it.
            pass


class TrialReporter:
    """Created per trial by the sweeper; `training.run.train` uses it when one is active."""

    def __init__(self, last_epoch: int, **extra: Any) -> None:
        self.run_id = uuid.uuid4().hex
        self.last_epoch = last_epoch  # the run's final epoch (its epochs: reports count from 1)
        self.extra = extra  # added to every report, e.g. the trial's output folder
        self.held_back: tuple[dict, str | None] | None = None  # the last epoch's report

    @property
    def queue(self) -> Queue:
        return _process_queue()

    @property
    def callbacks(self) -> list[UserCallback]:
        return [_ForwardReports(self.queue, self.run_id)]

    def forward(self, metrics: dict[str, Any], checkpoint_path: str | None) -> None:
        """Hand one epoch's report to Tune; the last epoch's is held back (report_last_epoch).
        A run in this process (`scaling=local`) calls it from its own loop."""
        if metrics.get("epoch") == self.last_epoch:
            self.held_back = (metrics, checkpoint_path)
        else:
            self._report(metrics, checkpoint_path)

    def fit(self, trainer: TorchTrainer) -> Result:
        """`trainer.fit()` in a thread while this thread reports to Tune as results arrive."""
        outcome: dict[str, Any] = {}

        def fit() -> None:
            try:
                outcome["result"] = trainer.fit()
            except BaseException as error:  # re-raised below, in the trial's thread
                outcome["error"] = error
            finally:
                try:
                    self.queue.put((self.run_id, _DONE))
                except ray.exceptions.RayActorError:
                    # The trial is over and Tune has removed its placement group, the queue
                    # with it (seen when the last trials of a sweep are stopped): no one waits.
                    pass

        thread = threading.Thread(target=fit, name="train-fit", daemon=True)
        thread.start()
        controller = None
        try:
            for report in self._reports():
                metrics, checkpoint_path, controller = report
                self.forward(metrics, checkpoint_path)
        except BaseException:
            # Tune stopped or paused the trial (SystemExit), or the trial is failing. A paused
            # (PBT) trial is restored later in a new run, whose result.json this one must not
            # overwrite: it ends here, without one.
            _abort(controller, thread)
            raise
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    def report_last_epoch(self) -> None:
        """Hand Tune the report held back by `fit`: call once the trial's summary is written."""
        if self.held_back is not None:
            self._report(*self.held_back)
            self.held_back = None

    def _report(self, metrics: dict, checkpoint_path: str | None) -> None:
        checkpoint = tune.Checkpoint.from_directory(checkpoint_path) if checkpoint_path else None
        tune.report({**metrics, **self.extra}, checkpoint=checkpoint)

    def _reports(self):
        """This run's reports as they arrive, until it ends; a previous trial's are dropped."""
        while True:
            run_id, item = self.queue.get()
            if run_id != self.run_id:
                continue
            if item == _DONE:
                return
            yield item


def _abort(controller: ActorHandle | None, fit_thread: threading.Thread) -> None:
    """Stop a Train run the way Ctrl-C in its driver does: the controller stops its workers,
    removes their placement group and exits. Killed if it has not exited in ABORT_TIMEOUT_S."""
    if controller is not None and fit_thread.is_alive():
        log.info("Trial stopped: aborting its Ray Train run")
        try:
            ray.get(controller.abort.remote(), timeout=ABORT_TIMEOUT_S)
        except ray.exceptions.RayActorError:
            pass  # the controller exited, as abort() does when it is done
        except ray.exceptions.GetTimeoutError:
            log.warning("The Train controller did not stop in %.0f s; killed", ABORT_TIMEOUT_S)
            ray.kill(controller)
    fit_thread.join(timeout=ABORT_TIMEOUT_S)


def active() -> TrialReporter | None:
    """The reporter of the Tune trial running in this process, if any."""
    return _active


@contextmanager
def reporting_to_tune(last_epoch: int, **extra: Any):
    """Within this block, training runs report to the current Tune trial; `last_epoch` is the
    run's final epoch (trainer.max_epochs: reports count epochs from 1) and `extra` is added to
    every report."""
    global _active
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", str(int(THREAD_TIMEOUT_S)))
    _active = TrialReporter(last_epoch, **extra)
    try:
        yield _active
    finally:
        _active = None
