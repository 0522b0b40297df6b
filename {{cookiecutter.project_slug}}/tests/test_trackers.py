"""Trackers (configs/logger/): each gets the run's settings and every epoch's metrics, read back
here with the tracker's own files or client; one that cannot work stops train.py before Ray."""

import csv
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from {{ cookiecutter.package_name }}.config import validate

from .conftest import compose_config, failure, run_train, tensorboard_hparams


@pytest.mark.parametrize(
    "choice", ["logger=csv", "logger=mlflow", "logger=wandb", "logger=many", "logger=none"]
)
def test_shipped_trackers_are_valid(choice: str) -> None:
    validate(compose_config(choice))


def test_many_and_a_list_compose_several_trackers() -> None:
    assert set(compose_config("logger=many").logger) == {"tensorboard", "csv", "mlflow"}
    assert set(compose_config("logger=[csv,wandb]").logger) == {"csv", "wandb"}


def test_a_tracker_that_is_not_installed_or_answers_nowhere_stops_before_ray(tmp_path) -> None:
    comet = "+logger.comet._target_=lightning.pytorch.loggers.CometLogger"
    proc = run_train(comet, f"paths.results_dir={tmp_path}", ray_address="", timeout=120)
    assert proc.returncode != 0
    assert "logger.comet needs the comet_ml package, not installed here" in proc.stderr
    # Port 9 (discard): nothing listens there.
    down = "logger.mlflow.tracking_uri=http://127.0.0.1:9"
    proc = run_train(
        "logger=mlflow", down, f"paths.results_dir={tmp_path}", ray_address="", timeout=120
    )
    assert proc.returncode != 0
    assert "logger.mlflow: the MLflow server at http://127.0.0.1:9 cannot be reached" in proc.stderr
    for output in (proc.stdout + proc.stderr,):
        assert "Traceback" not in output and "Ray" not in output


@pytest.fixture
def offline_trackers(monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B offline and MLflow's local store, whatever the environment running the tests says."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.slow
def test_csv_and_offline_wandb_get_settings_and_epochs_with_bf16_and_a_profile(
    ray_address: str, tmp_path: Path, offline_trackers: None
) -> None:
    # No API key: W&B writes the run offline, into the run's folder. In one process (scaling=local).
    proc = run_train(
        "logger=[csv,wandb]",
        "debug=profile",
        "trainer.max_epochs=2",
        "trainer.precision=bf16-mixed",
        "optimizer.lr=0.003",
        f"paths.results_dir={tmp_path / 'results'}",
        "hydra.run.dir=run",
        ray_address=ray_address,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, failure(proc)
    run = tmp_path / "run"
    assert json.loads((run / "result.json").read_text())["metrics"]["epoch"] == 2

    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    val_loss = [float(row["val_loss"]) for row in rows if row["val_loss"]]
    assert len(val_loss) == 2  # one per epoch
    assert yaml.safe_load((run / "csv" / "hparams.yaml").read_text())["optimizer.lr"] == 0.003

    (wandb_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(wandb_file)
    kinds = [record.WhichOneof("record_type") for record in records]
    (config,) = [record.config for record in records if record.HasField("config")]
    settings = {item.key: json.loads(item.value_json) for item in config.update}
    assert settings["optimizer.lr"] == 0.003 and settings["trainer.precision"] == "bf16-mixed"
    history = [
        {"/".join(item.nested_key) or item.key: item.value_json for item in record.history.item}
        for record in records
        if record.HasField("history")
    ]
    # Epochs completed, as in result.json and on the console.
    assert [json.loads(row["epoch"]) for row in history if "val_loss" in row] == [1, 2]
    (run_record,) = [record.run for record in records if record.HasField("run")]
    assert run_record.display_name == "run"  # the run's folder (outside the results folder)
    assert kinds[-1] == "exit" and records[-1].exit.exit_code == 0

    (profile,) = run.glob("*profile*.txt")
    assert "Action" in profile.read_text() and "run_training_epoch" in profile.read_text()


@pytest.mark.slow
def test_mlflow_server_gets_settings_epochs_and_a_finished_run_from_a_worker_group(
    ray_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--default-artifact-root", str(tmp_path / "artifacts"),
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its workers in a process group of its own: stopped together
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{uri}/health", server)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the variable wins over the local store
        proc = run_train(
            "logger=many",
            "scaling=cpu",
            "trainer.max_epochs=2",
            "optimizer.lr=0.003",
            f"paths.results_dir={tmp_path / 'results'}",
            "hydra.run.dir=results/runs/first",
            ray_address=ray_address,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, failure(proc)
        console_of_a_worker_group(proc.stdout + proc.stderr)
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("{{ cookiecutter.package_name }}")
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.status == "FINISHED" and run.info.run_name == "runs/first"
        assert run.data.params["optimizer.lr"] == "0.003"
        assert run.data.params["scaling.num_workers"] == "1"
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert len(history) == 2 and history[-1].value == run.data.metrics["val_loss"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert not (tmp_path / "results" / "mlflow.db").exists()  # nothing in the local store
    # TensorBoard and CSV beside it, as before.
    hparams, _ = tensorboard_hparams(tmp_path / "results" / "runs" / "first" / "tensorboard")
    assert hparams["optimizer.lr"] == 0.003
    assert (tmp_path / "results" / "runs" / "first" / "csv" / "metrics.csv").is_file()


def console_of_a_worker_group(console: str) -> None:
    """What a 2-epoch run of a worker group prints: what starts, one line per epoch, where the
    results are. Ray Train's notices (the group starting, each report, each checkpoint) stay in
    its log files, and Lightning's start-up notices off."""
    epochs = [line.split(" | ")[0][-10:] for line in console.splitlines() if " epoch " in line]
    assert epochs == [" epoch 1/2", " epoch 2/2"], console[-3000:]
    for notice in (
        "Started training worker group",
        "Reporting training result",
        "Setting up process group",
        "Checkpoint successfully created",
        "GPU available",
    ):
        assert notice not in console, notice
    assert not re.search(r"\bINFO \S+\.py:\d+ --", console), console[-3000:]
    assert "TensorBoard: tensorboard --logdir" in console


@pytest.mark.slow
def test_a_sweeps_trials_are_tracker_runs_grouped_under_the_sweep(
    ray_address: str, tmp_path: Path, offline_trackers: None
) -> None:
    from mlflow.tracking import MlflowClient

    results = tmp_path / "results"
    proc = run_train(
        "-m",
        "search=random",
        "search.num_samples=1",
        "search.max_concurrent_trials=1",  # both trials in one reused process, one after the other
        "optimizer.lr=0.01,0.003",
        "trainer.max_epochs=2",
        "logger=[mlflow,wandb]",
        f"paths.results_dir={results}",
        f"hydra.sweep.dir={results / 'sweeps' / 'lr'}",
        ray_address=ray_address,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, failure(proc)
    # MLflow's local store in the results folder: an experiment named after the sweep's folder,
    # one finished run per trial, tagged with its values.
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweeps/lr")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.data.tags["optimizer.lr"] for run in runs) == ["0.003", "0.01"]
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert sorted(run.info.run_name for run in runs) == ["sweeps/lr/0", "sweeps/lr/1"]
    for run in runs:
        assert run.data.params["optimizer.lr"] == run.data.tags["optimizer.lr"]
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2
    # W&B: one offline run per trial, in the trial's folder, grouped under the sweep.
    for trial in ("0", "1"):
        (wandb_file,) = (results / "sweeps" / "lr" / trial / "wandb").glob("offline-run-*/*.wandb")
        records = wandb_records(wandb_file)
        (run_record,) = [record.run for record in records if record.HasField("run")]
        assert run_record.run_group == "sweeps/lr"
        assert any(tag.startswith("optimizer.lr=") for tag in run_record.tags)
        assert records[-1].WhichOneof("record_type") == "exit"


@pytest.mark.slow
def test_a_run_started_again_in_its_folder_continues_its_tracker_runs(
    ray_address: str, tmp_path: Path, offline_trackers: None
) -> None:
    from mlflow.tracking import MlflowClient

    results = tmp_path / "results"
    for epochs in (1, 2):  # the second run resumes the first from its checkpoint
        proc = run_train(
            "logger=[mlflow,wandb]",
            f"trainer.max_epochs={epochs}",
            f"paths.results_dir={results}",
            "hydra.run.dir=results/runs/again",
            ray_address=ray_address,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, failure(proc)
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("{{ cookiecutter.package_name }}")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert len(history) == 2  # epoch 1 from the first run, epoch 2 from the second
    # MLflow keeps a param's first value: what the second run changed is a tag.
    assert run.data.params["trainer.max_epochs"] == "1"
    assert run.data.tags["changed.trainer.max_epochs"] == "2"
    files = sorted((results / "runs" / "again" / "wandb").glob("offline-run-*/*.wandb"))
    assert len(files) == 2
    ids = {
        record.run.run_id for f in files for record in wandb_records(f) if record.HasField("run")
    }
    assert len(ids) == 1  # one W&B run, written twice


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert server.poll() is None, "the mlflow server exited"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no answer from {url} in {seconds} s")


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file (run-*.wandb), in order. The file is
    LevelDB's log format after a 7-byte header: 32 KiB blocks of records, each with a 7-byte
    header (checksum, length, type) and whole (type 1) or in pieces (first 2, middle 3, last 4).
    """
    from wandb.proto import wandb_internal_pb2

    block, header = 32768, 7
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pieces, offset = [], b"", header
    while offset + header <= len(data):
        left = block - offset % block
        if left < header:  # a block's last bytes are padding
            offset += left
            continue
        length, kind = struct.unpack("<HB", data[offset + 4 : offset + header])
        pieces += data[offset + header : offset + header + length]
        offset += header + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records
