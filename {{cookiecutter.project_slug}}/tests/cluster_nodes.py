"""A Ray cluster of several nodes on this machine, started and stopped by the tests.

Each node is one `ray start --block` process, started in a process group of its own: its raylet,
its agents and the workers it starts are that process's descendants, in that group. A node is
lost (as a preempted machine would be) by killing its group; the cluster is stopped by killing
every group it started, and nothing else: other Ray clusters may run on this machine.

Every node gets ports of its own (two clusters on one machine otherwise collide on Ray's fixed
defaults, e.g. the dashboard agent's 52365) and the cluster a Ray folder of its own.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from ray.util.state import list_nodes

RAY_CLI = str(Path(sys.executable).parent / "ray")
# Ports each node's workers take, from a range of their own.
WORKER_PORTS = 40
# Seconds for a node to register with the cluster.
NODE_START_TIMEOUT_S = 120
# Seconds a node's processes get to end after SIGTERM before SIGKILL (some take 20 s and more).
STOP_GRACE_S = 5
# The environment of the nodes, and what a run needs to join them.
ENV = {"RAY_AUTH_MODE": "disabled"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_port_range(size: int) -> tuple[int, int]:
    """A range of `size` ports that are all free now, away from the ephemeral ones."""
    for _ in range(100):
        start = random.randrange(20_000, 30_000 - size)
        try:
            probes = []
            for port in range(start, start + size):
                probe = socket.socket()
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return start, start + size - 1
    raise RuntimeError(f"no {size} free ports in a row")


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    resources: dict[str, float] = field(default_factory=dict)

    def pids(self) -> set[int]:
        """This node's processes: `ray start --block` and all its descendants, and whatever
        else is left in its process group (a worker a dead raylet left behind)."""
        pids = {self.process.pid}
        try:
            pids |= {child.pid for child in psutil.Process(self.process.pid).children(True)}
        except psutil.NoSuchProcess:
            pass
        return pids | in_group(self.process.pid)

    def raylet(self) -> int:
        (pid,) = [
            child.pid
            for child in psutil.Process(self.process.pid).children(recursive=True)
            if child.name() == "raylet"
        ]
        return pid


def in_group(pgid: int) -> set[int]:
    """The live processes of process group `pgid`."""
    found = set()
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                found.add(process.pid)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return found


class LocalCluster:
    """A head and worker nodes, each with the CPUs and custom resources it is given."""

    def __init__(self) -> None:
        # Short: Ray's socket paths under it must stay under the OS's limit.
        self.temp_dir = tempfile.mkdtemp(prefix="rn", dir="/tmp")
        self.nodes: dict[str, Node] = {}
        self.address = ""
        self.dashboard = ""
        self.env = {
            **os.environ,
            "RAY_TMPDIR": self.temp_dir,
            # Processes started on a node inherit this: the state API asks this cluster.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        }
        self.env.pop("RAY_ADDRESS", None)
        # Token authentication off, whatever ~/.ray holds: the nodes, the runs that join them
        # (ENV) and the state API queries of the tests (Ray's default) then agree.
        self.env.update(ENV)

    def start(self, name: str, num_cpus: int = 1, resources: dict | None = None) -> Node:
        """Start a node (the first one is the head) and wait until the cluster lists it. It
        has a resource `node_<name>` (1) besides `resources`: work can be sent there."""
        head = not self.nodes
        resources = {**(resources or {}), f"node_{name}": 1}
        low, high = free_port_range(WORKER_PORTS)
        args = [
            RAY_CLI,
            "start",
            "--block",
            f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources)}",
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--min-worker-port={low}",
            f"--max-worker-port={high}",
            "--object-store-memory=200000000",
            "--disable-usage-stats",
            # Every node here sees the same log files: one node's monitor prints them once.
            f"--include-log-monitor={'true' if head else 'false'}",
        ]
        if head:
            gcs, dashboard = free_port(), free_port()
            self.address = f"127.0.0.1:{gcs}"
            self.dashboard = f"http://127.0.0.1:{dashboard}"
            self.env["RAY_API_SERVER_ADDRESS"] = self.dashboard
            args += [
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={gcs}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                f"--ray-client-server-port={free_port()}",
                f"--temp-dir={self.temp_dir}",
            ]
        else:
            args += [f"--address={self.address}", "--node-ip-address=127.0.0.1"]
        process = subprocess.Popen(
            args,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a process group of its own, to stop it whole
        )
        node = Node(name, process, {"CPU": num_cpus, **resources})
        self.nodes[name] = node
        self.wait_for_nodes(len(self.alive()))
        return node

    def alive(self) -> list[Node]:
        return [node for node in self.nodes.values() if node.process.poll() is None]

    def wait_for_nodes(self, count: int) -> None:
        """Wait until the cluster's GCS counts `count` live nodes."""
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.live_nodes() == count:
                return
            time.sleep(0.5)
        raise AssertionError(f"the cluster did not reach {count} live nodes")

    def live_nodes(self) -> int:
        """How many nodes the cluster's GCS counts alive (-1 while it does not answer)."""
        try:
            return len(
                list_nodes(address=self.dashboard, filters=[("state", "=", "ALIVE")], timeout=10)
            )
        except Exception:  # the dashboard is still starting  # noqa: BLE001
            return -1

    def node_ids(self) -> dict[str, str]:
        """Ray's node id of each node started here (alive or dead), by name."""
        ids = {}
        for node in list_nodes(address=self.dashboard, detail=True, timeout=30):
            for name in self.nodes:
                if f"node_{name}" in node.resources_total:
                    ids[name] = node.node_id
        return ids

    def kill(self, name: str) -> float:
        """Lose a node at once, as a preempted machine: SIGKILL to all its processes. Returns
        the time it happened (time.monotonic())."""
        node = self.nodes[name]
        pids = node.pids()
        os.killpg(node.process.pid, signal.SIGKILL)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.process.wait(timeout=30)
        return time.monotonic()

    def stop(self) -> set[int]:
        """Stop every node this cluster started, workers first; return what is still alive
        (nothing, unless something refused to die)."""
        started = set().union(*(node.pids() for node in self.nodes.values()))
        for node in reversed(list(self.nodes.values())):
            try:
                os.killpg(node.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and alive(started):
            time.sleep(0.2)
        for pid in alive(started):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for node in self.nodes.values():
            try:
                node.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(0.5)
        left = alive(started)
        if not left:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (a zombie has ended)."""
    living = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.add(pid)
        except psutil.NoSuchProcess:
            pass
    return living
