"""Fault tolerance, resuming an interrupted run, and clean Ctrl-C, with real Ray processes."""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from ray.util.state import list_actors
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .cluster_nodes import alive
from .conftest import failure, run_train, start_train, train_env

pytestmark = pytest.mark.slow

# Epochs of about a second: a kill or Ctrl-C sent after the second checkpoint lands well before the
# end. (With 2,048 rows an epoch took 70 ms, and in CI a 20-epoch run finished in the second that
# Ray Train's checkpoint registry and its abort lagged behind the worker.)
SLOW = ["data=synthetic", "data.source.num_samples=32768", "checkpoint.every_n_epochs=1"]


def wait_for_checkpoints(run_dir: Path, count: int, proc: subprocess.Popen) -> None:
    """Wait until Ray Train has registered `count` epochs' checkpoints (not just written them:
    a report still queued in a worker is lost with it), or a run in one process (scaling=local)
    has kept them (renamed into place once complete)."""
    snapshot = run_dir / "ray_train" / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        kept = sorted(run_dir.glob("ray_train/checkpoint_epoch_*"))
        if kept and int(kept[-1].name.rsplit("_", 1)[1]) >= count:
            return
        try:
            latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
            if latest and latest["metrics"]["epoch"] >= count:
                return
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"no {count} checkpoints in {run_dir}; output:\n{proc.stdout.read()}")


def train_workers() -> set[int]:
    """The pids of the live Ray Train workers of the tests' cluster, from Ray's state API (never
    a machine-wide search: another Ray may run here)."""
    actors = list_actors(
        filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")], timeout=30
    )
    return {actor.pid for actor in actors}


def own_cluster(proc: subprocess.Popen) -> set[int]:
    """The pids of the Ray cluster processes that the run `proc` started (its children)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return set()
    wanted = ("raylet", "gcs_server")
    return {child.pid for child in children if any(name in child.name() for name in wanted)}


def val_loss_steps(run_dir: Path) -> list[int]:
    return [
        event.step
        for event in EventAccumulator(str(run_dir / "tensorboard")).Reload().Scalars("val_loss")
    ]


def test_killed_worker_restarts_from_the_latest_checkpoint(
    ray_address: str, tmp_path: Path
) -> None:
    workers_before = train_workers()
    proc = start_train(
        "scaling=cpu",  # a worker group, which Ray Train restarts
        "trainer.max_epochs=5",
        "fault_tolerance.max_failures=1",
        *SLOW,
        f"hydra.run.dir={tmp_path}",
        ray_address=ray_address,
    )
    wait_for_checkpoints(tmp_path, 2, proc)
    (worker,) = train_workers() - workers_before
    os.kill(worker, signal.SIGKILL)
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output[-4000:]

    result = json.loads((tmp_path / "result.json").read_text())
    assert result["metrics"]["epoch"] == 5  # all 5 epochs
    # Restarted from a checkpoint, not from scratch: the first epoch was trained once. (Epochs
    # after the last registered checkpoint are trained again: that is what a restart costs.)
    steps = val_loss_steps(tmp_path)
    assert len(set(steps)) == 5 and steps.count(min(steps)) == 1, steps


def test_interrupted_run_resumes_in_the_same_folder(ray_address: str, tmp_path: Path) -> None:
    epochs = 10
    args = [f"trainer.max_epochs={epochs}", *SLOW, f"hydra.run.dir={tmp_path}"]
    proc = start_train(*args, ray_address=ray_address)
    wait_for_checkpoints(tmp_path, 2, proc)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert not (tmp_path / "result.json").exists()
    trained_before = len(set(val_loss_steps(tmp_path)))
    assert 2 <= trained_before < epochs

    # The run says how to go on; that very command resumes it.
    hint = "To continue from its latest checkpoint, run: python train.py "
    (command,) = [line.split(hint)[1] for line in output.splitlines() if hint in line]
    assert shlex.split(command) == [*args[:-1], f"hydra.run.dir={tmp_path}"]
    again = run_train(*shlex.split(command), ray_address=ray_address)
    assert again.returncode == 0, failure(again)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["metrics"]["epoch"] == epochs
    steps = val_loss_steps(tmp_path)  # TensorBoard continues the same run
    assert len(set(steps)) == epochs and steps.count(min(steps)) == 1, steps


def test_ctrl_c_leaves_no_ray_processes_behind(tmp_path: Path) -> None:
    proc = start_train(
        "trainer.max_epochs=50", *SLOW, f"hydra.run.dir={tmp_path}", ray_address=None
    )  # its own local cluster
    wait_for_checkpoints(tmp_path, 1, proc)
    started = own_cluster(proc)
    assert started, "the run did not start its own cluster"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert not (tmp_path / "result.json").exists(), "the run ended before Ctrl-C"
    deadline = time.monotonic() + 30
    while alive(started) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive(started)


# A run's own cluster, with a file of a dead `ray start` cluster on the machine: Ray Train's
# placement-group cleaner, inside the cluster, must still find the run's controller alive.
CLEANER_VIEW = """
import ray
from ray.util.state import get_actor
from {{ cookiecutter.package_name }}.training import cluster

cluster.connect({"num_cpus": 1})

@ray.remote(num_cpus=0)
class Controller:
    def ready(self):
        return True

@ray.remote(num_cpus=0)
def state_seen_inside(actor_id):
    actor = get_actor(actor_id, timeout=10)
    return actor.state if actor else "not found"

controller = Controller.remote()
ray.get(controller.ready.remote())
print("controller:", ray.get(state_seen_inside.remote(controller._actor_id.hex()), timeout=60))
ray.shutdown()
"""


def test_ray_inside_a_local_cluster_asks_it_not_a_stale_ray_start_cluster() -> None:
    with tempfile.TemporaryDirectory(prefix="rt", dir="/tmp") as temp:  # short: socket paths
        (Path(temp) / "ray").mkdir()
        (Path(temp) / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")  # nothing there
        env = {**train_env(None), "RAY_TMPDIR": temp}
        proc = subprocess.run(
            [sys.executable, "-c", CLEANER_VIEW],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert proc.returncode == 0, failure(proc)
    assert "controller: ALIVE" in proc.stdout


def test_a_run_joins_the_cluster_that_ray_start_runs_here(tmp_path: Path) -> None:
    # A head of its own, named in a Ray folder of its own: never a user's cluster or the tests'.
    with tempfile.TemporaryDirectory(prefix="rh", dir="/tmp") as temp:  # short: socket paths
        env = {**train_env(None), "RAY_TMPDIR": temp}
        ray_cli = str(Path(sys.executable).parent / "ray")
        head = [ray_cli, "start", "--head", "--port", str(free_port()), "--num-cpus", "2"]
        started = subprocess.run(
            [*head, "--include-dashboard=false", "--disable-usage-stats"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        try:
            assert started.returncode == 0, started.stderr[-3000:]
            proc = subprocess.run(
                [sys.executable, "train.py", "debug=fast", f"hydra.run.dir={tmp_path}"],
                cwd=Path(__file__).parents[1],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
        finally:
            stop_processes_of(temp)
    assert proc.returncode == 0, failure(proc)
    assert "Joining the Ray cluster that `ray start` runs on this machine" in proc.stdout
    assert "Starting a local Ray cluster" not in proc.stdout
    assert json.loads((tmp_path / "result.json").read_text())["best_checkpoint"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_processes_of(ray_tmpdir: str) -> None:
    """Stop the Ray processes whose command line names `ray_tmpdir`: the head a test started
    there (`ray start` leaves its processes running on their own), and nothing else."""
    own = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and ray_tmpdir in command:
            own.append(int(entry.name))
    for pid in own:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in own):
        time.sleep(0.2)
    for pid in own:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
