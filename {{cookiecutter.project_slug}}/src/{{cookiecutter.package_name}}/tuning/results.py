"""What a sweep leaves in its folder: the best trial, a table of all trials and a plot."""

import math
import re
import shlex
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from matplotlib.figure import Figure  # not pyplot: files only, no display and no global figures
from matplotlib.ticker import MaxNLocator
from ray.tune import ResultGrid

from .space import format_value
from .trial import job_number

RESULTS_FILE = "optimization_results.yaml"
TRIALS_FILE = "trials.csv"
PLOT_FILE = "metric_per_epoch.png"
ERROR_FILE = "error.txt"  # Ray Tune's: a failed trial's traceback, in its folder under tune/
STATUSES = ("completed", "stopped early", "error", "interrupted", "not run")
_RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*:")


@dataclass
class TrialSummary:
    """One row of trials.csv."""

    trial: int
    status: str  # one of STATUSES
    final: float | None  # the metric at the last reported epoch
    best: float | None  # the best value of the metric over the trial's epochs
    epochs: int  # epochs trained (the highest `epoch` reported to Tune)
    output_dir: str
    error: str = ""
    log: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # sampled values by override key

    @property
    def overrides(self) -> str:
        """The sampled values as command-line overrides, quoted for the shell."""
        return " ".join(
            shlex.quote(f"{key}={format_value(value)}") for key, value in self.params.items()
        )

    def run_overrides(self, fixed: Sequence[str] = ()) -> str:
        """The overrides that run this trial's configuration alone: the sweep's `fixed` ones
        (as SearchSpace.run_fixed keeps them), then the sampled values; quoted for the shell."""
        return " ".join([*(shlex.quote(line) for line in fixed), self.overrides]).strip()

    def as_row(self) -> dict[str, Any]:
        row = {key: value for key, value in asdict(self).items() if key != "params"}
        return {**row, "overrides": self.overrides, **self.params}


def summarize_trials(
    grid: ResultGrid,
    metric: str,
    mode: str,
    max_epochs: int,
    sweep_dir: Path,
    interrupted: list[int] = (),
    seen: Mapping[int, list[dict]] | None = None,
    early_stopping: bool = True,
) -> tuple[list[TrialSummary], dict[int, pd.DataFrame]]:
    """A summary per trial, and each trial's per-epoch history, both keyed by job number.

    `interrupted`: the trials that were still running when the sweep was stopped (Ctrl-C).
    `seen`: the results this session's driver received, by job number. Tune's own record of a
    trial can lack the latest ones (restarting a paused trial, as PBT does, puts back the copy
    last synced to storage), and `seen` lacks those of the sessions before a resume: each
    trial's history is the longer of the two.
    `early_stopping`: whether the scheduler stops trials. PBT does not: a trial of fewer epochs
    took over another's finished checkpoint, and is complete.
    """
    rows, histories = [], {}
    for result in grid:
        number = job_number(result.path)
        recorded = (
            result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
        )
        received = pd.DataFrame((seen or {}).get(number, []))
        history = received if len(received) > len(recorded) else recorded
        values = history[metric].dropna() if metric in history else pd.Series(dtype=float)
        reported_dir = history["output_dir"].dropna() if "output_dir" in history else []
        output_dir = reported_dir.iloc[-1] if len(reported_dir) else str(sweep_dir / str(number))
        # Epochs trained, from the epoch counter (epochs completed): a trial resumed from a
        # checkpoint (after an interruption, or PBT's hand-over) reports fewer times than it has
        # epochs.
        epochs = int(history["epoch"].max()) if len(values) and "epoch" in history else 0
        if result.error is not None:
            status = "error"
        elif number in interrupted:
            status = "interrupted"
        elif len(values) == 0:
            status = "not run"  # the sweep ended (e.g. too many failures) before it reported
        elif epochs < max_epochs and early_stopping:
            status = "stopped early"
        else:
            status = "completed"
        rows.append(
            TrialSummary(
                trial=number,
                status=status,
                params=dict(result.config or {}),
                final=float(values.iloc[-1]) if len(values) else None,
                best=float(values.min() if mode == "min" else values.max())
                if len(values)
                else None,
                epochs=epochs,
                output_dir=output_dir,
                error=error_line(result.error),
                log=_error_log(result.path, output_dir) if result.error is not None else "",
            )
        )
        histories[number] = history
    rows.sort(key=lambda row: row.trial)
    return rows, histories


def best_trial(rows: list[TrialSummary], mode: str) -> TrialSummary | None:
    """The completed trial whose final metric is best; if none completed, the best final
    metric of those that reported one (failed trials and those that reported nothing excluded).

    Completed trials are compared at the same, last epoch. A trial stopped early was already
    judged worse than its peers at the epoch it stopped (what the scheduler stops by), and has
    neither a result.json nor, often, a checkpoint: a metric of its that looks better than a
    completed trial's last one was reached in fewer epochs (seen in a digits sweep: a trial
    stopped at epoch 2 whose val_loss a completed trial's noisy last epoch did not match).
    """
    scored = [row for row in rows if row.final is not None and not math.isnan(row.final)]
    completed = [row for row in scored if row.status == "completed"]
    if not scored:
        return None
    pick = min if mode == "min" else max
    return pick(completed or scored, key=lambda row: row.final)


def write_results(
    sweep_dir: Path,
    name: str,
    rows: list[TrialSummary],
    histories: dict[int, pd.DataFrame],
    metric: str,
    mode: str,
    fixed: Sequence[str] = (),
    test_metrics: Mapping[str, float] | None = None,
) -> TrialSummary | None:
    """Write optimization_results.yaml, trials.csv and the metric plot into `sweep_dir`
    (`fixed`: the sweep's overrides that `best_overrides` repeats before the sampled ones;
    `test_metrics`: the best trial's on the held-out test split, evaluation.py)."""
    best = best_trial(rows, mode)
    pd.DataFrame([row.as_row() for row in rows]).to_csv(sweep_dir / TRIALS_FILE, index=False)
    results = {
        "name": name,
        "metric": metric,
        "mode": mode,
        "best_params": best.params if best else {},
        "best_overrides": best.run_overrides(fixed) if best else "",
        "best_value": best.final if best else None,
        "best_trial": best.trial if best else None,
        "best_output_dir": best.output_dir if best else None,
        # The best trial's best checkpoint on the test split: it was chosen without these.
        "best_test_metrics": dict(test_metrics or {}),
    }
    (sweep_dir / RESULTS_FILE).write_text(yaml.safe_dump(results, sort_keys=False))
    plot(sweep_dir / PLOT_FILE, rows, histories, metric)
    return best


def plot(path: Path, rows: list[TrialSummary], histories: dict[int, pd.DataFrame], metric: str):
    """Save the metric per epoch for every trial (metric_figure) to `path`."""
    metric_figure(rows, histories, metric).savefig(path, dpi=100, bbox_inches="tight")


def metric_figure(
    rows: list[TrialSummary], histories: dict[int, pd.DataFrame], metric: str
) -> Figure:
    """The metric per epoch for every trial, each named in the legend by its number, status and
    sampled values; early-stopped trials end in an x."""
    figure = Figure(figsize=(8, 5))
    axes = figure.subplots()
    names = short_names([key for row in rows for key in row.params])
    for row in rows:
        history = histories.get(row.trial)
        if history is None or metric not in history or history[metric].dropna().empty:
            continue
        points = history.dropna(subset=[metric])
        epochs = points["epoch"] if "epoch" in points else range(1, len(points) + 1)
        label = trial_label(row, names)
        (line,) = axes.plot(epochs, points[metric], marker=".", label=label)
        if row.status == "stopped early":
            axes.plot(list(epochs)[-1], points[metric].iloc[-1], "x", color=line.get_color(), ms=10)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} per epoch, every trial (x: stopped early)")
    axes.grid(alpha=0.3)
    if axes.lines:  # beside the plot: a label per trial with its values is wide
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    return figure


def trial_label(row: TrialSummary, names: Mapping[str, str]) -> str:
    """`3 (stopped early): lr=0.001, hidden_dim=64`: a trial in a plot's legend (`names`: the
    short name of each override key, from short_names)."""
    values = ", ".join(f"{names[key]}={_short_value(value)}" for key, value in row.params.items())
    return f"{row.trial} ({row.status})" + (f": {values}" if values else "")


def trial_values(params: Mapping[str, Any]) -> str:
    """`lr=0.001, hidden_dim=64`: a trial's sampled values, short (trial_label)."""
    names = short_names(list(params))
    return ", ".join(f"{names[key]}={_short_value(value)}" for key, value in params.items())


def result_line(
    number: int, params: Mapping[str, Any], result: Mapping[str, Any], max_epochs: int
) -> str:
    """One console line per result of a trial: `trial 2 epoch 3/4 | train_loss 0.3 | val_acc
    0.91 val_loss 0.28 | lr=0.01`."""
    parts = [f"trial {number} epoch {result.get('epoch', '?')}/{max_epochs}"]
    for prefix in ("train_", "val_"):
        shown = [
            f"{name} {value:.4g}"
            for name, value in sorted(result.items())
            if name.startswith(prefix) and isinstance(value, int | float)
        ]
        if shown:
            parts.append(" ".join(shown))
    values = trial_values(params)
    return " | ".join([*parts, values] if values else parts)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each override key by its last part (`optimizer.lr` -> `lr`), or whole where two of
    `keys` end alike (`model.dropout`, `data.dropout`); without a leading +, ++ or ~."""
    bare = {key: key.lstrip("+~") for key in keys}  # each key once (`keys` has one per trial)
    last = {key: name.rsplit(".", 1)[-1] for key, name in bare.items()}
    ends = Counter(last.values())
    return {key: bare[key] if ends[last[key]] > 1 else last[key] for key in bare}


def _short_value(value: Any) -> str:
    """A sampled value, floats to 3 significant digits: a legend, not a record (trials.csv)."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return format_value(value)


def format_summary(
    rows: list[TrialSummary],
    best: TrialSummary | None,
    sweep_dir: Path,
    stopped: bool = False,
    fixed: Sequence[str] = (),
    test_metrics: Mapping[str, float] | None = None,
) -> str:
    """The few lines printed when a sweep ends (`stopped`: before all its trials finished;
    `fixed`, `test_metrics`: as for write_results)."""
    statuses = [row.status for row in rows]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in STATUSES if s in statuses)
    lines = [
        f"Sweep {'stopped' if stopped else 'finished'}: {len(rows)} trials ({counts})",
        f"Results in {sweep_dir}: {RESULTS_FILE}, {TRIALS_FILE}, {PLOT_FILE}",
    ]
    for row in rows:
        if row.status == "error":
            lines.append(f"  trial {row.trial} failed: {row.error} (log: {row.log})")
    if best is None:
        lines.append("No trial reported the metric.")
    else:
        value = f"{best.final:.6g} at its last epoch ({best.epochs})"
        if best.best is not None and best.best != best.final:
            value += f", {best.best:.6g} at its best"
        lines.append(f"Best trial {best.trial}: {value} ({best.output_dir})")
        if test_metrics:
            shown = ", ".join(f"{name} {value:.4g}" for name, value in sorted(test_metrics.items()))
            lines.append(f"  its best checkpoint on the test split: {shown}")
        lines.append(f"  python train.py {best.run_overrides(fixed)}")
        if best.status == "completed":  # its folder's result.json names its best checkpoint
            folder = shlex.quote(f"ckpt_path={best.output_dir}")
            lines.append(f"  python train.py serve=local serve.only=true {folder}")
    lines.append(f"TensorBoard of every trial: tensorboard --logdir {sweep_dir}")
    return "\n".join(lines)


def _error_log(tune_trial_dir: str, output_dir: str) -> str:
    """Tune's error.txt holds the trial's full traceback; the job's own log is the fallback."""
    traceback = Path(tune_trial_dir) / ERROR_FILE
    return str(traceback if traceback.is_file() else Path(output_dir) / "train.log")


def error_line(error: Any) -> str:
    """The most telling line of a trial's error: the last `SomeError: message` in it, with the
    line after it when the message goes on there (Hydra's "Error in call to target 'X':")."""
    if error is None:
        return ""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [number for number, line in enumerate(lines) if _RAISED.match(line)]
    if not raised:
        return (lines or [type(error).__name__])[-1][:300]
    last = raised[-1]
    line = lines[last]
    if line.endswith(":") and last + 1 < len(lines):
        line = f"{line} {lines[last + 1]}"
    return line[:300]
