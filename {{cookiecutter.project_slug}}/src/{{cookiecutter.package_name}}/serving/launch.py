"""`python train.py serve=...`: deploy a checkpoint on Ray Serve and keep it up until Ctrl-C."""

import logging
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import ray
import yaml
from omegaconf import DictConfig, OmegaConf
from ray import serve

from ..checkpoints import CheckpointError, load, resolve
from ..training import cluster
from .app import AppArgs, application
from .ingress import controller_env, haproxy_binary, prepare_haproxy_dir, stop_orphaned_haproxy

log = logging.getLogger(__name__)

# The application builder, as `serve run` and KubeRay RayService manifests name it.
IMPORT_PATH = f"{__package__}.app:build_app"
SERVE_CONFIG_FILE = "serve_config.yaml"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def app_args(serve_cfg: DictConfig, checkpoint: str) -> dict[str, Any]:
    """The builder's arguments: the checkpoint plus the `serve` group minus the HTTP settings.

    `haproxy` (off by default: see ingress.py) stays on only where Ray has an HAProxy binary.
    """
    fields = set(AppArgs.model_fields) - {"checkpoint_path"}
    settings = OmegaConf.to_container(serve_cfg, resolve=True)
    args = {key: value for key, value in settings.items() if key in fields}
    if args.get("haproxy") and haproxy_binary() is None:
        log.warning(
            "serve.haproxy=true, but Ray has no HAProxy binary here (it bundles one on Linux; "
            "or set RAY_SERVE_HAPROXY_BINARY_PATH): serving through Ray Serve's Python proxy."
        )
        args["haproxy"] = False
    return AppArgs.model_validate({**args, "checkpoint_path": checkpoint}).model_dump()


def serve_config(serve_cfg: DictConfig, args: dict[str, Any]) -> dict[str, Any]:
    """The deployed app in Serve's config file format (`serve run`, `serve deploy`, KubeRay)."""
    env = controller_env(args["haproxy"])
    return {
        **({"controller_options": {"runtime_env": {"env_vars": env}}} if env else {}),
        "proxy_location": "EveryNode",
        "http_options": {"host": serve_cfg.host, "port": int(serve_cfg.port)},
        "applications": [
            {
                "name": serve_cfg.app_name,
                "route_prefix": serve_cfg.route_prefix,
                "import_path": IMPORT_PATH,
                "args": args,
            }
        ],
    }


def write_serve_config(config: dict[str, Any], output_dir: str) -> Path:
    path = Path(output_dir) / SERVE_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def serve_checkpoint(cfg: DictConfig, checkpoint: str | None) -> None:
    """Serve `checkpoint` (a .ckpt, a Ray checkpoint folder or a run folder) until interrupted."""
    if not checkpoint:
        raise CheckpointError(
            "Nothing to serve: with serve.only=true, pass ckpt_path=<a .ckpt file, a Ray "
            "checkpoint folder or a run folder>."
        )
    # Read it here first: a missing or broken checkpoint then stops this command at once with
    # its reason, instead of failing in replicas that Serve restarts again and again.
    checkpoint_file = resolve(checkpoint)
    loaded = load(checkpoint_file)
    log.info(
        "Checkpoint %s: %s, inputs shaped %s",
        checkpoint_file,
        loaded.model_name,
        loaded.input_shape,
    )

    args = app_args(cfg.serve, checkpoint_file)
    config_file = write_serve_config(serve_config(cfg.serve, args), cfg.paths.output_dir)

    if args["haproxy"]:
        prepare_haproxy_dir()  # private, before Ray puts HAProxy's admin socket there
    stop_orphaned_haproxy()  # one left by an earlier serve.haproxy=true holds serve.port
    cluster.connect(cfg.ray)
    if not cfg.ray.autoscaling:
        _check_replica_fits(cfg.serve, args["resources_per_replica"])
    host, port, prefix = cfg.serve.host, int(cfg.serve.port), cfg.serve.route_prefix
    # Ctrl-C must reach us as KeyboardInterrupt, but Ray Train's trainer leaves its own SIGINT
    # handler installed after fit() (it would swallow Ctrl-C once training is over). SIGTERM,
    # which container runtimes send to stop, is treated as Ctrl-C too.
    previous_handlers = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
    try:
        serve.start(
            http_options={"host": host, "port": port},
            logging_config={"enable_access_log": bool(cfg.serve.access_log)},
            controller_options={"runtime_env": {"env_vars": controller_env(args["haproxy"])}},
        )
        app = application(AppArgs.model_validate(args), loaded)  # the checkpoint read above
        serve.run(app, name=cfg.serve.app_name, route_prefix=prefix)
        url = f"http://{host}:{port}{prefix.rstrip('/')}"
        _warn_if_unreachable(f"http://127.0.0.1:{port}{prefix.rstrip('/')}/health")
        log.info(
            "Serving at %s: POST /predict, GET /metadata, GET /health, docs at %s/docs", url, url
        )
        log.info("The same app on a cluster: serve run %s", config_file)
        log.info("Press Ctrl-C to stop.")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:  # at any point, also while Serve is still starting
        log.info("Stopping Serve.")
    finally:
        serve.shutdown()
        ray.shutdown()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _warn_if_unreachable(health_url: str) -> None:
    """Serve keeps the HTTP settings it first started with on a cluster: say so if they differ."""
    try:
        with urllib.request.urlopen(health_url, timeout=10):
            return
    except OSError:
        log.warning(
            "Nothing answers at %s. Unless this machine is not a node of the cluster, Serve was "
            "already running there with other HTTP settings, which it keeps (see `serve "
            "status`; `serve shutdown` resets them).",
            health_url,
        )


def _check_replica_fits(serve_cfg: DictConfig, bundle: dict[str, float]) -> None:
    """Fail now if one replica can never be placed: Serve would otherwise wait forever."""
    total = ray.cluster_resources()
    missing = {key: need for key, need in bundle.items() if need > total.get(key, 0.0)}
    if missing:
        have = {key: total.get(key, 0.0) for key in missing}
        raise cluster.ResourceError(
            f"serve={serve_cfg.name} puts {bundle} on each replica, but this cluster has only "
            f"{have}. Lower serve.resources_per_replica, or connect to a larger cluster (set "
            f"ray.autoscaling=true if it adds nodes itself)."
        )
