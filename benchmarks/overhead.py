"""2. Fixed overhead: a 1-epoch `python train.py` against a plain Lightning script doing the same
epoch, wall time from process start to exit, with a breakdown by phase.

Phases are read from the run's own output, timestamped as each line arrives: the project logs
"Starting a local Ray cluster" once its imports are done, Ray and Ray Train log when the cluster
and the worker group are up and when the first epoch's result is reported.
"""

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


def run(ctx: Context) -> dict:
    overrides = ["trainer.max_epochs=1"]
    variants = {"project": None, "project_ray_default_poll": RAY_DEFAULT_POLL}
    walls: dict[str, list[float]] = {name: [] for name in [*variants, "plain_lightning"]}
    phases: dict[str, list[dict[str, float]]] = {name: [] for name in walls}
    for repeat in range(ctx.repeats):
        for name, extra_env in variants.items():
            folder = ctx.work / "overhead" / f"{name}_{repeat}"
            timed = run_timed(
                ctx.train_py(*overrides, f"hydra.run.dir={folder}"),
                ctx,
                markers=PROJECT_PHASES,
                env=ctx.env(**(extra_env or {})),
            )
            walls[name].append(timed.wall_s)
            phases[name].append(breakdown(timed.marks, PROJECT_PHASES, timed.wall_s))
        folder = ctx.work / "overhead" / f"plain_lightning_{repeat}"
        timed = run_timed(
            ctx.baseline("plain_lightning", "--logdir", str(folder), *overrides),
            ctx,
            markers=BASELINE_PHASES,
        )
        walls["plain_lightning"].append(timed.wall_s)
        phases["plain_lightning"].append(breakdown(timed.marks, BASELINE_PHASES, timed.wall_s))
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
