"""What a run prints: the project's own lines on the console, Ray's notices in the run's log.

Ray writes its start-up and progress notices (the cluster started, each Ray Data execution
finished, Ray Train's local mode) at INFO through its own loggers and handlers. Here those
handlers keep only warnings and errors for the console, and the run's `train.log` (the file
Hydra's job logging writes) gets every record as well. Ray's own log files keep everything too.
"""

import logging
import sys

# Ray's loggers that print on the console: the root of Ray's, and Ray Data's, which has handlers
# of its own (ray.data._internal.logging).
RAY_CONSOLE_LOGGERS = ("ray", "ray.data")
# Notices that say nothing a researcher acts on: into train.log only, not the console.
FILE_ONLY_LOGGERS = (
    # "Token authentication is enabled for this Ray cluster", at every start
    "ray._private.authentication.authentication_token_setup",
)
# One line per epoch of a run (training/callbacks.py EpochLine).
PROGRESS_LOGGER = "progress"


def quiet_ray_console() -> None:
    """Ray's INFO notices to train.log only; its warnings and errors still reach the console.

    Call after Hydra has set up logging, once Ray and Ray Data are imported (they configure
    their loggers on import). Safe to call again.
    """
    import ray.data  # noqa: F401, PLC0415 (its logging is configured on import)

    files = _ray_file_handlers()
    for name in RAY_CONSOLE_LOGGERS:
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if _is_console(handler):
                handler.setLevel(max(handler.level, logging.WARNING))
        _add(logger, files)
    for name in FILE_ONLY_LOGGERS:
        logger = logging.getLogger(name)
        logger.propagate = False
        # Without a log file (a sweep's driver) nowhere, not Python's last-resort handler.
        _add(logger, [*files, _NOWHERE])


def quiet_train_worker_reports() -> None:
    """In a Ray Train worker: its "Reporting training result N: TrainingReport(...)" line, one
    per epoch, to Ray Train's log file of the worker only.

    Ray Train 2.60 logs it under a logger named after its module's file path, not under
    `ray.train`, so the run's LoggingConfig (training/run.py) does not reach it: it goes up to
    the worker's root logger, whose handlers Ray Train set up, a file and the console.
    """
    from ray.train.v2._internal.execution import context  # noqa: PLC0415

    logger = logging.getLogger(context.__file__)
    logger.propagate = False
    _add(logger, [h for h in logging.getLogger().handlers if not _is_console(h)])


def trial_console() -> None:
    """In a sweep's trial: its own INFO lines (its summary, where its results are) to its
    train.log only, its warnings and errors to the sweep's console as well, which has a line
    per trial result already (tuning/sweep.py SweepMonitor). Hydra has set up the trial's
    logging; its next trial in this process sets it up anew."""
    for handler in logging.getLogger().handlers:
        if _is_console(handler):
            handler.setLevel(max(handler.level, logging.WARNING))


def progress_logger() -> logging.Logger:
    """The logger of the per-epoch lines. In a Ray Train worker, which has no logging set up,
    it prints to the worker's stdout (Ray forwards it to the driver's console)."""
    logger = logging.getLogger(PROGRESS_LOGGER)
    logger.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    return logger


_ray_files: dict[str, logging.Handler] = {}
_NOWHERE = logging.NullHandler()


def _ray_file_handlers() -> list[logging.Handler]:
    """A handler of Ray's own, at INFO, for each log file of the run (Hydra's file handlers on
    the root logger): Ray sets the format of every handler of its loggers when it starts, and
    Ray Data logs at DEBUG."""
    handlers = []
    for root_handler in logging.getLogger().handlers:
        if not isinstance(root_handler, logging.FileHandler):
            continue
        path = root_handler.baseFilename
        if path not in _ray_files:
            handler = logging.FileHandler(path, mode="a", encoding=root_handler.encoding)
            handler.setLevel(logging.INFO)
            handler.setFormatter(root_handler.formatter)
            _ray_files[path] = handler
        handlers.append(_ray_files[path])
    return handlers


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler
    )


def _add(logger: logging.Logger, handlers: list[logging.Handler]) -> None:
    for handler in handlers:
        if handler not in logger.handlers:
            logger.addHandler(handler)
