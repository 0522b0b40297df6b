"""Runs on a Ray cluster of several nodes (all on this machine): DDP across nodes, a lost node.

One cluster serves the module (a node takes ~10-20 s to start on 2 cores): a 1-CPU head and two
1-CPU worker nodes. The tests run in file order; the node-loss tests lose the worker nodes.
"""

import csv
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.util.state import list_actors

from .cluster_nodes import ENV, LocalCluster
from .conftest import failure, train_env
from .test_reliability import SLOW, val_loss_steps

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

# Two workers, never two on one node.
SPREAD = ["scaling=cpu", "scaling.num_workers=2", "scaling.placement_strategy=STRICT_SPREAD"]


@pytest.fixture(scope="module")
def nodes() -> Iterator[LocalCluster]:
    cluster = LocalCluster()
    try:
        cluster.start("head")
        cluster.start("b")
        cluster.start("c")
        yield cluster
    finally:
        left = cluster.stop()
    assert not left, f"processes of the cluster still alive: {left}"


def env_of(cluster: LocalCluster) -> dict[str, str]:
    """A `python train.py` that joins `cluster` (ray.address), as a user's would."""
    env = {**train_env(None), **ENV, "RAY_API_SERVER_ADDRESS": cluster.dashboard}
    # A group that cannot be placed is given up sooner than Ray's 60 s (tests on 2 cores).
    env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = "30"
    return env


def start(cluster: LocalCluster, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", *overrides, f"ray.address={cluster.address}"],
        cwd=Path(__file__).parents[1],
        env=env_of(cluster),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def workers_by_node(cluster: LocalCluster, exclude: set[str] = frozenset()) -> dict[str, str]:
    """The Ray Train workers of the cluster, by actor id: the name of the node each runs on."""
    names = {node_id: name for name, node_id in cluster.node_ids().items()}
    actors = list_actors(
        address=cluster.dashboard,
        filters=[("class_name", "=", "RayTrainWorker")],
        timeout=30,
        detail=True,
    )
    return {a.actor_id: names[a.node_id] for a in actors if a.actor_id not in exclude}


def latest_epoch(run_dir: Path) -> int:
    """The epochs completed at the latest checkpoint Ray Train has registered (0: none yet)."""
    try:
        snapshot = json.loads(
            (run_dir / "ray_train" / "checkpoint_manager_snapshot.json").read_text()
        )
        return snapshot["latest_checkpoint_result"]["metrics"]["epoch"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return 0


def wait_for_epoch(run_dir: Path, epoch: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while latest_epoch(run_dir) < epoch:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint of epoch {epoch}:\n{ended(proc)[-4000:]}")
        time.sleep(0.2)


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """The output of a run once it has ended; a run still going after `timeout` s fails."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {timeout} s:\n{ended(proc)[-4000:]}") from None


def ended(proc: subprocess.Popen) -> str:
    """The output of a run, stopped now if it still runs (a hung run must not hang the test)."""
    if proc.poll() is None:
        proc.kill()
    return proc.communicate(timeout=60)[0]


def test_ddp_trains_across_nodes(nodes: LocalCluster, tmp_path: Path) -> None:
    before = set(workers_by_node(nodes))
    storage = tmp_path / "shared"  # one folder every node reaches, as a bucket would be
    run_dir = tmp_path / "run"
    proc = start(
        nodes,
        *SPREAD,
        "trainer.max_epochs=3",
        f"paths.storage_path={storage}",
        f"hydra.run.dir={run_dir}",
    )
    output = finish(proc, timeout=500)
    assert proc.returncode == 0, failure(subprocess.CompletedProcess([], 1, "", output))

    placed = workers_by_node(nodes, exclude=before)
    assert len(placed) == 2 and len(set(placed.values())) == 2, placed
    result = json.loads((run_dir / "result.json").read_text())  # where the run folder is
    assert result["metrics"]["epoch"] == 3 and result["metrics"]["val_acc"] > 0.8, result
    assert Path(result["best_checkpoint"]).parent == storage / "ray_train"  # on the storage path
    assert (Path(result["best_checkpoint"]) / "checkpoint.ckpt").is_file()
    assert len(val_loss_steps(run_dir)) == 3  # TensorBoard in the run folder: rank 0 only
    # One log monitor on this machine (the head's): each of rank 0's lines shows once.
    assert output.count("epoch 1/3 |") == 1, output[-4000:]


def test_a_sweep_spreads_over_the_nodes_and_retries_the_trial_of_a_lost_node(
    nodes: LocalCluster, tmp_path: Path
) -> None:
    """Three one-process trials at once, one per node; a node is lost during its trial, which
    is retried on a node left. Runs before the node-loss tests; adds a node in its place."""
    sweep_dir = tmp_path / "sweep"
    proc = start(
        nodes,
        "-m",
        "search=asha",
        "search.max_concurrent_trials=3",
        "search.trial_retries=1",
        "search.scheduler.grace_period=6",  # no trial is stopped early: all three finish
        "trainer.max_epochs=6",
        *SLOW,
        "optimizer.lr=0.01,0.003,0.001",
        f"hydra.sweep.dir={sweep_dir}",
    )
    deadline = time.monotonic() + 300
    while len(trial_nodes(nodes, sweep_dir)) < 3:  # every trial has reported an epoch
        assert proc.poll() is None and time.monotonic() < deadline, ended(proc)[-4000:]
        time.sleep(0.5)
    where = trial_nodes(nodes, sweep_dir)
    assert sorted(where.values()) == ["b", "c", "head"], where  # placed on every node
    victim = next(trial for trial, node in where.items() if node == "c")
    nodes.kill("c")
    nodes.start("d")  # a node in place of the lost one, for the tests after this one
    output = finish(proc, timeout=500)
    assert proc.returncode == 0, output[-4000:]

    rows = {row["trial"]: row for row in csv.DictReader((sweep_dir / "trials.csv").open())}
    assert all(row["status"] == "completed" and row["epochs"] == "6" for row in rows.values()), rows
    # The lost node's trial ran again on a node left; the others ran once, where they started.
    again = trial_nodes(nodes, sweep_dir)
    assert again[victim] != "c", again
    assert {t: n for t, n in again.items() if t != victim} == {
        t: n for t, n in where.items() if t != victim
    }


def trial_nodes(cluster: LocalCluster, sweep_dir: Path) -> dict[str, str]:
    """The node each trial of a sweep last reported from (Tune records the trial's pid), for
    the trials that have reported."""
    names = {node_id: name for name, node_id in cluster.node_ids().items()}
    actors = list_actors(address=cluster.dashboard, detail=True, limit=10_000, timeout=30)
    node_of_pid = {actor.pid: names.get(actor.node_id) for actor in actors}
    where = {}
    for path in sweep_dir.glob("tune/trial_*/result.json"):
        lines = path.read_text().splitlines()
        if lines:
            pid = json.loads(lines[-1])["pid"]
            where[path.parent.name.removeprefix("trial_")] = node_of_pid.get(pid)
    return where


def test_a_lost_node_costs_at_most_one_epoch(nodes: LocalCluster, tmp_path: Path) -> None:
    """A worker node is lost during epoch 4 of 8: the run goes on with the two nodes left."""
    before = set(workers_by_node(nodes))
    epochs = 8
    proc = start(
        nodes,
        *SPREAD,
        f"trainer.max_epochs={epochs}",
        "fault_tolerance.max_failures=1",
        *SLOW,
        f"hydra.run.dir={tmp_path}",
    )
    wait_for_epoch(tmp_path, 3, proc)  # three epochs' checkpoints registered
    victim = min(set(workers_by_node(nodes, exclude=before).values()) - {"head"})
    lost_at_epoch = latest_epoch(tmp_path)
    killed = nodes.kill(victim)
    wait_for_epoch(tmp_path, lost_at_epoch + 1, proc)
    recovered = time.monotonic() - killed
    output = finish(proc, timeout=400)
    assert proc.returncode == 0, output[-4000:]
    print(f"node {victim} lost after epoch {lost_at_epoch}; next epoch {recovered:.0f} s later")

    result = json.loads((tmp_path / "result.json").read_text())
    assert result["metrics"]["epoch"] == epochs and result["metrics"]["val_acc"] > 0.95
    steps = val_loss_steps(tmp_path)
    # Every epoch trained; only those after the latest checkpoint (at most one) trained twice.
    assert len(set(steps)) == epochs, steps
    assert len(steps) - len(set(steps)) <= 1, steps


def test_too_few_nodes_left_fail_the_run_in_bounded_time(
    nodes: LocalCluster, tmp_path: Path
) -> None:
    """Two nodes left, then one: two STRICT_SPREAD workers cannot go on, and the run says so."""
    assert len(nodes.alive()) == 2
    before = set(workers_by_node(nodes))
    proc = start(
        nodes,
        *SPREAD,
        "trainer.max_epochs=50",
        "fault_tolerance.max_failures=1",
        *SLOW,
        f"hydra.run.dir={tmp_path}",
    )
    wait_for_epoch(tmp_path, 1, proc)
    victim = min(set(workers_by_node(nodes, exclude=before).values()) - {"head"})
    killed = nodes.kill(victim)
    output = finish(proc, timeout=400)
    took = time.monotonic() - killed
    print(f"node {victim} lost; the run failed {took:.0f} s later")
    assert proc.returncode != 0
    assert "could not be placed on the 1 node(s) alive now" in output, output[-4000:]
    assert not (tmp_path / "result.json").exists()
