"""Console messages of a run's own teardown, which say nothing about the run.

Stopping a Ray Train run (Tune stops or pauses a trial, a sweep ends, Ctrl-C) ends its
controller, workers and helper actors without waiting for each other: a process still running
in that moment can meet an actor that is already gone and log the error before it is ended too.
Ray Train's log files (`/tmp/ray/session_*/logs/train/`) keep those records; only the console,
which Ray forwards to the driver's terminal, is spared them.

Ray also ends the processes a finished job leaves (a sweep's last trial processes, as its driver
leaves) with SIGTERM: see `exit_quietly_on_sigterm`.
"""

import logging
import sys
from typing import Any

import ray
from ray.train.v2.api.callback import UserCallback

# Ray Train's processes log under this logger, to its log files and to the console.
RAY_TRAIN_LOGGER = "ray.train"


class TeardownNoise(logging.Filter):
    """Drops a record whose text names an actor that died in its run's teardown.

    - Ray Train's barrier, `SynchronizationActor`, which a worker waits at in `ray.train.report`.
      It dies with the run's controller or placement group, which only a teardown or a lost node
      removes; after a lost node, the controller reports the failed workers itself.
    - Any actor that died because its owner, this very process, exited: a controller whose trial
      has ended loses its workers with it, and its control loop, still running for a moment,
      logs their death as a failure of the run.
    """

    def __init__(self, worker_id: str) -> None:
        super().__init__()
        self.own_exit = f"its owner has died. Owner Id: {worker_id}"

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f"\n{record.exc_info[1]}"
        barrier_died = "ActorDiedError" in text and "class_name: SynchronizationActor" in text
        return not (barrier_died or self.own_exit in text)


def quiet_console() -> None:
    """Add `TeardownNoise` to the console handlers of Ray Train's logger in this process.

    Call it in a Ray Train worker or controller once Ray Train has set up its logging there;
    calling it again changes nothing.
    """
    worker_id = ray.get_runtime_context().get_worker_id()
    for handler in logging.getLogger(RAY_TRAIN_LOGGER).handlers:
        console = isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        )
        if console and not any(isinstance(f, TeardownNoise) for f in handler.filters):
            handler.addFilter(TeardownNoise(worker_id))


class QuietConsole(UserCallback):
    """Runs `quiet_console` in the run's controller, where Ray Train calls its callbacks, from
    the first report on (a sweep stops trials only after a report)."""

    def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
        quiet_console()


def exit_quietly_on_sigterm() -> None:
    """Let this Ray worker process end on SIGTERM without printing a traceback.

    Ray's SIGTERM handler raises SystemExit wherever the process is. If that is a finalizer (a
    weakref callback, `__del__`), the exception cannot propagate: Python reports it as an
    "Exception ignored in ..." with its traceback, which Ray forwards to the driver's console
    (seen at the end of a sweep, in a trial process ended as its driver left). The exception is
    lost either way, so only its printout is dropped; any other exception a finalizer raises is
    reported as before. Calling it again changes nothing.
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_exit", False):
        return

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            previous(unraisable)

    hook.drops_exit = True
    sys.unraisablehook = hook
