"""3. Sweeps: the same learning rates, each for the same epochs, run four ways:

- `plain_basic`: Hydra's basic multirun over a plain Lightning script (baselines/
  plain_lightning_sweep.py: the same model, data, batching, checkpoint cadence), what a
  researcher runs without this template; one job after another in one process, no Ray;
- `basic`: the project's own sequential multirun, `train.py -m search=none scaling=local`
  (Hydra's basic sweeper; each job trains in train.py's process);
- `asha`: the project's Ray Tune sweep, `train.py -m search=asha search.num_samples=1
  scaling=local` (what `make sweep` runs): trials in parallel, each in its own Tune trial
  process, bad ones stopped early;
- `asha_workers`: the same with `scaling=cpu`, each trial a Ray Train worker group (the default
  before); on the digits only, where a trial's start-up weighs most.

The sequential arms train with torch's default threads (both cores of this machine: nothing else
runs beside them; `--sweep-threads N` sets N); a Tune trial gets one CPU and as many threads.
Every run prints its thread counts, kept in the results. Each sweep runs `--sweep-repeats` times
(3 by default; ASHA's savings vary with the order its trials start in), each repeat starting one
arm later; the table shows medians with the spread (min-max).

Every arm gets the same explicit comma list of `optimizer.lr` values. The sequential arms leave
a folder per job with its TensorBoard events, from which each job's epochs and last validation
metrics are read; the Tune sweep leaves trials.csv and Tune's per-trial result.json (one line per
reported epoch), from which the trial-epochs, the best metric and the schedule are read.
"""

import csv
import json
import os
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .harness import Context, ratio, run_timed, spread, torch_threads
from .training import LONG_EPOCHS

SEQUENTIAL = ("plain_basic", "basic")
TUNE = ("asha", "asha_workers")


def learning_rates(count: int) -> list[str]:
    """`count` values spaced evenly on a log scale from 1e-4 to 1e-1."""
    return [f"{10 ** (-4 + 3 * i / (count - 1)):.3g}" for i in range(count)]


def job_results(sweep_dir: Path) -> list[dict[str, float]]:
    """Each job of a sequential multirun: its epochs and last val_loss and val_acc, from its
    TensorBoard events (the project's jobs and the plain script's write them alike)."""
    results = []
    jobs = sorted((p for p in sweep_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    for job in jobs:
        events = EventAccumulator(str(job / "tensorboard"))
        events.Reload()
        losses, accuracies = events.Scalars("val_loss"), events.Scalars("val_acc")
        results.append(
            {"epochs": len(losses), "val_loss": losses[-1].value, "val_acc": accuracies[-1].value}
        )
    return results


def tune_histories(sweep_dir: Path) -> list[list[dict]]:
    histories = []
    for path in sorted(sweep_dir.glob("tune/*/result.json")):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if lines:
            histories.append(lines)
    return histories


def schedule(histories: list[list[dict]], slots: int) -> dict[str, float]:
    """The Tune sweep's span from first trial start to last trial end, against the ideal.

    The ideal packs the trials' own durations onto `slots` parallel slots with no gaps: the
    larger of the longest trial and the total divided by the slots.
    """
    spans = []
    for history in histories:
        start = history[0]["timestamp"] - history[0]["time_total_s"]
        spans.append((start, history[-1]["timestamp"]))
    durations = [end - start for start, end in spans]
    ideal = max(max(durations), sum(durations) / slots)
    actual = max(end for _, end in spans) - min(start for start, _ in spans)
    return {"trials_span_s": actual, "ideal_s": ideal, "ratio": actual / ideal}


# Epochs of about 4 s: nearer a research run's (minutes), where a trial's fixed cost no longer
# hides the epochs ASHA saves.
LONGER_EPOCHS = ["data=synthetic", "data.source.num_samples=131072"]


def run(ctx: Context) -> dict:
    result = measure(ctx, [], "", with_workers=True)
    # Epochs of about a second, where parallel trials and early stopping start to pay.
    workloads = {"long_epochs": LONG_EPOCHS}
    if not ctx.quick:
        workloads["longer_epochs"] = LONGER_EPOCHS
    for rows in ctx.sweep_rows:  # --sweep-rows
        workloads[f"rows{rows}_epochs"] = ["data=synthetic", f"data.source.num_samples={rows}"]
    for key, data in workloads.items():
        # The goal: >= 2x faster than the plain multirun on epochs of seconds.
        goal = 1.0 if key == "long_epochs" else 2.0
        result[key] = measure(ctx, data, key.removesuffix("epochs"), plain_goal=goal)
        result[key]["data"] = " ".join(data)
    for rows in ctx.sweep_rows:
        result[f"rows{rows}_epochs"]["rows"] = rows  # the report labels these rows 3d, 3e, ...
    return result


def command(ctx: Context, arm: str, common: list[str], folder: Path) -> list[str]:
    where = f"hydra.sweep.dir={folder}"
    if arm == "plain_basic":
        return ctx.plain_sweep("-m", *common, where)
    if arm == "basic":
        threads = [f"scaling.threads_per_worker={ctx.sweep_threads}"] if ctx.sweep_threads else []
        return ctx.train_py("-m", "search=none", "scaling=local", *threads, *common, where)
    scaling = "scaling=cpu" if arm == "asha_workers" else "scaling=local"
    return ctx.train_py("-m", "search=asha", "search.num_samples=1", scaling, *common, where)


def one_run(ctx: Context, arm: str, common: list[str], folder: Path, count: int) -> dict:
    """One sweep of `arm`: its wall time, trial-epochs, best metrics (and schedule)."""
    env = ctx.env(BENCH_THREADS=str(ctx.sweep_threads))  # the plain multirun's jobs' threads
    timed = run_timed(command(ctx, arm, common, folder), ctx, timeout=3600, env=env)
    found = {"wall_s": timed.wall_s, "torch_threads": sorted(set(torch_threads(timed)))}
    if arm in SEQUENTIAL and ctx.sweep_threads and found["torch_threads"] != [ctx.sweep_threads]:
        raise RuntimeError(f"{arm}: its jobs trained with {found['torch_threads']} threads")
    if arm in SEQUENTIAL:
        jobs = job_results(folder)
        if len(jobs) != count:
            raise RuntimeError(f"{arm}: {len(jobs)} jobs' results for {count} runs")
        found.update(
            trial_epochs=sum(job["epochs"] for job in jobs),
            best_val_loss=min(job["val_loss"] for job in jobs),
            best_val_acc=max(job["val_acc"] for job in jobs),
        )
        return found
    with open(folder / "trials.csv") as file:
        trials = list(csv.DictReader(file))
    histories = tune_histories(folder)
    found.update(
        trial_epochs=sum(int(row["epochs"]) for row in trials),
        statuses=[row["status"] for row in trials],
        best_val_loss=min((float(row["final"]) for row in trials if row["final"]), default=None),
        best_val_acc=max((h[-1]["val_acc"] for h in histories if "val_acc" in h[-1]), default=None),
        schedule=schedule(histories, os.cpu_count() or 1) if histories else None,
    )
    return found


def measure(
    ctx: Context, data: list[str], tag: str, with_workers: bool = False, plain_goal: float = 1.0
) -> dict:
    count, epochs = (4, 3) if ctx.quick else (ctx.sweep_trials, 8)
    rates = learning_rates(count)
    common = [f"optimizer.lr={','.join(rates)}", f"trainer.max_epochs={epochs}", *data]
    arms = [*SEQUENTIAL, "asha", *(["asha_workers"] if with_workers else [])]
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    for repeat in range(ctx.sweep_repeats):
        # Each repeat starts one arm later: no arm always runs first, or after the same one.
        for arm in arms[repeat % len(arms) :] + arms[: repeat % len(arms)]:
            folder = ctx.work / "sweeps" / f"{tag}{arm}_{repeat}"
            runs[arm].append(one_run(ctx, arm, common, folder, count))

    def summary(arm: str, key: str) -> dict:
        return spread([run.get(key) for run in runs[arm]])

    def schedules(arm: str) -> dict:
        return spread([run["schedule"]["ratio"] for run in runs[arm] if run.get("schedule")])

    summaries = {
        arm: {
            key: summary(arm, key)
            for key in ("wall_s", "trial_epochs", "best_val_acc", "best_val_loss")
        }
        for arm in arms
    }
    for arm in arms:
        if arm in TUNE:
            summaries[arm]["schedule_ratio"] = schedules(arm)

    def speedup(faster: str, slower: str) -> dict:
        """Median wall time of `slower` over that of `faster`, and the spread of the ratio
        between runs of the same repeat."""
        walls = summaries[faster]["wall_s"]["median"], summaries[slower]["wall_s"]["median"]
        pairs = [
            ratio(slow["wall_s"], fast["wall_s"])
            for fast, slow in zip(runs[faster], runs[slower], strict=True)
        ]
        return {"ratio": ratio(walls[1], walls[0]), "per_repeat": spread(pairs)}

    speedups = {
        "asha_vs_plain_basic": speedup("asha", "plain_basic"),
        "asha_vs_basic": speedup("asha", "basic"),
        "basic_vs_plain_basic": speedup("basic", "plain_basic"),
    }
    if with_workers:
        speedups["asha_workers_vs_plain_basic"] = speedup("asha_workers", "plain_basic")
        speedups["asha_vs_asha_workers"] = speedup("asha", "asha_workers")
    all_epochs = count * epochs
    epochs_ratio = ratio(summaries["asha"]["trial_epochs"]["median"], all_epochs)
    best_plain = summaries["plain_basic"]["best_val_acc"]["median"]
    best_asha = summaries["asha"]["best_val_acc"]["median"]
    acc_gap = None if None in (best_plain, best_asha) else 100 * (best_plain - best_asha)
    schedule_ratio = summaries["asha"]["schedule_ratio"]["median"]
    vs_plain = speedups["asha_vs_plain_basic"]["ratio"]
    vs_basic = speedups["asha_vs_basic"]["ratio"]
    plain_label = f">= {plain_goal:g}x faster than plain" if plain_goal > 1 else "faster than plain"
    return {
        "configurations": rates,
        "epochs": epochs,
        "trial_epochs_all": all_epochs,
        "parallel_slots": os.cpu_count() or 1,
        "repeats": ctx.sweep_repeats,
        "runs": runs,
        "summaries": summaries,
        "speedups": speedups,
        "trial_epochs_ratio": epochs_ratio,
        "best_val_acc_gap_points": acc_gap,
        "plain_goal": plain_goal,
        "goals": {
            plain_label: vs_plain is not None
            and (vs_plain > 1 if plain_goal <= 1 else vs_plain >= plain_goal),
            ">= 2.5x faster than the project's sequential multirun": vs_basic is not None
            and vs_basic >= 2.5,
            "trial-epochs <= 0.5x": epochs_ratio is not None and epochs_ratio <= 0.5,
            "best val_acc within 1 point": acc_gap is not None and acc_gap <= 1.0,
            "schedule <= 1.2x ideal": schedule_ratio is not None and schedule_ratio <= 1.2,
        },
    }
