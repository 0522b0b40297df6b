"""2. Fixed overhead: a 1-epoch `python train.py` against a plain Lightning script doing the same
epoch, wall time from process start to exit (whole process against whole process), with a
breakdown by phase.

The project runs in one process (`scaling=local`, Ray Train's local mode: the CPU default) and
with a worker group (`scaling=cpu`, one Ray Train worker; also with Ray Train's 2 s report
polling, as before that default). Both use torch's default threads, as the plain script does.

Phases are read from the run's own output, timestamped as each line arrives, and from its
train.log, whose lines carry their own time (the project writes Ray's notices there, not on the
console): the project logs "Starting a local Ray cluster" once its imports are done, Ray logs
when the cluster is up. With a worker group, Ray Train logs when the worker group is up and when
the first epoch's result is reported. In one process there is no worker group: Ray Train logs
"Running in local mode" when it calls the training function, and the first epoch ends at its
`train_loss` event in TensorBoard (the loop imports Lightning and builds the Trainer before it).

The same runs joining a cluster that is already up (`ray start --head` or `ray.address=auto`,
the project README's way to many short runs) show what Ray's own start and shutdown cost.

Ray Train's floor, a TorchTrainer run of a function that only reports (`baselines/
ray_train_floor.py`, on a cluster the project's way), shows what any run under a Ray Train
worker group costs here, before the project does anything; with the worker importing
Lightning, what a Lightning run under a worker group cannot go below.
"""

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from .harness import Context, median, ratio, run_timed
from .training import RAY_DEFAULT_POLL, epoch_ends_from_tensorboard

# A run with a worker group (scaling=cpu).
PROJECT_PHASES = {
    "imports": r"Starting a local Ray cluster|Connecting to the Ray cluster",
    "ray_start": r"Started a local Ray instance|Connected to Ray cluster",
    "data_and_controller": r"Attempting to start training worker group",
    "worker_group_start": r"Started training worker group",
    "first_epoch": r"Reporting training result 1\b",
    "result_written": r"Summary written to",
}
# A run in one process (scaling=local). None: the time comes from the run's TensorBoard.
LOCAL_PHASES = {
    "imports": r"Starting a local Ray cluster|Connecting to the Ray cluster|Joining the Ray",
    "ray_start": r"Started a local Ray instance|Connected to Ray cluster",
    "data": r"Running in local mode",
    "first_epoch": None,
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


# A train.log line's own time: Hydra's "[2026-12-03 13:50:04,801][...]" or Ray's
# "2026-12-03 13:50:10,423	INFO ...".
LOG_TIME = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")


def log_marks(folder: Path, patterns: dict[str, str], started: float) -> dict[str, float]:
    """When each pattern first appears in the run's log files (`<run dir>/*.log`), in seconds
    after `started` (a wall clock time)."""
    found: dict[str, float] = {}
    for path in sorted(folder.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            stamp = LOG_TIME.match(line)
            if not stamp:
                continue
            for name, pattern in patterns.items():
                if name not in found and re.search(pattern, line):
                    when = datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    found[name] = when - started
    return found


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


# The project's arms: name -> (scaling preset, extra environment, joins the running cluster).
PROJECT_ARMS = {
    "project": ("local", {}, False),
    "project_running_cluster": ("local", {}, True),
    "project_workers": ("cpu", {}, False),
    "project_workers_running_cluster": ("cpu", {}, True),
    "project_ray_default_poll": ("cpu", RAY_DEFAULT_POLL, False),
}


def run(ctx: Context) -> dict:
    overrides = ["trainer.max_epochs=1"]
    floors = {"ray_train_floor": [], "ray_train_floor_lightning": ["--import-lightning"]}
    names = [*PROJECT_ARMS, *floors, "ray_train_floor_lightning_running_cluster", "plain_lightning"]
    walls: dict[str, list[float]] = {name: [] for name in names}
    phases: dict[str, list[dict[str, float]]] = {name: [] for name in walls}

    def timed(name: str, repeat: int, kind: str, env: dict[str, str], *args: str) -> None:
        """One run of `kind` (the project, or a baseline script), its wall time and phases."""
        folder = ctx.work / "overhead" / f"{name}_{repeat}"
        if kind == "project":
            preset = PROJECT_ARMS[name][0]
            cmd = ctx.train_py(f"scaling={preset}", *overrides, f"hydra.run.dir={folder}")
            markers = LOCAL_PHASES if preset == "local" else PROJECT_PHASES
        else:
            cmd = ctx.baseline(kind, "--logdir", str(folder), *args)
            markers = FLOOR_PHASES if kind == "ray_train_floor" else BASELINE_PHASES
        patterns = {key: pattern for key, pattern in markers.items() if pattern is not None}
        result = run_timed(cmd, ctx, markers=patterns, env=env)
        # A line in train.log carries the time it was written: it wins over the console's.
        marks = {**result.marks, **log_marks(folder, patterns, result.started)}
        if "first_epoch" in markers and markers["first_epoch"] is None:
            ends = epoch_ends_from_tensorboard(folder / "tensorboard")
            if ends:
                marks["first_epoch"] = ends[0][1] - result.started
        walls[name].append(result.wall_s)
        phases[name].append(breakdown(marks, markers, result.wall_s))

    with running_cluster(ctx) as address:
        # The cluster turned on Ray's token authentication (~/.ray/auth_token); a process that
        # joins by address must be told to use it (`ray start` + RAY_ADDRESS=auto need not).
        env = ctx.env(RAY_ADDRESS=address, RAY_AUTH_MODE="token")
        for repeat in range(ctx.repeats):
            for name, (_, _, joins) in PROJECT_ARMS.items():
                if joins:
                    timed(name, repeat, "project", env)
            timed(
                "ray_train_floor_lightning_running_cluster",
                repeat,
                "ray_train_floor",
                env,
                *floors["ray_train_floor_lightning"],
            )
    for repeat in range(ctx.repeats):
        for name, (_, extra_env, joins) in PROJECT_ARMS.items():
            if not joins:
                timed(name, repeat, "project", ctx.env(**extra_env))
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
        "goal": "project (scaling=local) <= 2x plain Lightning",
        "goal_met": project_ratio is not None and project_ratio <= 2.0,
    }
