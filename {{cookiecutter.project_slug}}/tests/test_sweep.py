"""Real Ray Tune sweeps through `python train.py -m search=...`, on the shared CPU cluster."""

import csv
import json
import re
import signal
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .conftest import (
    compose_config,
    failure,
    run_train,
    scalars,
    start_train,
    tensorboard_hparams,
)

pytestmark = pytest.mark.slow

# Small and fast: 512 synthetic samples, a few epochs, a checkpoint every other epoch.
SMALL = ["data=synthetic", "data.source.num_samples=512", "checkpoint.every_n_epochs=2"]


def trials(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "trials.csv") as table:
        return list(csv.DictReader(table))


def reports(sweep_dir: Path, trial: str) -> list[dict]:
    """What Tune recorded for a trial, one entry per epoch."""
    lines = (sweep_dir / "tune" / f"trial_{trial}" / "result.json").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_asha_stops_bad_trials_early_and_names_the_best(ray_address: str, tmp_path: Path) -> None:
    # Two good and two hopeless learning rates, one trial at a time, in the order given: by the
    # time a hopeless trial reports its first epoch, a good one has, so ASHA must cut it.
    # Run from another folder with the default, relative results folder, as a user would: the
    # trials' folders must land under it (Tune runs each trial in a working folder of its own).
    proc = run_train(
        "-m",
        "search=asha",
        "search.shuffle_grid=false",
        "search.max_concurrent_trials=1",
        "trainer.max_epochs=4",
        *SMALL,
        "data.test_fraction=0.2",
        "optimizer.lr=0.03,1e-7,0.01,1e-6",
        ray_address=ray_address,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, failure(proc)
    console = proc.stdout + proc.stderr
    [sweep_dir] = tmp_path.glob("*/sweeps/*/*")
    # Stopping trials, the last one too, is routine: no tracebacks, no warnings about settings.
    assert "Traceback" not in proc.stderr
    assert "max_concurrent_trials` will be ignored" not in proc.stderr
    rows = trials(sweep_dir)
    assert len(rows) == 4
    assert all(row["status"] in ("completed", "stopped early") for row in rows)
    # Trials run in order, so a good one reaches each rung first: every hopeless trial is cut at
    # the first rung. (ASHA may also cut a good trial that is worse than another good one.)
    hopeless = [row for row in rows if float(row["optimizer.lr"]) <= 1e-6]
    assert len(hopeless) == 2
    assert all(row["status"] == "stopped early" and row["epochs"] == "1" for row in hopeless)
    for row in hopeless:
        # The epoch Tune saw reached TensorBoard before the stopped trial's process ended.
        events = EventAccumulator(str(sweep_dir / row["trial"] / "tensorboard")).Reload()
        assert len(events.Scalars("val_loss")) >= 1
    assert rows[0]["status"] == "completed" and rows[0]["epochs"] == "4"
    # The console: what starts, a line per trial result, where the results are. Tune's boxes and
    # "Trial ... completed" (for a stopped trial too), Ray's notices at INFO and the trials' own
    # summaries stay off it (the last in each trial's train.log).
    lines = re.findall(r"trial (\d+) epoch (\d+)/4 \| train_acc", console)
    assert sorted(lines) == sorted(
        (row["trial"], str(report["epoch"]))
        for row in rows
        for report in reports(sweep_dir, row["trial"])
    )
    for row in hopeless:
        assert f"trial {row['trial']} stopped after 1 of 4 epochs" in console
    notices = (
        "completed after",
        "Configuration for experiment",
        "Token authentication",
        "Experiment state snapshotting",  # Tune's advice to keep fewer checkpoints
    )
    for notice in notices:
        assert notice not in console, notice
    assert not re.search(r"\bINFO \S+\.py:\d+ --", console), console[-3000:]
    assert "Summary written to" not in console
    assert "Summary written to" in (sweep_dir / rows[0]["trial"] / "train.log").read_text()
    # A trial that ran to its last epoch wrote its summary; one stopped early did not. Every
    # place counts epochs completed alike: trials.csv, Tune's reports, result.json, TensorBoard.
    for row in rows:
        summary = sweep_dir / row["trial"] / "result.json"
        epochs = [report["epoch"] for report in reports(sweep_dir, row["trial"])]
        assert epochs == list(range(1, int(row["epochs"]) + 1))
        if row["status"] == "completed":
            assert json.loads(summary.read_text())["metrics"]["epoch"] == 4
            assert scalars(sweep_dir / row["trial"] / "tensorboard", "epoch")[-1] == 4
        else:
            assert not summary.exists()
    # max_concurrent_trials=1: each trial starts after the one before has sent its last report.
    started = [
        (sweep_dir / row["trial"] / ".hydra" / "config.yaml").stat().st_mtime for row in rows
    ]
    last_report = [reports(sweep_dir, row["trial"])[-1]["timestamp"] for row in rows]
    assert all(started[k + 1] >= last_report[k] for k in range(len(rows) - 1))

    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    completed = [row for row in rows if row["status"] == "completed"]
    best = min(completed, key=lambda row: float(row["final"]))
    assert results["best_value"] == float(best["final"])
    assert best["optimizer.lr"] in ("0.03", "0.01")
    assert results["best_params"] == {"optimizer.lr": float(best["optimizer.lr"])}
    # The command printed for the best trial keeps the sweep's fixed overrides (not its search
    # or Hydra settings), so it composes the configuration the trial trained with.
    fixed = ["trainer.max_epochs=4", *SMALL, "data.test_fraction=0.2"]
    rerun = " ".join([*fixed, f"optimizer.lr={best['optimizer.lr']}"])
    assert results["best_overrides"] == rerun
    assert f"python train.py {rerun}" in console
    trained = OmegaConf.load(sweep_dir / best["trial"] / ".hydra" / "config.yaml")
    again = compose_config(*rerun.split())
    for group in ("model", "data", "optimizer", "trainer", "checkpoint", "seed"):
        assert again[group] == trained[group], group

    # Chosen by the validation metric above (not by these), the best trial's best checkpoint
    # met the held-out rows once: in the sweep's summary, on the console, in the trial's
    # result.json and TensorBoard; no other trial was evaluated.
    tested = results["best_test_metrics"]
    assert sorted(tested) == ["test_acc", "test_loss"]
    assert results["best_trial"] == int(best["trial"])
    assert 0.0 < tested["test_acc"] <= 1.0
    best_summary = json.loads((sweep_dir / best["trial"] / "result.json").read_text())
    assert best_summary["test_metrics"] == tested
    assert f"its best checkpoint on the test split: test_acc {tested['test_acc']:.4g}" in console
    for row in rows:
        events = EventAccumulator(str(sweep_dir / row["trial"] / "tensorboard")).Reload()
        assert ("test_acc" in events.Tags()["scalars"]) == (row is best), row["trial"]
    # The checkpoint tested is the one the trial's result.json names as its best: the test row
    # carries the epochs that checkpoint trained.
    events = EventAccumulator(str(sweep_dir / best["trial"] / "tensorboard")).Reload()
    [test_acc] = events.Scalars("test_acc")
    assert test_acc.value == pytest.approx(tested["test_acc"])
    tested_epochs = [
        event.value for event in events.Scalars("epoch") if event.step == test_acc.step
    ]
    assert tested_epochs == [best_summary["best_checkpoint_metrics"]["epoch"]]

    # Every trial is a Hydra job with its own folder, config and TensorBoard logs, where the
    # HParams tab compares the trials: each lists its learning rate and how far it got.
    for row in rows:
        job = sweep_dir / row["trial"]
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert f"optimizer.lr={row['optimizer.lr']}" in overrides
        hyperparameters, metrics = tensorboard_hparams(job / "tensorboard")
        assert hyperparameters["optimizer.lr"] == float(row["optimizer.lr"])
        assert {"val_loss", "epoch"} <= set(metrics)
    assert (sweep_dir / "metric_per_epoch.png").stat().st_size > 10_000


def test_a_stopped_trial_frees_its_cpus_and_process_for_the_next(
    ray_address: str, tmp_path: Path
) -> None:
    # One trial at a time, each worker taking both CPUs of the cluster: a good trial, a hopeless
    # one that ASHA stops after 1 of 30 epochs, then another. Tune runs them all in one process
    # (reuse_actors); the stopped trial's Train run must be aborted, not left training, or the
    # third trial could not get its CPUs. Nothing is sampled, so search=asha's 8 samples
    # become one trial per learning rate.
    proc = run_train(
        "-m",
        "search=asha",
        "search.shuffle_grid=false",
        "search.max_concurrent_trials=1",
        "trainer.max_epochs=30",
        *SMALL,
        "scaling=cpu",  # a worker group per trial: Ray Train's, aborted when Tune stops it
        "scaling.resources_per_worker.CPU=2",
        "optimizer.lr=0.03,1e-7,0.01",
        f"paths.storage_path={tmp_path / 'bucket'}",  # one for the sweep, as a bucket would be
        f"hydra.sweep.dir={tmp_path}",
        ray_address=ray_address,
    )
    assert proc.returncode == 0, failure(proc)
    assert "Nothing is sampled, so each configuration runs once" in proc.stdout
    assert "Ray Tune sweep asha: 3 trials, up to 1 at once" in proc.stdout
    rows = trials(tmp_path)
    assert [row["optimizer.lr"] for row in rows] == ["0.03", "1e-07", "0.01"]
    assert rows[0]["status"] == "completed" and rows[0]["epochs"] == "30"
    assert rows[1]["status"] == "stopped early" and rows[1]["epochs"] == "1"
    assert rows[2]["status"] in ("completed", "stopped early")
    assert "aborting its Ray Train run" in (tmp_path / "1" / "train.log").read_text()
    events = EventAccumulator(str(tmp_path / "1" / "tensorboard")).Reload()
    assert len(events.Scalars("val_loss")) >= 1  # its epoch reached TensorBoard
    # The trial that ran to the end wrote its summary, as a single run does.
    summary = json.loads((tmp_path / "0" / "result.json").read_text())
    assert summary["metrics"]["epoch"] == 30
    assert len({reports(tmp_path, row["trial"])[0]["pid"] for row in rows}) == 1
    # Each trial's worker group kept its Ray Train run in its own folder of the shared storage
    # path: none started from the first trial's run of the same name.
    assert summary["storage_path"] == str(tmp_path / "bucket" / "0" / "ray_train")
    assert sorted(path.name for path in (tmp_path / "bucket").iterdir()) == ["0", "1", "2"]
    assert all((tmp_path / "bucket" / n / "ray_train").is_dir() for n in ("0", "1", "2"))
    assert len(reports(tmp_path, "2")) >= 1  # the third trial trained


def test_pbt_hands_the_good_trials_checkpoint_to_the_hopeless_one(
    ray_address: str, tmp_path: Path
) -> None:
    # A good and a hopeless learning rate, compared at the same epoch (synch): after 2 epochs
    # the hopeless trial takes the good one's checkpoint and learning rate, and trains on.
    proc = run_train(
        "-m",
        "search=pbt",
        "search.num_samples=1",
        "search.scheduler.synch=true",
        "trainer.max_epochs=4",
        "data=synthetic",
        "data.source.num_samples=2048",
        "optimizer.lr=1e-7,0.03",
        "model.dropout=interval(0.0,0.2)",  # PBT mutates the sampled keys
        f"hydra.sweep.dir={tmp_path}",
        ray_address=ray_address,
    )
    assert proc.returncode == 0, failure(proc)
    steps = (tmp_path / "tune" / "pbt_global.txt").read_text().splitlines()
    # Each line: [trial, cloned trial, its epoch, theirs, their config, the new config].
    first = json.loads(steps[0])
    assert first[4]["optimizer.lr"] == 0.03 and first[5]["optimizer.lr"] == 0.03
    target = int(first[0].split("_")[0])
    rows = {int(row["trial"]): row for row in trials(tmp_path)}
    assert all(row["status"] == "completed" and row["epochs"] == "4" for row in rows.values())
    # Its TensorBoard holds both runs: chance level (lr=1e-7 learns nothing in 2 epochs), then
    # the good trial's weights trained on. Accuracy, not loss, tells them apart: at lr=0.03 the
    # validation loss of a 97%-accurate model jumps about between epochs (seen: 0.24, then 1.12).
    accuracy = scalars(tmp_path / str(target) / "tensorboard", "val_acc")
    assert accuracy[0] < 0.3 and accuracy[-1] > 0.8, accuracy
    assert float(rows[target]["best"]) < 1.0
    summary = json.loads((tmp_path / str(target) / "result.json").read_text())
    assert summary["metrics"]["epoch"] == 4 and summary["metrics"]["val_acc"] > 0.8
    # PBT pauses both trials once more after their last epoch: their runs still finish.
    for number in rows:
        summary = json.loads((tmp_path / str(number) / "result.json").read_text())
        assert summary["metrics"]["epoch"] == 4


def test_the_default_pbt_sweep_clones_checkpoints_that_are_still_there(
    ray_address: str, tmp_path: Path
) -> None:
    # Asynchronous PBT on the digits' short epochs: trials clone each other while the cloned
    # trial trains on and checkpoints every 2 epochs. With 4 checkpoints kept per trial, the
    # one being cloned was deleted before the clone loaded it, and Tune's bookkeeping printed
    # tracebacks (seen in 3 sweeps of 3, a failed trial in 2).
    proc = run_train(
        "-m",
        "search=pbt",
        "trainer.max_epochs=20",
        f"hydra.sweep.dir={tmp_path}",
        ray_address=ray_address,
    )
    assert proc.returncode == 0, failure(proc)
    assert tracebacks_other_than_shutdown(proc.stdout + proc.stderr) == []
    rows = trials(tmp_path)
    assert len(rows) == 4 and all(row["status"] == "completed" for row in rows)


def tracebacks_other_than_shutdown(output: str) -> list[str]:
    """The tracebacks in `output`, but for those of a trial process that Tune ended with SIGTERM
    at the end of the sweep (Ray's signal handler raises SystemExit wherever the process was,
    and Python prints it when that was inside a weakref callback)."""
    blocks = output.split("Traceback (most recent call last)")[1:]
    return [
        block[:2000]
        for block in blocks
        if not ("sigterm_handler" in block[:3000] and "SystemExit" in block[:3000])
    ]


def test_interrupted_sweep_resumes_and_keeps_finished_trials(
    ray_address: str, tmp_path: Path
) -> None:
    # One storage path for the whole sweep (a shared folder standing in for a bucket): each
    # trial keeps its Ray Train run in a folder of its own there, and resumes from it.
    sweep_dir, bucket = tmp_path / "sweep", tmp_path / "bucket"
    args = [
        "-m",
        "search=random",
        "search.num_samples=3",
        "search.max_concurrent_trials=1",
        "trainer.max_epochs=6",
        # Trials of a few seconds: one-process trials of the small data took under a second
        # each, and the whole sweep could end before the Ctrl-C below reached it.
        "data=synthetic",
        "data.source.num_samples=16384",
        "checkpoint.every_n_epochs=2",
        "optimizer.lr=tag(log,interval(1e-3,1e-1))",
        f"paths.storage_path={bucket}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    sweep = start_train(*args, ray_address=ray_address)
    first_done = sweep_dir / "0" / "result.json"
    # The second trial's first checkpoint, in its own folder of the shared storage: Ctrl-C then.
    second_started = bucket / "1" / "ray_train" / "checkpoint_epoch_0002"
    deadline = time.monotonic() + 400
    while not second_started.exists() and time.monotonic() < deadline and sweep.poll() is None:
        time.sleep(0.1)
    assert second_started.exists(), "the second trial never checkpointed in its own folder"
    sweep.send_signal(signal.SIGINT)  # Ctrl-C
    output, _ = sweep.communicate(timeout=300)
    # Not a finished sweep (a non-zero exit status), and it says how to continue.
    assert sweep.returncode != 0
    hint = "trials did not finish. Continue the sweep with the same command plus: "
    assert f"{hint}search.resume=true hydra.sweep.dir={sweep_dir}" in output, output[-3000:]
    assert "Tuner.restore(" not in output  # Ray Tune's own hint, which is not how this one resumes
    finished_at = first_done.stat().st_mtime
    assert not (sweep_dir / "1" / "result.json").exists()  # interrupted before its last epoch

    proc = run_train(*args, "search.resume=true", ray_address=ray_address)
    assert proc.returncode == 0, failure(proc)
    rows = trials(sweep_dir)
    assert [row["status"] for row in rows] == ["completed"] * 3
    assert first_done.stat().st_mtime == finished_at  # the finished trial was not run again
    for number in range(3):
        # Every epoch trained once, by this trial: the interrupted one went on from its own
        # checkpoint of epoch 2, none from another trial's (which would leave nothing to train).
        epochs = [report["epoch"] for report in reports(sweep_dir, str(number))]
        assert sorted(set(epochs)) == list(range(1, 7)) and epochs.count(1) == 1, (number, epochs)
        summary = json.loads((sweep_dir / str(number) / "result.json").read_text())
        assert summary["metrics"]["epoch"] == 6
        own = bucket / str(number)
        assert Path(summary["storage_path"]).parent == own, summary
        assert Path(summary["best_checkpoint"]).is_relative_to(own), summary
        assert list(own.glob("*/checkpoint_epoch_0006")), sorted(own.rglob("*"))
    assert sorted(path.name for path in bucket.iterdir()) == ["0", "1", "2"]

    again = run_train(*args, ray_address=ray_address, timeout=120)  # the same folder, no resume
    assert again.returncode != 0
    assert "already holds a sweep. Resume it with search.resume=true" in again.stderr
    assert "Traceback" not in again.stderr
    assert "Connecting to the Ray cluster" not in again.stdout + again.stderr  # refused first


def test_optuna_sweep_runs_and_samples_in_range(ray_address: str, tmp_path: Path) -> None:
    proc = run_train(
        "-m",
        "search=optuna",
        "search.num_samples=3",
        "trainer.max_epochs=2",
        *SMALL,
        "model.hidden_dim=choice(16,32)",
        f"hydra.sweep.dir={tmp_path}",
        ray_address=ray_address,
    )
    assert proc.returncode == 0, failure(proc)
    rows = trials(tmp_path)
    assert len(rows) == 3
    assert all(1e-4 <= float(row["optimizer.lr"]) <= 1e-1 for row in rows)
    assert {row["model.hidden_dim"] for row in rows} <= {"16", "32"}
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"optimizer.lr", "model.hidden_dim"}


def test_a_model_that_cannot_take_the_data_stops_the_sweep_before_any_trial(
    ray_address: str, tmp_path: Path
) -> None:
    proc = run_train(
        "-m",
        "search=random",
        "search.num_samples=2",
        "model=cnn",
        "data=synthetic",
        f"hydra.sweep.dir={tmp_path}",
        ray_address=ray_address,
    )
    assert proc.returncode != 0
    assert "model=cnn needs image inputs shaped (channels, height, width)" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "Ray Tune sweep" not in proc.stderr and not (tmp_path / "tune").exists()


def test_failing_trials_are_reported_and_stop_the_sweep(ray_address: str, tmp_path: Path) -> None:
    # Every trial asks for 3 one-CPU workers on a 2-CPU cluster and fails before training.
    proc = run_train(
        "-m",
        "search=random",
        "search.num_samples=4",
        "search.max_failed_trials=1",
        "scaling.num_workers=choice(3)",
        f"hydra.sweep.dir={tmp_path}",
        ray_address=ray_address,
    )
    assert proc.returncode != 0
    # One line as each trial fails, naming its error and traceback file; at the end the summary
    # and the sweep's failure, in one line. The tracebacks are in the files, not on the console.
    assert re.search(
        r"Trial \d+ failed \(1 so far; the sweep stops after 2\): .*asks for 3 CPUs.*"
        r"\(traceback: .*/tune/trial_\d+/error.txt\)",
        proc.stdout,  # Hydra's log
    ), proc.stdout[-3000:]
    assert "Every trial that ran failed" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    rows = trials(tmp_path)
    failed = [row for row in rows if row["status"] == "error"]
    assert len(failed) >= 2  # more than max_failed_trials=1, then the sweep stopped
    for row in failed:
        assert "asks for 3 CPUs" in row["error"]
        assert Path(row["log"]).is_file()
        assert "asks for 3 CPUs" in Path(row["log"]).read_text()


def test_optuna_rejects_comma_lists_before_running(ray_address: str, tmp_path: Path) -> None:
    proc = run_train(
        "-m",
        "search=optuna",
        "model=mlp,cnn",
        f"hydra.sweep.dir={tmp_path}",
        ray_address=ray_address,
    )
    assert proc.returncode != 0
    assert "Write `key=choice(a,b)`" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "tune").exists()
