"""Connecting to Ray, and refusing resource requests the cluster can never satisfy."""

import logging
import math
import os
import socket
from collections.abc import Mapping
from typing import Any

import ray
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


# Ray Train's controller collects the workers' reports every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S
# (2 s by default), and a worker's report waits until the previous one was collected: with a
# report per epoch, no run goes faster than one epoch per interval. 0.05 s let the digits' epochs
# (0.06 s) run at full speed; 0.1 s held them to 0.1 s, 0.02 s was no faster. Ray Train passes
# the variable on from this process to its controller and workers; a value set by the user wins.
# Ray Train also sends a worker's print() to its log files through a patched print, which in Ray
# 2.60 writes every line to the console a second time (Ray wraps the worker's stdout, and the
# patch then copies to both): off, each print() shows once, and Ray's worker logs still have it.
RAY_TRAIN_ENV_DEFAULTS = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.05",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}
# On a cluster started here, no cloud provider preempts nodes: Ray Train's preemption watcher
# would only be one more process to start for every run and sweep trial.
LOCAL_CLUSTER_ENV_DEFAULTS = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
# Ray's default dashboard port; Ray tries the next ones when it is taken.
DASHBOARD_PORT, DASHBOARD_PORT_TRIES = 8265, 50


class ResourceError(CompactHydraException, RuntimeError):
    """The requested workers can never be placed on this cluster (printed without a traceback)."""


def connect(ray_cfg: Mapping[str, Any]) -> None:
    """Join the cluster named by `ray.address` or RAY_ADDRESS, else start a local one.

    Inside a Ray task or actor (a Tune trial), Ray is already initialised and this does nothing.
    """
    for name, value in RAY_TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS") or ray_cfg.get("address") or None
    # Plain containers all the way down: Ray validates e.g. env_vars as a real dict.
    runtime_env = OmegaConf.to_container(OmegaConf.create(ray_cfg.get("runtime_env") or {}))
    if address:
        log.info("Connecting to the Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env or None, log_to_driver=True)
    else:
        log.info("Starting a local Ray cluster (set ray.address or RAY_ADDRESS to use another)")
        for name, value in LOCAL_CLUSTER_ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)  # the new cluster's processes inherit them
        dashboard = ray_cfg.get("include_dashboard")
        ray.init(
            address="local",  # a new cluster, even if `ray start` left one running here
            num_cpus=ray_cfg.get("num_cpus"),
            num_gpus=ray_cfg.get("num_gpus"),
            include_dashboard=dashboard,
            runtime_env=runtime_env or None,
            **(own_dashboard() if dashboard is not False else {}),
        )


def own_dashboard() -> dict[str, int]:
    """`ray.init` arguments for a cluster started here: a dashboard port chosen now, which
    Ray's state API in this process and every process of the cluster is pointed at.

    Ray Train calls the state API from inside the cluster: its placement-group cleaner asks
    every second whether the run's controller is alive, and removes the run's placement group
    when it is not. Without RAY_ADDRESS, the state API asks the cluster named in the file that
    `ray start` writes (/tmp/ray/ray_current_cluster): another cluster when `ray start` left one
    running here (seen: the cleaner found no such controller there and quit; had the run's
    group been registered by then, it would have removed it), or a dead one when it was killed
    without `ray stop` (seen: the queries time out, a killed run's group is never freed, and
    later sweep trials fail to get their CPUs). The variable is set before the cluster starts,
    so that its processes inherit it.
    """
    for port in range(DASHBOARD_PORT, DASHBOARD_PORT + DASHBOARD_PORT_TRIES):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        return {"dashboard_port": port}
    return {}  # Ray finds a port itself, or fails with its own message


def worker_bundle(scaling: Mapping[str, Any]) -> dict[str, float]:
    """The resources one training worker reserves, in Ray's names (CPU, GPU, custom)."""
    bundle = {
        key: float(value) for key, value in (scaling.get("resources_per_worker") or {}).items()
    }
    bundle.setdefault("CPU", 1.0)
    if scaling.get("use_gpu"):
        bundle.setdefault("GPU", 1.0)
    return {key: value for key, value in bundle.items() if value > 0}


def _describe(amount: float, resource: str) -> str:
    shown = int(amount) if float(amount).is_integer() else amount
    return f"{shown} {resource}{'s' if shown != 1 else ''}"


def check_fits(scaling: Mapping[str, Any], copies: int = 1, autoscaling: bool = False) -> None:
    """Raise ResourceError if `copies` worker groups of `scaling` can never run on this cluster.

    Ray would otherwise wait for the resources forever. With `autoscaling` the cluster may grow,
    so nothing is refused.
    """
    if autoscaling:
        return
    name = scaling.get("name", "this scaling preset")
    workers = int(scaling["num_workers"])
    bundle = worker_bundle(scaling)
    total = ray.cluster_resources()
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    # Accelerators first: they are what a too-large preset usually lacks.
    for resource, per_worker in sorted(bundle.items(), key=lambda item: item[0] != "GPU"):
        need = per_worker * workers * copies
        have = total.get(resource, 0.0)
        if need > have:
            times = f" x {copies} concurrent trials" if copies > 1 else ""
            raise ResourceError(
                f"scaling={name} asks for {_describe(need, resource)} ({workers} workers x "
                f"{_describe(per_worker, resource)}{times}); this cluster has "
                f"{_describe(have, resource)}. Choose a smaller scaling preset, lower "
                f"scaling.num_workers or scaling.resources_per_worker, or connect to a larger "
                f"cluster with ray.address=... (set ray.autoscaling=true if it adds nodes itself)."
            )
    if not any(all(node.get(k, 0.0) >= v for k, v in bundle.items()) for node in nodes):
        largest = {key: max((node.get(key, 0.0) for node in nodes), default=0.0) for key in bundle}
        raise ResourceError(
            f"scaling={name} puts {bundle} on each worker, but no single node has that much "
            f"(largest per resource: {largest}). Lower scaling.resources_per_worker."
        )


def max_concurrent_groups(scaling: Mapping[str, Any]) -> int:
    """How many worker groups of `scaling` fit in what the cluster has free now (at least 1).

    Free, not total: CPUs held by something else (a Serve replica, another job) would leave
    the extra trials waiting for workers that can never start.
    """
    workers = int(scaling["num_workers"])
    total = ray.available_resources()
    fits = [
        math.floor(total.get(resource, 0.0) / (per_worker * workers))
        for resource, per_worker in worker_bundle(scaling).items()
    ]
    return max(1, min(fits, default=1))
