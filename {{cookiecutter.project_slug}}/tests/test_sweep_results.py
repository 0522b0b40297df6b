"""The results files of a sweep, from hand-made trial summaries (no Ray cluster needed)."""

import copy
import csv
import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import yaml

from {{ cookiecutter.package_name }}.tuning.results import (
    TrialSummary,
    best_trial,
    error_line,
    format_summary,
    metric_figure,
    short_names,
    summarize_trials,
    trial_label,
    write_results,
)
from {{ cookiecutter.package_name }}.tuning.trial import TrialNumbers, job_number


def summaries(tmp_path: Path) -> tuple[list[TrialSummary], dict[int, pd.DataFrame]]:
    def row(trial, status, finals, **params):
        # Reports count epochs completed: 1 after the first.
        history = pd.DataFrame({"epoch": range(1, len(finals) + 1), "val_loss": finals})
        summary = TrialSummary(
            trial=trial,
            status=status,
            final=finals[-1] if finals else None,
            best=min(finals) if finals else None,
            epochs=len(finals),
            output_dir=str(tmp_path / str(trial)),
            params=params,
            error="ValueError: boom" if status == "error" else "",
        )
        return summary, history

    made = [
        row(0, "completed", [1.0, 0.5, 0.4], **{"optimizer.lr": 0.01, "+x": "'a b'"}),
        row(1, "stopped early", [2.0], **{"optimizer.lr": 1e-6, "+x": "c"}),
        row(2, "completed", [0.9, 0.3, 0.35], **{"optimizer.lr": 0.02, "+x": "d"}),
        row(3, "error", [], **{"optimizer.lr": 0.5, "+x": "e"}),
    ]
    return [m[0] for m in made], {m[0].trial: m[1] for m in made}


def test_best_trial_by_final_value_and_mode(tmp_path: Path) -> None:
    rows, _ = summaries(tmp_path)
    assert best_trial(rows, "min").trial == 2
    assert best_trial(rows, "max").trial == 0
    assert best_trial([rows[3]], "min") is None


def test_a_trial_stopped_early_is_best_only_when_none_completed(tmp_path: Path) -> None:
    rows, _ = summaries(tmp_path)
    # Stopped at epoch 1 below where the completed trials ended: they are compared at epoch 3.
    lucky = dataclasses.replace(rows[1], final=0.1, best=0.1)
    assert best_trial([rows[0], lucky, rows[2]], "min").trial == 2
    interrupted = dataclasses.replace(rows[0], status="interrupted")
    assert best_trial([interrupted, lucky, rows[3]], "min").trial == 1


def test_results_files(tmp_path: Path) -> None:
    rows, histories = summaries(tmp_path)
    best = write_results(tmp_path, "train", rows, histories, "val_loss", "min")
    assert best.trial == 2
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["name"] == "train"
    assert results["best_value"] == 0.35
    assert results["best_params"] == {"optimizer.lr": 0.02, "+x": "d"}
    assert results["best_overrides"] == "optimizer.lr=0.02 +x=d"

    with open(tmp_path / "trials.csv") as table:
        table_rows = list(csv.DictReader(table))
    assert [r["status"] for r in table_rows] == ["completed", "stopped early", "completed", "error"]
    assert table_rows[0]["overrides"] == "optimizer.lr=0.01 '+x='\"'\"'a b'\"'\"''"
    assert table_rows[3]["error"] == "ValueError: boom"
    assert (tmp_path / "metric_per_epoch.png").read_bytes()[:4] == b"\x89PNG"


def test_the_plot_legend_names_each_trials_values(tmp_path: Path) -> None:
    rows, histories = summaries(tmp_path)
    legend = metric_figure(rows, histories, "val_loss").axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == [
        "0 (completed): lr=0.01, x='a b'",
        "1 (stopped early): lr=1e-06, x=c",
        "2 (completed): lr=0.02, x=d",
    ]  # trial 3 failed before its first epoch: no line, no entry
    # Keys by their last part unless two end alike; floats to 3 significant digits.
    names = short_names(["model.dropout", "+data.dropout", "optimizer.lr", "optimizer.lr"])
    assert names == {
        "model.dropout": "model.dropout",
        "+data.dropout": "data.dropout",
        "optimizer.lr": "lr",
    }
    row = dataclasses.replace(rows[0], params={"optimizer.lr": 0.000123456, "model.dropout": 0.5})
    assert trial_label(row, names) == "0 (completed): lr=0.000123, model.dropout=0.5"


def test_summary_names_the_best_and_the_failures_and_says_if_stopped(tmp_path: Path) -> None:
    rows, _ = summaries(tmp_path)
    text = format_summary(rows, rows[2], tmp_path, stopped=True)
    assert "4 trials (2 completed, 1 stopped early, 1 error)" in text
    assert f"Best trial 2: 0.35 at its last epoch (3), 0.3 at its best ({tmp_path / '2'})" in text
    assert f"python train.py serve=local serve.only=true ckpt_path={tmp_path / '2'}\n" in text
    # A best trial that was stopped early (none completed) has no result.json to serve from.
    assert "serve=local" not in format_summary(rows, rows[1], tmp_path)
    assert "python train.py optimizer.lr=0.02 +x=d" in text
    fixed = ["model=cnn", "+note=a b"]  # a sweep's fixed overrides (SearchSpace.run_fixed)
    rerun = "model=cnn '+note=a b' optimizer.lr=0.02 +x=d"
    assert f"python train.py {rerun}\n" in format_summary(rows, rows[2], tmp_path, fixed=fixed)
    write_results(tmp_path, "train", rows, {}, "val_loss", "min", fixed=fixed)
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert results["best_overrides"] == rerun
    assert "trial 3 failed: ValueError: boom" in text
    assert text.startswith("Sweep stopped: 4 trials")
    assert format_summary(rows, rows[2], tmp_path).startswith("Sweep finished: 4 trials")


def test_a_failed_trials_error_line_is_its_cause() -> None:
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n'
        "ValueError: the cause\n"
        "\nThe above exception was the direct cause of the following exception:\n\n"
        "hydra.errors.InstantiationException: Error in call to target 'pkg.CNN':\n"
        "ValueError('model=cnn needs image inputs')\n"
        "full_key: model\n"
    )
    assert error_line(RuntimeError(traceback)) == (
        "hydra.errors.InstantiationException: Error in call to target 'pkg.CNN': "
        "ValueError('model=cnn needs image inputs')"
    )
    assert error_line(RuntimeError("x\nKeyError: 'lr'\n  more")) == "KeyError: 'lr'"
    assert error_line(RuntimeError("no error name here")) == "no error name here"
    assert error_line(None) == ""


def test_trial_numbers_survive_tunes_copies_and_resume(tmp_path: Path) -> None:
    # Tune deep-copies the dirname creator for every trial it creates; numbers must not repeat.
    numbers = TrialNumbers(tmp_path)
    names = [copy.deepcopy(numbers)(trial=None) for _ in range(3)]
    assert names == ["trial_0", "trial_1", "trial_2"]
    assert [job_number(tmp_path / name) for name in names] == [0, 1, 2]
    # A resumed sweep goes on after the highest number already on disk.
    (tmp_path / "trial_0").mkdir()
    (tmp_path / "trial_4").mkdir()
    assert TrialNumbers(tmp_path)(trial=None) == "trial_5"


def tune_result(tmp_path: Path, number: int, losses: list[float]) -> SimpleNamespace:
    """What Tune's ResultGrid holds for a trial: its folder and its recorded history."""
    history = pd.DataFrame({"epoch": range(1, len(losses) + 1), "val_loss": losses})
    return SimpleNamespace(
        path=str(tmp_path / "tune" / f"trial_{number}"),
        metrics_dataframe=history,
        metrics=history.iloc[-1].to_dict(),
        error=None,
        config={"optimizer.lr": 0.01},
    )


def test_trial_histories_take_the_longer_record_and_pbt_trials_are_not_stopped(
    tmp_path: Path,
) -> None:
    grid = [tune_result(tmp_path, 0, [2.0, 1.0]), tune_result(tmp_path, 1, [2.0, 1.5])]
    # The driver saw all 4 of trial 0's epochs; Tune's copy kept 2 (a restore put back an older
    # one). Trial 1 ended after 2 epochs of its own.
    seen = {0: [{"epoch": e, "val_loss": v} for e, v in enumerate([2.0, 1.0, 0.5, 0.25], 1)]}
    args = (grid, "val_loss", "min", 4, tmp_path)
    rows, histories = summarize_trials(*args, seen=seen)
    assert (rows[0].status, rows[0].epochs, rows[0].final) == ("completed", 4, 0.25)
    assert len(histories[0]) == 4
    assert (rows[1].status, rows[1].epochs) == ("stopped early", 2)
    # Under PBT no trial is stopped: one that took over a finished trial's checkpoint is done.
    rows, _ = summarize_trials(*args, seen=seen, early_stopping=False)
    assert rows[1].status == "completed"
