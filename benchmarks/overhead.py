"""2. Fixed overhead: a 1-epoch `python train.py` against a plain Lightning script doing the same
epoch, wall time from process start to exit, with a breakdown by phase.

Phases are read from the run's own output, timestamped as each line arrives: the project logs
"Starting a local Ray cluster" once its imports are done, Ray and Ray Train log when the cluster
and the worker group are up and when the first epoch's result is reported.

The same run joining a cluster that is already up (`ray start --head` and `ray.address=auto`,
the project README's way to many short runs) shows what Ray's own start and shutdown cost.

Ray Train's floor, a TorchTrainer run of a function that only reports (`baselines/
ray_train_floor.py`, on a cluster the project's way), shows what any run under Ray Train costs
here, before the project does anything; with the worker importing Lightning, what a Lightning
run under Ray Train cannot go below.
"""

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .harness import Context, median, ratio, run_timed
from .training import RAY_DEFAULT_POLL

PROJECT_PHASES = {
    "imports": r"Starting a local Ray cluster|Connecting to the Ray cluster",
    "ray_start": r"Started a local Ray instance|Connected to Ray cluster",
    "data_and_controller": r"Attempting to start training worker group",
    "worker_group_start": r"Started training worker group",
    "first_epoch": r"Reporting training result 1\b",
    "result_written": r"Summary written to",
}
FLOOR_PHASES = {
    "imports": r"^BENCH imports_done",
    "ray_start": r"^BENCH ray_started",
    "fit": r"^BENCH fit_done",
}
BASELINE_PHASES = {
    "imports": r"^BENCH imports_done",
    "data_and_model": r"^BENCH data_ready",
    "first_epoch": r"^BENCH epoch_end",
    "result_written": r"^BENCH fit_done",
}


def breakdown(marks: dict[str, float], phases: dict[str, str], wall: float) -> dict[str, float]:
    """Seconds spent in each phase: from the previous marker seen to this one."""
    parts, previous = {}, 0.0
    for name in phases:
        if name in marks:
            parts[name] = marks[name] - previous
            previous = marks[name]
    parts["exit"] = wall - previous
    return parts


# A cluster kept up by another process, as `ray start --head` would (which also writes
# /tmp/ray/ray_current_cluster; left behind, that file misleads Ray's state API afterwards).
CLUSTER_SCRIPT = """
import sys, ray
ray.init(address="local", num_cpus=int(sys.argv[1]))
print("GCS", ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the benchmark closes stdin
"""


@contextmanager
def running_cluster(ctx: Context) -> Iterator[str]:
    """A local Ray cluster that outlives the runs joining it; its address."""
    cmd = [sys.executable, "-c", CLUSTER_SCRIPT, str(os.cpu_count() or 1)]
    with open(ctx.log, "a") as log:
        log.write("\n$ python -c <start a Ray cluster and wait>\n")
        log.flush()
        process = subprocess.Popen(
            cmd, env=ctx.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True
        )
        line = process.stdout.readline()
        if not line.startswith("GCS "):
            raise RuntimeError(f"the Ray cluster did not start (exit {process.wait()})")
        try:
            yield line.split()[1]
        finally:
            process.communicate(input="", timeout=120)


def run(ctx: Context) -> dict:
    overrides = ["trainer.max_epochs=1"]
    variants = {"project": None, "project_ray_default_poll": RAY_DEFAULT_POLL}
    floors = {"ray_train_floor": [], "ray_train_floor_lightning": ["--import-lightning"]}
    names = [
        *variants,
        "project_running_cluster",
        *floors,
        "ray_train_floor_lightning_running_cluster",
        "plain_lightning",
    ]
    walls: dict[str, list[float]] = {name: [] for name in names}
    phases: dict[str, list[dict[str, float]]] = {name: [] for name in walls}

    def timed(name: str, repeat: int, kind: str, env: dict[str, str], *args: str) -> None:
        """One run of `kind` (the project, or a baseline script), its wall time and phases."""
        folder = ctx.work / "overhead" / f"{name}_{repeat}"
        if kind == "project":
            cmd, markers = ctx.train_py(*overrides, f"hydra.run.dir={folder}"), PROJECT_PHASES
        else:
            cmd = ctx.baseline(kind, "--logdir", str(folder), *args)
            markers = FLOOR_PHASES if kind == "ray_train_floor" else BASELINE_PHASES
        result = run_timed(cmd, ctx, markers=markers, env=env)
        walls[name].append(result.wall_s)
        phases[name].append(breakdown(result.marks, markers, result.wall_s))

    with running_cluster(ctx) as address:
        # The cluster turned on Ray's token authentication (~/.ray/auth_token); a process that
        # joins by address must be told to use it (`ray start` + RAY_ADDRESS=auto need not).
        env = ctx.env(RAY_ADDRESS=address, RAY_AUTH_MODE="token")
        for repeat in range(ctx.repeats):
            timed("project_running_cluster", repeat, "project", env)
            timed(
                "ray_train_floor_lightning_running_cluster",
                repeat,
                "ray_train_floor",
                env,
                *floors["ray_train_floor_lightning"],
            )
    for repeat in range(ctx.repeats):
        for name, extra_env in variants.items():
            timed(name, repeat, "project", ctx.env(**(extra_env or {})))
        for name, args in floors.items():
            timed(name, repeat, "ray_train_floor", ctx.env(), *args)
        timed("plain_lightning", repeat, "plain_lightning", ctx.env(), *overrides)
    medians = {name: median(values) for name, values in walls.items()}
    median_phases = {
        name: {key: median([run.get(key) for run in runs]) for key in runs[0]}
        for name, runs in phases.items()
    }
    project_ratio = ratio(medians["project"], medians["plain_lightning"])
    return {
        "wall_s": walls,
        "median_wall_s": medians,
        "median_phases_s": median_phases,
        "ratio_vs_plain_lightning": {
            name: ratio(medians[name], medians["plain_lightning"]) for name in walls
        },
        "goal": "project <= 2.5x plain Lightning",
        "goal_met": project_ratio is not None and project_ratio <= 2.5,
    }
