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
import ray
import yaml

from {{ cookiecutter.package_name }}.config import ConfigError, validate
from {{ cookiecutter.package_name }}.training import tracker_env
from {{ cookiecutter.package_name }}.training.loggers import check_trackers, run_status

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


def test_an_online_wandb_run_whose_host_answers_nowhere_stops_before_ray(
    monkeypatch: pytest.MonkeyPatch, offline_trackers: None
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", "dummy")  # online
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # port 9: nothing listens
    with pytest.raises(ConfigError) as error:
        check_trackers(compose_config("logger=wandb"))
    assert str(error.value).startswith(
        "logger.wandb: the W&B server at http://127.0.0.1:9 cannot be reached ("
    )
    assert "\n" not in str(error.value)
    check_trackers(compose_config("logger=wandb", "logger.wandb.offline=true"))  # not asked
    monkeypatch.delenv("WANDB_API_KEY")
    check_trackers(compose_config("logger=wandb"))  # offline without a key


def test_how_a_run_ended_is_its_tracker_runs_status() -> None:
    assert run_status(None) == "FINISHED"
    assert run_status(SystemExit(0)) == "FINISHED"  # Tune stopping a trial (ASHA)
    assert run_status(SystemExit(1)) == "KILLED"  # Ctrl-C, as Lightning re-raises it
    assert run_status(KeyboardInterrupt()) == "KILLED"
    assert run_status(RuntimeError("boom")) == "FAILED"


def test_the_trackers_variables_set_here_are_the_ones_sent_to_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in tracker_env.NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "key")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "password")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "")  # set but empty: nothing to send
    monkeypatch.setenv("HOME_SECRET", "not a tracker's")
    assert tracker_env.current() == {"WANDB_API_KEY": "key", "MLFLOW_TRACKING_PASSWORD": "password"}


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
        # A credential that only train.py is given (the tests' Ray cluster started without it):
        # the worker gets it, and no file of the run or of Ray's holds it.
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET)
        seen = tmp_path / "seen.json"
        proc = run_train(
            "logger=many",
            "scaling=cpu",
            "+callbacks.env._target_=tests.callbacks.TrackerEnvToFile",
            f"+callbacks.env.path={seen}",
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
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # seen on a loaded machine: its workers linger
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    assert json.loads(seen.read_text())["MLFLOW_TRACKING_TOKEN"] == SECRET
    ray_logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    assert not files_containing(SECRET, tmp_path / "results", ray_logs)
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
def test_a_sweeps_trials_are_tracker_runs_grouped_that_end_as_their_trials_end(
    ray_address: str, tmp_path: Path, offline_trackers: None
) -> None:
    from mlflow.tracking import MlflowClient

    results = tmp_path / "results"
    proc = run_train(
        "-m",
        "search=asha",
        "search.shuffle_grid=false",  # in this order: ASHA compares each trial with earlier ones
        "search.num_samples=1",
        "search.max_concurrent_trials=1",  # one trial after the other, in one reused process
        "search.trial_retries=1",
        # 0.01 learns and completes; 1e-6 cannot learn: ASHA stops it after its first epoch;
        # 0.003 learns well enough to go on, and fails at the end of that epoch, twice.
        "optimizer.lr=0.01,1e-6,0.003",
        "+callbacks.fail._target_=tests.callbacks.FailAtEpoch",
        "+callbacks.fail.lr=0.003",
        "trainer.max_epochs=2",
        "logger=[mlflow,wandb]",
        f"paths.results_dir={results}",
        f"hydra.sweep.dir={results / 'sweeps' / 'lr'}",
        ray_address=ray_address,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, failure(proc)
    assert "3 trials (1 completed, 1 stopped early, 1 error)" in proc.stdout, proc.stdout[-3000:]
    # MLflow's local store in the results folder: an experiment named after the sweep's folder,
    # one run per trial (the retried trial's attempts in one), tagged with its values, ended as
    # the trial ended: stopped by ASHA is finished, at the epoch it reached.
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweeps/lr")
    found = client.search_runs([experiment.experiment_id])
    runs = {run.data.tags["optimizer.lr"]: run for run in found}
    assert {lr: run.info.status for lr, run in runs.items()} == {
        "0.01": "FINISHED",
        "1e-06": "FINISHED",
        "0.003": "FAILED",
    }
    last_epoch = {
        lr: client.get_metric_history(run.info.run_id, "epoch")[-1].value
        for lr, run in runs.items()
    }
    assert last_epoch == {"0.01": 2, "1e-06": 1, "0.003": 1}  # epochs completed
    assert sorted(run.info.run_name for run in runs.values()) == [
        "sweeps/lr/0", "sweeps/lr/1", "sweeps/lr/2"
    ]  # fmt: skip
    for run in runs.values():
        assert run.data.params["optimizer.lr"] == run.data.tags["optimizer.lr"]
    assert len(client.get_metric_history(runs["0.01"].info.run_id, "val_loss")) == 2
    # W&B: one offline run per trial, in the trial's folder, grouped under the sweep; its exit
    # code says how it ended (0: finished, also when stopped). The retried trial wrote its run
    # twice, failed both times.
    exit_codes = {}
    for trial in ("0", "1", "2"):
        files = sorted((results / "sweeps" / "lr" / trial / "wandb").glob("offline-run-*/*.wandb"))
        records = [record for path in files for record in wandb_records(path)]
        (run_record, *again) = [record.run for record in records if record.HasField("run")]
        assert run_record.run_group == "sweeps/lr"
        assert any(tag.startswith("optimizer.lr=") for tag in run_record.tags)
        assert all(record.run_id == run_record.run_id for record in again)
        exit_codes[trial] = [record.exit.exit_code for record in records if record.HasField("exit")]
    assert exit_codes == {"0": [0], "1": [0], "2": [1, 1]}


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


SECRET = "dummy-secret-3b9f0c"


def files_containing(text: str, *folders: Path) -> list[Path]:
    return [
        path
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file() and text.encode() in path.read_bytes()
    ]


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
