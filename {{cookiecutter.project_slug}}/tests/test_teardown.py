"""Errors a run's own teardown causes stay off the console and in Ray Train's log files.

Real Ray: the actors die the way they do when a run is stopped, and the filter is shown the
errors Ray raises for them.
"""

import json
import logging
import time
from pathlib import Path

import pytest
import ray
from ray.train import ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.checkpoint.sync_actor import SynchronizationActor
from ray.train.v2._internal.util import construct_user_exception_with_traceback
from ray.train.v2.api.callback import UserCallback
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.queue import Queue
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from {{ cookiecutter.package_name }}.teardown import RAY_TRAIN_LOGGER, TeardownNoise, quiet_console
from {{ cookiecutter.package_name }}.training.run import run_config
from {{ cookiecutter.package_name }}.tuning.reporting import _ForwardReports

from .conftest import compose_config

pytestmark = pytest.mark.slow


@ray.remote(num_cpus=0)
class Owner:
    """Stands in for a run's controller: the actors it creates die with it."""

    def worker_id(self) -> str:
        return ray.get_runtime_context().get_worker_id()

    def create_barrier(self, group) -> list:
        strategy = PlacementGroupSchedulingStrategy(group)
        return [SynchronizationActor.options(scheduling_strategy=strategy).remote()]

    def create_child(self) -> list:
        return [Owner.remote()]

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def create_queue(self) -> list:
        return [Queue(actor_options={"num_cpus": 0})]

    def forward(self, callback: UserCallback) -> None:
        callback.after_report(None, [{"epoch": 0}], None)


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Console(Capture, logging.StreamHandler):
    """Ray Train's console handler (`PlainRayHandler` is a StreamHandler), captured."""


def last_lines(records: list[logging.LogRecord]) -> list[str]:
    return [record.getMessage().splitlines()[-1] for record in records]


@pytest.mark.parametrize("teardown", ["placement group removed", "owner killed"])
def test_a_worker_torn_down_mid_report_logs_no_traceback_to_the_console(
    ray_address: str, teardown: str
) -> None:
    # What a stopped run's worker meets: rank 0 waits at Ray Train's barrier for a rank that
    # never comes, and the run's teardown kills the barrier's owner or removes its group.
    group = placement_group([{"CPU": 0.01}])
    ray.get(group.ready())
    owner = Owner.remote()
    [barrier] = ray.get(owner.create_barrier.remote(group))
    waiting = barrier.broadcast_from_rank_zero.remote(0, 2, "checkpoint", "report")
    assert ray.wait([waiting], timeout=1)[1] == [waiting]  # waiting at the barrier
    if teardown == "owner killed":
        ray.kill(owner)
    else:
        remove_placement_group(group)
    with pytest.raises(ray.exceptions.ActorDiedError) as torn_down:
        ray.get(waiting, timeout=60)
    remove_placement_group(group)

    ray_train_log = logging.getLogger(RAY_TRAIN_LOGGER)
    console, log_file = Console(), Capture()
    ray_train_log.addHandler(console)
    ray_train_log.addHandler(log_file)
    try:
        quiet_console()
        quiet_console()  # a second call adds nothing
        assert sum(isinstance(f, TeardownNoise) for f in console.filters) == 1
        assert not log_file.filters
        for error in (torn_down.value, ValueError("a real error in the loop")):
            try:
                raise error
            except BaseException as caught:
                construct_user_exception_with_traceback(caught)  # Ray Train logs it here
    finally:
        ray_train_log.removeHandler(console)
        ray_train_log.removeHandler(log_file)
    assert last_lines(console.records) == ["ValueError: a real error in the loop"]
    assert len(log_file.records) == 2  # the log file keeps both


def test_a_controller_ended_with_its_trial_does_not_report_its_workers_death(
    ray_address: str,
) -> None:
    # A trial's process ends and its run's controller with it; the controller's workers die
    # because their owner did, and the controller's loop, still running, logs that.
    controller = Owner.remote()
    controller_id = ray.get(controller.worker_id.remote())
    [worker] = ray.get(controller.create_child.remote())
    busy = worker.wait.remote(60)
    ray.kill(controller)
    with pytest.raises(ray.exceptions.ActorDiedError) as died:
        ray.get(busy, timeout=60)
    assert f"Owner Id: {controller_id}" in str(died.value)

    # As Ray Train logs it: the failure policy's message, the backend's warning with exc_info.
    policy = logging.LogRecord(
        "ray.train.policy", logging.INFO, __file__, 1, f"RAISE\n{died.value}", None, None
    )
    backend = logging.LogRecord(
        "ray.train.backend",
        logging.WARNING,
        __file__,
        1,
        "Graceful shutdown of backend failed.",
        None,
        (type(died.value), died.value, None),
    )
    in_the_controller = TeardownNoise(controller_id)
    assert not in_the_controller.filter(policy) and not in_the_controller.filter(backend)
    # Elsewhere, the same error is about a process that is not the one logging: it shows.
    in_another_process = TeardownNoise(ray.get_runtime_context().get_worker_id())
    assert in_another_process.filter(policy) and in_another_process.filter(backend)


def test_every_run_quiets_its_controllers_console_and_not_its_log_files(
    ray_address: str, tmp_path: Path
) -> None:
    seen = tmp_path / "controller_handlers.json"

    class Inspect(UserCallback):  # runs in the controller, after the project's own callbacks
        def after_report(self, run_context, metrics, checkpoint) -> None:
            handlers = logging.getLogger(RAY_TRAIN_LOGGER).handlers
            filters = [[type(h).__name__, [type(f).__name__ for f in h.filters]] for h in handlers]
            seen.write_text(json.dumps(filters))

    def loop(config: dict) -> None:
        ray.train.report({"epoch": 0})

    cfg = compose_config(output_dir=tmp_path)
    TorchTrainer(
        loop, scaling_config=ScalingConfig(num_workers=1), run_config=run_config(cfg, [Inspect()])
    ).fit()
    handlers = json.loads(seen.read_text())
    console = [filters for kind, filters in handlers if kind == "PlainRayHandler"]
    files = [filters for kind, filters in handlers if kind == "SessionFileHandler"]
    assert console and all("TeardownNoise" in filters for filters in console)
    assert files and not any("TeardownNoise" in filters for filters in files)


def test_a_report_for_a_trial_that_has_ended_is_dropped_without_an_error(
    ray_address: str,
) -> None:
    # Tune ends a stopped trial's process, and the report queue it owns, while the run's
    # controller may still be handing on a report it collected just before its abort.
    trial = Owner.remote()
    [queue] = ray.get(trial.create_queue.remote())
    ray.kill(trial)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get(queue.actor.qsize.remote())
        except ray.exceptions.RayActorError:
            break  # the queue died with its owner
        time.sleep(0.1)
    else:
        pytest.fail("the queue outlived the process that owns it")
    controller = Owner.remote()
    ray.get(controller.forward.remote(_ForwardReports(queue, run_id="ended")))
