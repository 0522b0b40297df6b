"""The trackers' environment, from the process that starts a run to every process that trains it.

W&B and MLflow take their credentials and servers from environment variables. A Ray cluster's
processes (a sweep's trials, a run's workers) have the environment they were started with, and on
a cluster of several machines that lacks what train.py was given. The variables set where a run
starts travel to them through Ray's object store, by reference. Not in Ray's `runtime_env`: its
agent writes every runtime_env it sets up, values included, to its log on each node. Not in the
workers' config either: Ray Train's state (the dashboard) records each run's loop config.
"""

import os
from typing import Any

import ray

NAMES = (
    "WANDB_API_KEY",
    "WANDB_BASE_URL",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)
# The key of a worker's loop config that holds the reference.
LOOP_KEY = "tracker_env"


def current() -> dict[str, str]:
    """The trackers' variables set in this process."""
    return {name: os.environ[name] for name in NAMES if os.environ.get(name)}


def ship() -> Any:
    """A reference to `current()` for the processes of a run, or None when none is set. Ray
    must be running; the reference lives as long as this process."""
    found = current()
    return ray.put(found) if found else None


def receive(reference: Any) -> None:
    """Set here (a sweep's trial, a worker) the variables that `ship` sent."""
    if reference is not None:
        os.environ.update(ray.get(reference))
