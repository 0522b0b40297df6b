"""4. Serving: the project's Ray Serve app (`serve=local serve.only=true`) against plain
FastAPI + uvicorn apps serving the same checkpoint, at 1 and 32 concurrent connections.

The FastAPI app (baselines/fastapi_app.py; one process, one torch thread, as one replica with
1 CPU) answers three ways: a synchronous handler, one forward pass per request (`fastapi`, the
only baseline before); an `async` handler, one pass per request (`fastapi_async`); and an
`async` handler that batches the way the project's replica does, with the project's
`serve.max_batch_size` and `serve.batch_wait_timeout_s` (`fastapi_batched`). Each goal is met
against the fastest of the three at that concurrency.

Each request is one row of the model's input; every server gets the same request bodies. The
load generator runs in this process while the server runs in its own.
"""

import json
import math
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from .baselines.common import load_config
from .harness import Context, median, ratio, run_timed
from .loadgen import generate, payloads

HOST = "127.0.0.1"
CONCURRENCY = (1, 32)
FASTAPI_MODES = {"fastapi": "sync", "fastapi_async": "async", "fastapi_batched": "batched"}


def wait_until_up(process: subprocess.Popen, url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"nothing answered at {url} within {timeout} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def checkpoint_for(ctx: Context) -> str:
    """The training benchmark's run, or a fresh 1-epoch run when serving runs alone."""
    if "run_dir" in ctx.shared:
        return ctx.shared["run_dir"]
    folder = ctx.work / "serving" / "train"
    run_timed(ctx.train_py("trainer.max_epochs=1", f"hydra.run.dir={folder}"), ctx)
    return str(folder)


def measure(ctx: Context, name: str, cmd: list[str], port: int, width: int | None) -> tuple:
    seconds = 2.0 if ctx.quick else 6.0
    with open(ctx.log, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        process = subprocess.Popen(
            cmd,
            cwd=ctx.project,
            env=ctx.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    results: dict[int, list[dict]] = {c: [] for c in CONCURRENCY}
    try:
        wait_until_up(process, f"http://{HOST}:{port}/health")
        if width is None:
            with urllib.request.urlopen(f"http://{HOST}:{port}/metadata", timeout=10) as answer:
                width = math.prod(json.loads(answer.read())["input_shape"])
        bodies = payloads(width)
        generate(HOST, port, "/predict", bodies, 32, 1.0)  # warm-up
        for _ in range(ctx.repeats):
            for concurrency in CONCURRENCY:
                load = generate(HOST, port, "/predict", bodies, concurrency, seconds)
                results[concurrency].append(load.summary())
    finally:
        stop(process)
    return results, width


def run(ctx: Context) -> dict:
    checkpoint = checkpoint_for(ctx)
    serve_port, fastapi_port = 8123, 8124
    serve_cmd = ctx.train_py(
        "serve=local",
        "serve.only=true",
        "serve.haproxy=true",  # the fast way in; not the default since issue 24 (README)
        f"ckpt_path={checkpoint}",
        f"serve.port={serve_port}",
        f"hydra.run.dir={Path(ctx.work) / 'serving' / 'serve'}",
    )
    serve_cfg = load_config(str(ctx.project), ["serve=local"]).serve
    batching = {
        "max_batch_size": int(serve_cfg.max_batch_size),
        "batch_wait_timeout_s": float(serve_cfg.batch_wait_timeout_s),
    }
    raw = {}
    raw["ray_serve"], width = measure(ctx, "ray_serve", serve_cmd, serve_port, None)
    for name, mode in FASTAPI_MODES.items():
        fastapi_cmd = ctx.baseline(
            "fastapi_app",
            "--checkpoint",
            checkpoint,
            "--port",
            str(fastapi_port),
            "--mode",
            mode,
            "--max-batch-size",
            str(batching["max_batch_size"]),
            "--batch-wait-timeout-s",
            str(batching["batch_wait_timeout_s"]),
        )
        raw[name], _ = measure(ctx, name, fastapi_cmd, fastapi_port, width)
    table = {}
    for concurrency in CONCURRENCY:
        row = {}
        for name, results in raw.items():
            runs = results[concurrency]
            row[name] = {
                key: median([run[key] for run in runs])
                for key in ("requests_per_s", "p50_ms", "p99_ms")
            }
            row[name]["errors"] = sum(run["errors"] for run in runs)
        served = row["ray_serve"]["requests_per_s"]
        row["throughput_ratio"] = {
            name: ratio(served, row[name]["requests_per_s"]) for name in FASTAPI_MODES
        }
        row["fastest_fastapi"] = max(FASTAPI_MODES, key=lambda n: row[n]["requests_per_s"] or 0)
        row["ratio_vs_fastest"] = row["throughput_ratio"][row["fastest_fastapi"]]
        table[str(concurrency)] = row
    goals = {
        "concurrency 1: >= 0.5x": (table["1"]["ratio_vs_fastest"] or 0) >= 0.5,
        "concurrency 32: >= 1x": (table["32"]["ratio_vs_fastest"] or 0) >= 1.0,
    }
    return {
        "checkpoint": checkpoint,
        "rows_per_request": 1,
        "batching": batching,
        "by_concurrency": table,
        "goals": goals,
        "raw": raw,
    }
