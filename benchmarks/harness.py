"""Shared pieces of the benchmarks: running commands with timestamped output, medians, ratios."""

import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]
# Puts baselines/callbacks.py's TorchThreads into a project run's Trainer (configs/callbacks).
THREADS_OVERRIDE = "+callbacks.bench_threads._target_=benchmarks.baselines.callbacks.TorchThreads"
# `BENCH <event> <wall time> <values>`; a Ray process's line comes with Ray's "(name pid=...) ".
BENCH_LINE = re.compile(r"^(?:\([^)]*\)\s*)?BENCH (\S+) (\S+)(.*)$")
COLOURS = re.compile(r"\x1b\[[0-9;]*m")  # Ray colours the prefix


@dataclass
class Context:
    """What every benchmark gets: the baked project and where to write."""

    project: Path
    package: str
    work: Path  # scratch folder for runs
    repeats: int
    sweep_repeats: int
    quick: bool
    log: Path
    shared: dict = field(default_factory=dict)  # results one benchmark hands to another
    sweep_rows: tuple[int, ...] = ()  # more sweep workloads: synthetic epochs of this many rows
    sweep_trials: int = 8  # learning rates per sweep (4 with quick)
    sweep_threads: int = 0  # torch threads of the sequential sweeps' jobs (0: torch's default)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for project and baseline commands."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "1"}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(TEMPLATE), str(self.project / "src"), env.get("PYTHONPATH", "")]
        )
        env["BENCH_PACKAGE"] = self.package  # for the Hydra multirun baseline
        env.update(extra)
        return env

    def baseline(self, module: str, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            f"benchmarks.baselines.{module}",
            "--project",
            str(self.project),
            "--package",
            self.package,
            *args,
        ]

    def train_py(self, *overrides: str) -> list[str]:
        """`python train.py` with `overrides`; its Trainers print their torch thread count."""
        return [sys.executable, "train.py", *overrides, THREADS_OVERRIDE]  # after any -m

    def plain_sweep(self, *overrides: str) -> list[str]:
        """Hydra's basic multirun over the plain Lightning script, on the project's configs."""
        return [
            sys.executable,
            "-m",
            "benchmarks.baselines.plain_lightning_sweep",
            "--config-dir",
            str(self.project / "configs"),
            "--config-name",
            "train",
            *overrides,
        ]


@dataclass
class Timed:
    """A finished command: wall time, when marker patterns first appeared, BENCH lines."""

    wall_s: float
    returncode: int
    marks: dict[str, float]  # pattern name -> seconds after start
    bench: list[tuple[str, float, list[str]]]  # (event, wall clock, values)
    started: float  # wall clock at start
    tail: str


def run_timed(
    cmd: list[str],
    ctx: Context,
    cwd: Path | None = None,
    markers: dict[str, str] | None = None,
    timeout: float = 900,
    env: dict[str, str] | None = None,
) -> Timed:
    """Run `cmd`, timestamping each output line as it arrives; raise if it fails."""
    patterns = {name: re.compile(pattern) for name, pattern in (markers or {}).items()}
    marks: dict[str, float] = {}
    bench: list[tuple[str, float, list[str]]] = []
    lines: list[str] = []
    started = time.time()
    start = time.perf_counter()
    with open(ctx.log, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        process = subprocess.Popen(
            cmd,
            cwd=cwd or ctx.project,
            env=env or ctx.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        try:
            for line in process.stdout:
                now = time.perf_counter() - start
                log.write(line)
                lines.append(line)
                del lines[:-60]
                for name, pattern in patterns.items():
                    if name not in marks and pattern.search(line):
                        marks[name] = now
                found = BENCH_LINE.match(COLOURS.sub("", line).strip())
                if found:
                    bench.append((found[1], float(found[2]), found[3].split()))
                if now > timeout:
                    raise TimeoutError(f"{cmd[:3]} ran over {timeout} s")
            process.wait(timeout=max(1.0, timeout - (time.perf_counter() - start)))
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    wall = time.perf_counter() - start
    tail = "".join(lines[-30:])
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {process.returncode}:\n{tail}")
    return Timed(wall, process.returncode, marks, bench, started, tail)


def torch_threads(timed: Timed) -> list[int]:
    """The torch thread counts a run reported (`BENCH torch_threads`), one per Trainer fit."""
    return [int(values[0]) for event, _, values in timed.bench if event == "torch_threads"]


def spread(values: list[float]) -> dict[str, float | None]:
    """Median, min and max of `values` (None where there are none)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def ray_head_running() -> str | None:
    """The address of a head that `ray start --head` runs on this machine, if one answers: the
    project's runs join it by default (training/cluster.py), so runs meant to start their own
    Ray would not."""
    import socket

    try:
        address = Path("/tmp/ray/ray_current_cluster").read_text().strip()
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=0.5):
            return address
    except (OSError, ValueError):
        return None


def machine() -> dict[str, str | int]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import platform

    import torch

    return {
        "cpu": model,
        "cores": os.cpu_count() or 0,
        "gpus": torch.cuda.device_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("ray", "lightning", "hydra-core", "fastapi")}
