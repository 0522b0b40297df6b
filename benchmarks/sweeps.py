"""3. Sweeps: the same learning rates run by Hydra's basic sequential multirun (every run to the
end) and by the project's Ray Tune sweeper with `search=asha` (trials in parallel, bad ones
stopped early).

Both get the same explicit comma list of `optimizer.lr` values. The basic sweep's runs leave a
result.json each; the Tune sweep leaves trials.csv and Tune's per-trial result.json (one line per
reported epoch), from which the trial-epochs, the best metric and the schedule are read.
"""

import csv
import json
import os
from pathlib import Path

from .harness import Context, median, ratio, run_timed
from .training import LONG_EPOCHS


def learning_rates(count: int) -> list[str]:
    """`count` values spaced evenly on a log scale from 1e-4 to 1e-1."""
    return [f"{10 ** (-4 + 3 * i / (count - 1)):.3g}" for i in range(count)]


def basic_results(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text())["metrics"] for p in sorted(sweep_dir.glob("*/result.json"))]


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


# Epochs of about 4 s: nearer a research run's (minutes), where a trial's fixed cost in Ray
# Train's processes (about 18 s of CPU on 2 cores) no longer hides the epochs ASHA saves.
LONGER_EPOCHS = ["data=synthetic", "data.source.num_samples=131072"]


def run(ctx: Context) -> dict:
    result = measure(ctx, [], "")
    # Epochs of about a second, where parallel trials and early stopping start to pay.
    workloads = {"long_epochs": LONG_EPOCHS}
    if not ctx.quick:
        workloads["longer_epochs"] = LONGER_EPOCHS
    for rows in ctx.sweep_rows:  # --sweep-rows
        workloads[f"rows{rows}_epochs"] = ["data=synthetic", f"data.source.num_samples={rows}"]
    for key, data in workloads.items():
        result[key] = measure(ctx, data, key.removesuffix("epochs"))
        result[key]["data"] = " ".join(data)
    for rows in ctx.sweep_rows:
        result[f"rows{rows}_epochs"]["rows"] = rows  # the report labels these rows 3d, 3e, ...
    return result


def measure(ctx: Context, data: list[str], tag: str) -> dict:
    count, epochs = (4, 3) if ctx.quick else (ctx.sweep_trials, 8)
    rates = learning_rates(count)
    common = [f"optimizer.lr={','.join(rates)}", f"trainer.max_epochs={epochs}", *data]
    slots = os.cpu_count() or 1
    runs = []
    for repeat in range(ctx.sweep_repeats):
        basic_dir = ctx.work / "sweeps" / f"{tag}basic_{repeat}"
        basic = run_timed(
            ctx.train_py("-m", "search=none", *common, f"hydra.sweep.dir={basic_dir}"),
            ctx,
            timeout=3600,
        )
        tune_dir = ctx.work / "sweeps" / f"{tag}asha_{repeat}"
        tune = run_timed(
            ctx.train_py(
                "-m",
                "search=asha",
                "search.num_samples=1",
                *common,
                f"hydra.sweep.dir={tune_dir}",
            ),
            ctx,
            timeout=3600,
        )
        finals = basic_results(basic_dir)
        if len(finals) != count:
            raise RuntimeError(f"basic sweep: {len(finals)} results for {count} runs")
        with open(tune_dir / "trials.csv") as file:
            trials = list(csv.DictReader(file))
        histories = tune_histories(tune_dir)
        asha_epochs = sum(int(row["epochs"]) for row in trials)
        runs.append(
            {
                "basic_wall_s": basic.wall_s,
                "asha_wall_s": tune.wall_s,
                "basic_trial_epochs": count * epochs,
                "asha_trial_epochs": asha_epochs,
                "asha_statuses": [row["status"] for row in trials],
                "basic_best_val_loss": min(m["val_loss"] for m in finals),
                "asha_best_val_loss": min(
                    (float(row["final"]) for row in trials if row["final"]), default=None
                ),
                "basic_best_val_acc": max(m["val_acc"] for m in finals),
                "asha_best_val_acc": max(
                    (h[-1]["val_acc"] for h in histories if "val_acc" in h[-1]), default=None
                ),
                "schedule": schedule(histories, slots) if histories else None,
            }
        )

    def med(key: str) -> float | None:
        return median([run[key] for run in runs])

    speedup = ratio(med("basic_wall_s"), med("asha_wall_s"))
    epochs_ratio = ratio(med("asha_trial_epochs"), med("basic_trial_epochs"))
    best_basic, best_asha = med("basic_best_val_acc"), med("asha_best_val_acc")
    acc_gap = None if best_asha is None else 100 * (best_basic - best_asha)
    bookkeeping = median([run["schedule"]["ratio"] for run in runs if run["schedule"]])
    return {
        "configurations": rates,
        "epochs": epochs,
        "parallel_slots": slots,
        "runs": runs,
        "speedup_asha_vs_basic": speedup,
        "trial_epochs_ratio": epochs_ratio,
        "best_val_acc_gap_points": acc_gap,
        "schedule_ratio": bookkeeping,
        "goals": {
            "speedup >= 2x": speedup is not None and speedup >= 2,
            "trial-epochs <= 0.5x": epochs_ratio is not None and epochs_ratio <= 0.5,
            "best val_acc within 1 point": acc_gap is not None and acc_gap <= 1.0,
            "schedule <= 1.2x ideal": bookkeeping is not None and bookkeeping <= 1.2,
        },
    }
