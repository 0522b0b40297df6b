"""Shared fixtures. One Ray cluster serves the whole test session: starting Ray costs ~10 s."""

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from google.protobuf.json_format import MessageToDict
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from {{ cookiecutter.package_name }}.training.cluster import own_dashboard

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"


def compose_config(*overrides: str, output_dir: Path | None = None) -> DictConfig:
    """The config `python train.py <overrides>` would get, without running Hydra's app."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides))
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """Address of a 2-CPU Ray cluster shared by every test that needs one."""
    if not ray.is_initialized():
        # Ray jobs on this cluster (`make submit`) run `python ...`: this interpreter, as a
        # cluster's image would have the project's. Its processes inherit PATH as it is now.
        bin_dir = str(Path(sys.executable).parent)
        os.environ["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
        # address="local": a fresh cluster for the tests, never one left running by `ray start`.
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=True,
            log_to_driver=False,
            **own_dashboard(),
        )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def train_env(ray_address: str | None) -> dict[str, str]:
    """The environment of a `python train.py` subprocess: on `ray_address`, or its own cluster."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    env.pop("RAY_ADDRESS", None)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    else:  # its own cluster points the state API at itself
        env.pop("RAY_API_SERVER_ADDRESS", None)
    return env


def run_train(
    *overrides: str, ray_address: str | None, timeout: float = 600, cwd: Path = PROJECT_ROOT
) -> subprocess.CompletedProcess:
    """Run `python train.py <overrides>` as a user would (from `cwd`), and wait for it."""
    train_py = str(PROJECT_ROOT / "train.py")
    return run_python(train_py, *overrides, ray_address=ray_address, timeout=timeout, cwd=cwd)


def run_python(
    *args: str, ray_address: str | None, timeout: float = 600, cwd: Path = PROJECT_ROOT
) -> subprocess.CompletedProcess:
    """Run `python <args>` in `cwd` (the project folder), on `ray_address` or its own cluster."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=train_env(ray_address),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def failure(proc: subprocess.CompletedProcess) -> str:
    """What went wrong in a train.py run: its Python tracebacks and the end of its output.

    Ray's log lines follow the error, so the last few thousand characters alone often miss it.
    """
    errors = proc.stderr or ""
    starts = [found.start() for found in re.finditer(r"Traceback \(most recent call", errors)]
    parts = [errors[start : start + 3000] for start in starts[-2:]]
    return "\n...\n".join([*parts, errors[-2000:]])


def scalars(log_dir: Path, tag: str) -> list[float]:
    """A TensorBoard scalar's values in the order its chart draws them: by step.

    A run that went on in another process (a PBT exploit, a restart) adds an event file, and
    files made in the same second are read in the order of their writers' pids, not by time.
    """
    events = EventAccumulator(str(log_dir)).Reload().Scalars(tag)
    events.sort(key=lambda event: (event.step, event.wall_time))
    return [event.value for event in events]


def tensorboard_hparams(log_dir: Path) -> tuple[dict, list[str]]:
    """The hyperparameters and metric names a run shows in TensorBoard's HParams tab."""
    content = (
        EventAccumulator(str(log_dir)).Reload().PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    )
    start = content[hparams_metadata.SESSION_START_INFO_TAG]
    values = MessageToDict(hparams_metadata.parse_session_start_info_plugin_data(start))
    experiment = hparams_metadata.parse_experiment_plugin_data(
        content[hparams_metadata.EXPERIMENT_TAG]
    )
    return values["hparams"], [info.name.tag for info in experiment.metric_infos]


def start_train(*overrides: str, ray_address: str | None) -> subprocess.Popen:
    """Start `python train.py <overrides>` without waiting; stdout and stderr come together."""
    return subprocess.Popen(
        [sys.executable, "train.py", *overrides],
        cwd=PROJECT_ROOT,
        env=train_env(ray_address),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
