"""Connecting to Ray, and refusing resource requests the cluster can never satisfy."""

import logging
import math
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf

from .. import logs

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


class ClusterUnreachable(CompactHydraException, ConnectionError):
    """No Ray cluster answers at the address the run was given (printed without a traceback)."""


# Where the address of the cluster to join came from.
RUNNING_HEAD = "the `ray start` head running on this machine"
# Seconds to wait for a cluster's port to answer before saying it cannot be reached.
REACH_TIMEOUT_S = 5.0


def target_address(ray_cfg: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The cluster a run joins and where that came from (RAY_ADDRESS, ray.address, a running
    `ray start` head); (None, None) when it starts a cluster of its own here."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    if ray_cfg.get("address"):
        return str(ray_cfg["address"]), "ray.address"
    head = running_head()
    return (head, RUNNING_HEAD) if head else (None, None)


def check_reachable(address: str, source: str | None) -> None:
    """Fail in seconds, in one line, when nothing answers at `address` ("host:port" or
    "ray://host:port"; "auto" and others are left to Ray)."""
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S):
            return
    except OSError as error:
        raise ClusterUnreachable(unreachable(address, source, error)) from error


def unreachable(address: str, source: str | None, error: Exception) -> str:
    if source == "RAY_ADDRESS":
        local = "unset RAY_ADDRESS"
    elif source == "ray.address":
        local = "pass ray.address=null"
    else:
        local = "pass ray.address=local"
    return (
        f"No Ray cluster answers at {address} (from {source}): {error}. Start the cluster or "
        f"correct the address; to train on this machine instead, {local}."
    )


def connect(ray_cfg: Mapping[str, Any], with_dashboard: bool = True) -> None:
    """Join the cluster named by `ray.address` or RAY_ADDRESS, else start a local one.

    Inside a Ray task or actor (a Tune trial), Ray is already initialised and this does nothing.
    `with_dashboard=False`: a local cluster needs no dashboard (no worker group, no sweep, whose
    clean-up asks it), unless `ray.include_dashboard` says otherwise; it starts seconds sooner.
    """
    for name, value in RAY_TRAIN_ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    logs.quiet_ray_console()
    if ray.is_initialized():
        return
    address, source = target_address(ray_cfg)
    if source == RUNNING_HEAD:
        if os.environ.get("RAY_AUTH_MODE") is None and (Path.home() / ".ray/auth_token").is_file():
            # `ray start` turns token authentication on once this token exists; a driver
            # sends it only when told to (Ray's own switch, which also refreshes its config).
            from ray._private.authentication.authentication_token_setup import (  # noqa: PLC0415
                _enable_token_auth,
            )

            _enable_token_auth()
        log.info(
            "Joining the Ray cluster that `ray start` runs on this machine (%s); "
            "ray.address=local starts a new one instead",
            address,
        )
    # Plain containers all the way down: Ray validates e.g. env_vars as a real dict.
    runtime_env = OmegaConf.to_container(OmegaConf.create(ray_cfg.get("runtime_env") or {}))
    if address and address != "local":
        log.info("Connecting to the Ray cluster at %s", address)
        check_reachable(address, source)
        try:
            ray.init(address=address, runtime_env=runtime_env or None, log_to_driver=True)
        except ConnectionError as error:
            raise ClusterUnreachable(unreachable(address, source, error)) from error
    else:
        log.info("Starting a local Ray cluster (set ray.address or RAY_ADDRESS to use another)")
        for name, value in LOCAL_CLUSTER_ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)  # the new cluster's processes inherit them
        dashboard = ray_cfg.get("include_dashboard")
        if dashboard is None and not with_dashboard:
            dashboard = False
        ray.init(
            address="local",  # a new cluster, even if `ray start` left one running here
            num_cpus=ray_cfg.get("num_cpus"),
            num_gpus=ray_cfg.get("num_gpus"),
            include_dashboard=dashboard,
            runtime_env=runtime_env or None,
            **(own_dashboard() if dashboard is not False else {}),
        )
    logs.quiet_ray_console()  # again: Ray sets up its loggers' handlers as it starts


def running_head() -> str | None:
    """The address of a Ray head that `ray start --head` runs on this machine, if one answers.

    `ray start` names its cluster in a file (/tmp/ray/ray_current_cluster); the file outlives a
    head killed without `ray stop`, so the head's port must also accept a connection. Joining
    it saves Ray's start and shutdown (seconds) on every run and sweep.
    """
    from ray._private.utils import read_ray_address  # noqa: PLC0415 (Ray's own reader)

    address = read_ray_address()
    if not address or ":" not in address:
        return None
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return address
    except (OSError, ValueError):
        return None


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


def group_size(scaling: Mapping[str, Any]) -> int:
    """The processes a run of `scaling` trains in: its workers, or one (`scaling=local`)."""
    return max(1, int(scaling["num_workers"]))


def check_local(scaling: Mapping[str, Any]) -> None:
    """Refuse a one-process run (`scaling=local`) on a GPU this machine lacks: it trains here,
    whatever the cluster has."""
    if scaling.get("use_gpu"):
        import torch  # noqa: PLC0415 (only here)

        if not torch.cuda.is_available():
            raise ResourceError(
                f"scaling={scaling.get('name', 'local')} with use_gpu=true trains in this "
                "process, and this machine has no GPU that torch can use. Use a GPU machine, "
                "scaling=1gpu on a cluster with GPUs, or scaling.use_gpu=false."
            )


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


def check_fits_here(scaling: Mapping[str, Any], ray_cfg: Mapping[str, Any]) -> None:
    """check_fits before Ray starts, when the run will start a cluster on this machine: that
    cluster has this machine's CPUs and GPUs (or `ray.num_cpus`, `ray.num_gpus`), so a request
    for more is refused now, in a second, rather than once Ray is up."""
    if ray.is_initialized() or target_address(ray_cfg)[0]:
        return
    gpus = ray_cfg.get("num_gpus")
    if gpus is None:
        import torch  # noqa: PLC0415 (the driver has it imported already)

        gpus = torch.cuda.device_count()
    here = {"CPU": float(ray_cfg.get("num_cpus") or os.cpu_count() or 1), "GPU": float(gpus)}
    check_fits(scaling, resources=here, only=("CPU", "GPU"), where="this machine")


def check_fits(
    scaling: Mapping[str, Any],
    copies: int = 1,
    autoscaling: bool = False,
    resources: Mapping[str, float] | None = None,
    only: tuple[str, ...] | None = None,
    where: str = "this cluster",
) -> None:
    """Raise ResourceError if `copies` worker groups of `scaling` can never run on this cluster
    (or on one node that has `resources`; `only` these resources checked).

    Ray would otherwise wait for the resources forever. With `autoscaling` the cluster may grow,
    so nothing is refused.
    """
    if autoscaling:
        return
    name = scaling.get("name", "this scaling preset")
    workers = group_size(scaling)
    bundle = worker_bundle(scaling)
    if only is not None:
        bundle = {key: value for key, value in bundle.items() if key in only}
    if resources is None:
        total = ray.cluster_resources()
        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    else:
        total, nodes = dict(resources), [dict(resources)]
    # Accelerators first: they are what a too-large preset usually lacks.
    for resource, per_worker in sorted(bundle.items(), key=lambda item: item[0] != "GPU"):
        need = per_worker * workers * copies
        have = total.get(resource, 0.0)
        if need > have:
            times = f" x {copies} concurrent trials" if copies > 1 else ""
            raise ResourceError(
                f"scaling={name} asks for {_describe(need, resource)} ({workers} workers x "
                f"{_describe(per_worker, resource)}{times}); {where} has "
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
    room = nodes_that_hold(nodes, bundle)
    if scaling.get("placement_strategy") == "STRICT_SPREAD" and room < workers * copies:
        raise ResourceError(
            f"scaling={name} with placement_strategy=STRICT_SPREAD puts each of its {workers} "
            f"workers on a node of its own, and {room} node(s) of {where} can hold one "
            f"({bundle}). Use SPREAD or PACK, or fewer workers."
        )


def nodes_that_hold(nodes: list[Mapping[str, float]], bundle: Mapping[str, float]) -> int:
    """How many of `nodes` (their resources) have room for one worker's `bundle`."""
    return sum(all(node.get(k, 0.0) >= v for k, v in bundle.items()) for node in nodes)


def unplaceable(scaling: Mapping[str, Any]) -> str:
    """Why a worker group of `scaling` could not be started again, on the nodes alive now."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    bundle = worker_bundle(scaling)
    room = nodes_that_hold(nodes, bundle)
    return (
        f"The {group_size(scaling)} workers of scaling={scaling.get('name', '?')} (placement "
        f"{scaling.get('placement_strategy')}, {bundle} each) could not be placed on the "
        f"{len(nodes)} node(s) alive now, {room} of which can hold a worker: nodes were lost and "
        "none replaced them. Add nodes and run the same command again (it continues from the "
        "latest checkpoint), or lower scaling.num_workers."
    )


def max_concurrent_groups(scaling: Mapping[str, Any]) -> int:
    """How many worker groups of `scaling` fit in what the cluster has free now (at least 1).

    Free, not total: CPUs held by something else (a Serve replica, another job) would leave
    the extra trials waiting for workers that can never start.
    """
    workers = group_size(scaling)
    total = ray.available_resources()
    fits = [
        math.floor(total.get(resource, 0.0) / (per_worker * workers))
        for resource, per_worker in worker_bundle(scaling).items()
    ]
    return max(1, min(fits, default=1))
