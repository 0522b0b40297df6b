"""Serving: request checks and checkpoint loading in-process, then the real thing end to end.

The end-to-end tests run `python train.py serve=local ...` as a user would (train one epoch,
then serve over real HTTP on the shared Ray cluster), and stop it with Ctrl-C.
"""

import asyncio
import json
import math
import os
import pickle
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from pyarrow.fs import LocalFileSystem
from ray import serve
from ray.serve.schema import ServeDeploySchema

from {{ cookiecutter.package_name }} import checkpoints as checkpoint_module
from {{ cookiecutter.package_name }}.checkpoints import (
    PROJECT_KEY,
    CheckpointError,
    load,
    project_state,
    resolve,
)
from {{ cookiecutter.package_name }}.data import DigitsSource, Transform
from {{ cookiecutter.package_name }}.data.preprocessing import inputs_from_state
from {{ cookiecutter.package_name }}.serving import launch
from {{ cookiecutter.package_name }}.serving.app import AppArgs, build_app
from {{ cookiecutter.package_name }}.serving.ingress import (
    haproxy_binary,
    haproxy_dir,
    prepare_haproxy_dir,
    stop_orphaned_haproxy,
)
from {{ cookiecutter.package_name }}.serving.inputs import InvalidInput, check_finite, to_features
from {{ cookiecutter.package_name }}.serving.launch import (
    IMPORT_PATH,
    app_args,
    serve_checkpoint,
    serve_config,
)
from {{ cookiecutter.package_name }}.tasks import Classification
from {{ cookiecutter.package_name }}.training.worker import build_module

from .conftest import PROJECT_ROOT, compose_config

IMAGE = (1, 8, 8)
# The digits' inputs as training saves them: 64 feature columns, standardised, as 1x8x8 images.
COLUMNS = tuple(f"pixel_{i}" for i in range(64))
TRANSFORM = Transform(COLUMNS, IMAGE, mean=(0.25,) * 64, std=(0.5,) * 64)


# ---- Request checks ---------------------------------------------------------------------------


def test_rows_may_be_flat_or_nested_as_the_input_shape() -> None:
    flat = [float(i) for i in range(64)]
    nested = [[[float(8 * r + c) for c in range(8)] for r in range(8)]]
    features = to_features([flat, nested, [1] * 64], TRANSFORM.raw_shapes, max_rows=8)
    assert features.shape == (3, 64) and features.dtype == np.float64
    assert features[0].tolist() == features[1].tolist() == flat


@pytest.mark.parametrize(
    "rows,message,status",
    [
        ([], "empty", 422),
        ([[0.0] * 63], r"inputs\[0\] should be a list of 64, got a list of 63", 422),
        ([[0.0] * 64, [[[0.0] * 8] * 7 + [[0.0] * 7]]], r"inputs\[1\]\[0\]\[7\] should be", 422),
        ([[0.0] * 63 + ["1"]], r"inputs\[0\]\[63\] is '1', not a number", 422),
        ([[True] + [0.0] * 63], "not a number", 422),
        ([[None] * 64], "not a number", 422),
        ([[math.nan] + [0.0] * 63], "not a finite number", 422),
        ([[0.0] * 63 + [-math.inf]], "not a finite number", 422),
        ([[10**400] + [0] * 63], "not a finite number", 422),
        ([[0.0] * 64] * 9, "at most 8 per request", 413),
    ],
)
def test_bad_rows_say_what_is_wrong(rows: list, message: str, status: int) -> None:
    with pytest.raises(InvalidInput, match=message) as error:
        to_features(rows, TRANSFORM.raw_shapes, max_rows=8)
    assert error.value.status_code == status


def test_values_that_overflow_after_preprocessing_are_refused() -> None:
    check_finite(np.zeros((2, 1, 8, 8), dtype=np.float32))
    batch = np.zeros((2, 1, 8, 8), dtype=np.float32)
    batch[1, 0, 3, 3] = np.inf
    with pytest.raises(InvalidInput, match=r"inputs\[1\] holds values too large"):
        check_finite(batch)


# ---- Checkpoints -------------------------------------------------------------------------------


def classifier(*overrides: str) -> torch.nn.Module:
    """The LightningModule training builds for the digits' ten classes (TaskModule)."""
    module, kind = build_module(compose_config(*overrides), Classification(10), IMAGE)
    assert kind == "network"
    return module


def save_checkpoint(path: Path, *overrides: str, before_tasks: bool = False) -> Path:
    """A checkpoint in the layout training writes: weights, and the project state (model config,
    task, input transform). `before_tasks`: the layout of checkpoints written before tasks
    existed, the network's `architecture` in hyper_parameters and the transform under `data`."""
    module = classifier(*overrides)
    model_config = OmegaConf.to_container(compose_config(*overrides).model, resolve=True)
    if before_tasks:
        transform = {key: value for key, value in TRANSFORM.state().items() if key != "kind"}
        architecture = {"model": model_config, "input_shape": list(IMAGE), "num_classes": 10}
        state = {
            "hyper_parameters": {"architecture": architecture},
            "data": {**transform, "label_column": "label", "num_classes": 10},
        }
    else:
        inputs = {**TRANSFORM.state(), "label_column": "label"}
        task = Classification(10).state()
        state = {PROJECT_KEY: project_state(model_config, "network", IMAGE, 10, task, inputs)}
    checkpoint = {"state_dict": module.state_dict(), **state}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("before_tasks", [False, True], ids=["project state", "before tasks"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_checkpoint_rebuilds_the_trained_network(
    tmp_path: Path, model: str, before_tasks: bool
) -> None:
    file = save_checkpoint(
        tmp_path / "checkpoint.ckpt", f"model={model}", before_tasks=before_tasks
    )
    loaded = load(file)
    saved = torch.load(file, weights_only=True)
    module = classifier(f"model={model}")
    module.load_state_dict(saved["state_dict"])
    inputs = torch.randn(5, *IMAGE)
    logits = module.eval()(inputs)
    assert torch.equal(loaded.model(inputs), logits)
    assert loaded.model_name == model.upper()
    assert loaded.input_shape == IMAGE
    assert isinstance(loaded.task, Classification) and loaded.task.num_outputs == 10
    assert loaded.transform == TRANSFORM
    predicted = loaded.predict(inputs)
    assert sorted(predicted) == ["prediction", "probabilities"]
    assert torch.allclose(predicted["probabilities"], torch.softmax(logits, dim=1))
    assert torch.equal(predicted["prediction"], logits.argmax(dim=1))


def test_a_cnn_checkpoint_from_before_pooled_size_still_loads(tmp_path: Path) -> None:
    # That CNN averaged its last features over the whole image (pooled_size 1), and its saved
    # model config has no pooled_size. Such checkpoints were written before tasks existed.
    file = save_checkpoint(
        tmp_path / "checkpoint.ckpt", "model=cnn", "model.pooled_size=1", before_tasks=True
    )
    saved = torch.load(file, weights_only=True)
    del saved["hyper_parameters"]["architecture"]["model"]["pooled_size"]
    torch.save(saved, file)
    head = load(file).model[-1]
    assert head.in_features == 64  # the last block's 64 channels, one average each


def test_checkpoint_found_from_file_checkpoint_folder_or_run_folder(tmp_path: Path) -> None:
    file = save_checkpoint(tmp_path / "run" / "ray_train" / "checkpoint_1" / "checkpoint.ckpt")
    run = tmp_path / "run"
    (run / "result.json").write_text(json.dumps({"best_checkpoint": str(file.parent)}))
    assert resolve(file) == resolve(file.parent) == resolve(run) == str(file)
    # A run whose checkpoints were not ranked stands for its latest one.
    summary = {"best_checkpoint": None, "latest_checkpoint": str(file.parent)}
    (run / "result.json").write_text(json.dumps(summary))
    assert resolve(run) == str(file)
    (run / "result.json").write_text(json.dumps({"best_checkpoint": None}))
    with pytest.raises(CheckpointError, match="names no checkpoint"):
        resolve(run)


def test_checkpoint_in_cloud_storage_is_read_through_its_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = save_checkpoint(tmp_path / "bucket" / "checkpoint_1" / "checkpoint.ckpt")

    class BucketOnDisk:
        """s3://bucket/... read from tmp_path/bucket/... through pyarrow's local filesystem."""

        @staticmethod
        def from_uri(uri: str) -> tuple[LocalFileSystem, str]:
            return LocalFileSystem(), str(tmp_path / uri.removeprefix("s3://"))

    monkeypatch.setattr(checkpoint_module, "FileSystem", BucketOnDisk)
    assert resolve("s3://bucket/checkpoint_1") == "s3://bucket/checkpoint_1/checkpoint.ckpt"
    loaded = load("s3://bucket/checkpoint_1/")
    assert loaded.path == "s3://bucket/checkpoint_1/checkpoint.ckpt"
    assert torch.equal(loaded.model[1].weight, load(file).model[1].weight)
    with pytest.raises(CheckpointError, match="Checkpoint not found: s3://bucket/nothing"):
        load("s3://bucket/nothing")


@pytest.mark.parametrize(
    "content,message",
    [
        (None, "Checkpoint not found"),
        (b"not a checkpoint at all", "Cannot read checkpoint"),
        # A pickled object would run code when unpickled; weights_only refuses it.
        (pickle.dumps(Path("/"), protocol=2), "Cannot read checkpoint"),
        ({"weights": 1}, "not a Lightning checkpoint"),
        ({"state_dict": {}}, "does not say how to rebuild its model"),
    ],
    ids=["missing", "garbage", "pickled object", "not lightning", "no project state"],
)
def test_unusable_checkpoints_fail_with_clear_message(
    tmp_path: Path, content: object, message: str
) -> None:
    file = tmp_path / "checkpoint.ckpt"
    if isinstance(content, bytes):
        file.write_bytes(content)
    elif content is not None:
        torch.save(content, file)
    with pytest.raises(CheckpointError, match=message):
        load(file)


@pytest.mark.parametrize("before_tasks", [False, True], ids=["project state", "before tasks"])
def test_checkpoint_cannot_name_code_outside_the_models_package(
    tmp_path: Path, before_tasks: bool
) -> None:
    file = save_checkpoint(tmp_path / "checkpoint.ckpt", before_tasks=before_tasks)
    saved = torch.load(file, weights_only=True)
    if before_tasks:
        saved["hyper_parameters"]["architecture"]["model"] = {"_target_": "os.system"}
    else:
        saved[PROJECT_KEY]["model"] = {"_target_": "os.system"}
    torch.save(saved, file)
    with pytest.raises(CheckpointError, match="only builds models from"):
        load(file)


class RunsCode:
    """Unpickling this runs code: it writes a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "code ran"))


def test_resuming_never_unpickles_code_from_a_checkpoint(tmp_path: Path) -> None:
    """Ray Train's checkpoint goes to Lightning's fit(ckpt_path=...), which loads it as here:
    with torch's weights_only=True (the default of the torch and Lightning the project allows),
    so a checkpoint tampered with in its bucket is refused, not run."""
    from lightning.pytorch import Trainer

    marker = tmp_path / "marker"
    file = save_checkpoint(tmp_path / "checkpoint.ckpt")
    tampered = {**torch.load(file, weights_only=True), "callbacks": RunsCode(marker)}
    torch.save(tampered, file)
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        trainer.strategy.load_checkpoint(file)  # fit(ckpt_path=file) -> resume_start
    assert not marker.exists()


def test_folder_without_checkpoint_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="neither checkpoint.ckpt nor result.json"):
        resolve(tmp_path)


def test_serve_only_without_ckpt_path_says_what_to_pass() -> None:
    cfg = compose_config("serve=local", "serve.only=true")
    with pytest.raises(CheckpointError, match=r"pass ckpt_path="):
        serve_checkpoint(cfg, cfg.ckpt_path)


# ---- The Serve application and its config file -------------------------------------------------


@pytest.mark.parametrize("option", ["local", "autoscaling"])
def test_serve_config_file_is_valid_for_serve_run(tmp_path: Path, option: str) -> None:
    cfg = compose_config(f"serve={option}")
    args = app_args(cfg.serve, str(save_checkpoint(tmp_path / "checkpoint.ckpt")))
    config = serve_config(cfg.serve, args)
    ServeDeploySchema.parse_obj(yaml.safe_load(yaml.safe_dump(config)))  # Ray's own check
    application = config["applications"][0]
    assert application["import_path"] == "{{ cookiecutter.package_name }}.serving.app:build_app"
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8000}
    # What Serve would deploy: the builder's replica settings come from the config group.
    deployment = build_app(application["args"])._bound_deployment
    assert deployment.ray_actor_options["num_cpus"] == cfg.serve.resources_per_replica.CPU
    assert deployment.max_ongoing_requests == cfg.serve.max_ongoing_requests
    if option == "autoscaling":
        assert deployment._deployment_config.autoscaling_config.max_replicas == 4
    else:
        assert deployment.num_replicas == 1


def test_haproxy_setting_reaches_controller_and_replicas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launch, "haproxy_binary", lambda: "/usr/sbin/haproxy")
    for name in ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_HAPROXY_METRICS_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_NBTHREAD", "4")  # the user's own value wins
    monkeypatch.delenv("RAY_SERVE_HAPROXY_SOCKET_PATH", raising=False)
    assert compose_config("serve=local").serve.haproxy is False  # not by default (README)
    cfg = compose_config("serve=local", "serve.haproxy=true")
    args = app_args(cfg.serve, str(save_checkpoint(tmp_path / "checkpoint.ckpt")))
    config = serve_config(cfg.serve, args)
    ServeDeploySchema.parse_obj(yaml.safe_load(yaml.safe_dump(config)))
    controller = config["controller_options"]["runtime_env"]["env_vars"]
    # HAProxy's admin socket and config go to this user's private folder, not /tmp/haproxy-serve.
    assert controller["RAY_SERVE_HAPROXY_SOCKET_PATH"] == str(haproxy_dir() / "admin.sock")
    replica = build_app(args)._bound_deployment.ray_actor_options["runtime_env"]["env_vars"]
    for env in (controller, replica):
        assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
        assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"
        assert "RAY_SERVE_HAPROXY_NBTHREAD" not in env
    assert replica["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"


def test_without_haproxy_binary_serve_uses_its_python_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(launch, "haproxy_binary", lambda: None)
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY", raising=False)
    cfg = compose_config("serve=local", "serve.haproxy=true")
    args = app_args(cfg.serve, str(save_checkpoint(tmp_path / "checkpoint.ckpt")))
    assert args["haproxy"] is False
    assert "Ray has no HAProxy binary here" in caplog.text
    assert "controller_options" not in serve_config(cfg.serve, args)
    replica = build_app(args)._bound_deployment.ray_actor_options["runtime_env"]["env_vars"]
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in replica


def start_haproxy(binary: str, folder: Path) -> subprocess.Popen:
    """Ray's HAProxy as Serve runs it (`-db -f <folder>/haproxy.cfg`), serving a free port."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "haproxy.cfg"
    config.write_text(
        "defaults\n  mode http\n  timeout connect 1s\n  timeout client 1s\n  timeout server 1s\n"
        f"frontend left\n  bind 127.0.0.1:{port}\n"
    )
    command = [binary, "-db", "-f", str(config)]
    process = subprocess.Popen(command, cwd=folder, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not listening(port):  # it started
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.1)
    return process


def test_only_an_haproxy_that_this_projects_serve_left_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = haproxy_binary()
    if binary is None:
        pytest.skip("Ray has no HAProxy binary on this platform")
    folder = haproxy_dir()
    if folder.exists():
        folder.chmod(0o755)  # as Ray would have left it: prepare_haproxy_dir makes it private
    assert prepare_haproxy_dir() == folder and stat.S_IMODE(folder.stat().st_mode) == 0o700
    # Run from a folder that is then deleted (a shell left in a removed run folder).
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    node = folder / "node-of-a-killed-serve"  # Ray's per-node subfolder
    processes = []
    try:
        # This project's HAProxy, its parent not a Serve HAProxyManager: its Serve was killed.
        processes.append(left := start_haproxy(binary, node))
        # The same binary with another config (the system's, another project's): not ours.
        processes.append(theirs := start_haproxy(binary, tmp_path / "theirs"))
        processes.append(other := subprocess.Popen(["sleep", "60"], cwd=tmp_path))  # a bare name
        assert stop_orphaned_haproxy() == [left.pid]
        assert left.wait(timeout=10) is not None
        assert theirs.poll() is None and other.poll() is None
    finally:
        for process in processes:
            process.kill()
            process.wait()
            if process.stderr:
                process.stderr.close()
        shutil.rmtree(node, ignore_errors=True)


def test_app_args_refuse_typos_and_two_ways_to_scale() -> None:
    with pytest.raises(ValueError, match="max_batch_sise"):
        AppArgs.model_validate({"checkpoint_path": "x", "max_batch_sise": 8})
    with pytest.raises(ValueError, match="exactly one of num_replicas and autoscaling"):
        AppArgs.model_validate({"checkpoint_path": "x", "autoscaling": {"max_replicas": 2}})


def test_kuberay_manifest_uses_this_builder_and_its_args() -> None:
    manifest = yaml.safe_load((PROJECT_ROOT / "deploy/kuberay/rayservice.yaml").read_text())
    application = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]
    assert application["import_path"] == IMPORT_PATH
    AppArgs.model_validate(application["args"])


# ---- End to end: train, serve, query over HTTP, Ctrl-C -----------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class ServeCommand:
    """`python train.py <overrides>` running in the background, as a researcher would run it."""

    def __init__(self, *overrides: str, run_dir: Path, ray_address: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.run_dir = run_dir
        self.log_file = run_dir.parent / f"{run_dir.name}.log"
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        overrides += (f"serve.port={self.port}", f"hydra.run.dir={run_dir}")
        env = {**os.environ, "RAY_ADDRESS": ray_address, "HYDRA_FULL_ERROR": "0"}
        with self.log_file.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "train.py", *overrides],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def log(self) -> str:
        return self.log_file.read_text()

    def wait_until_healthy(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"exited with {self.process.returncode}:\n{self.log[-5000:]}")
            try:
                healthy = httpx.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                healthy = False
            # Replicas answer a little before the command has finished starting up.
            if healthy and "Press Ctrl-C to stop" in self.log:
                return
            time.sleep(1)
        self.stop()
        pytest.fail(f"not healthy after {timeout} s:\n{self.log[-5000:]}")

    def stop(self, signum: int = signal.SIGINT) -> int:
        """Ctrl-C (or another signal), then wait for the command to exit."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


MAX_REQUEST_BYTES = 65536


@pytest.fixture(scope="module")
def served(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeCommand]:
    """Train one epoch, then serve the best checkpoint."""
    command = ServeCommand(
        "serve=local",
        "trainer.max_epochs=1",
        "serve.max_rows_per_request=16",
        f"serve.max_request_bytes={MAX_REQUEST_BYTES}",
        run_dir=tmp_path_factory.mktemp("serve") / "run",
        ray_address=ray_address,
    )
    command.wait_until_healthy()
    yield command
    command.stop()
    # Leave the shared test cluster as it was: no Serve replica keeps holding a CPU that later
    # tests (sweeps) count on.
    serve.shutdown()


def expected_probabilities(run_dir: Path, rows: np.ndarray) -> torch.Tensor:
    """The trained model's own output for `rows`, computed here without the server."""
    best = json.loads((run_dir / "result.json").read_text())["best_checkpoint"]
    checkpoint = torch.load(Path(best) / "checkpoint.ckpt", weights_only=True)
    module = classifier()
    module.load_state_dict(checkpoint["state_dict"])
    inputs = torch.from_numpy(inputs_from_state(checkpoint[PROJECT_KEY]["inputs"])(rows))
    with torch.inference_mode():
        return torch.softmax(module.eval()(inputs), dim=1)


def digit_rows(count: int) -> np.ndarray:
    frame = DigitsSource().frame()
    return frame[[f"pixel_{i}" for i in range(64)]].to_numpy()[:count]


@pytest.mark.slow
def test_predict_returns_the_models_own_predictions(served: ServeCommand) -> None:
    rows = digit_rows(16)
    response = httpx.post(f"{served.url}/predict", json={"inputs": rows.tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = expected_probabilities(served.run_dir, rows)
    assert body["predictions"] == expected.argmax(dim=1).tolist()
    assert torch.allclose(torch.tensor(body["probabilities"]), expected, atol=1e-6)
    nested = rows.reshape(16, *IMAGE)[:2].tolist()
    again = httpx.post(f"{served.url}/predict", json={"inputs": nested}, timeout=30).json()
    assert again["predictions"] == body["predictions"][:2]


def listeners_beyond_loopback(ports: set[int]) -> list[str]:
    """Sockets listening on one of `ports` on an address other than loopback."""
    found = []
    for connection in psutil.net_connections(kind="inet"):
        address = connection.laddr
        if connection.status == psutil.CONN_LISTEN and address and address.port in ports:
            if address.ip not in ("127.0.0.1", "::1"):
                found.append(f"{address.ip}:{address.port} (pid {connection.pid})")
    return found


def haproxy_processes() -> list[psutil.Process]:
    """HAProxy processes that a Serve of this project runs or left (config in haproxy_dir)."""
    folder = str(haproxy_dir())
    return [
        process
        for process in psutil.process_iter(["cmdline"])
        if any(part.startswith(folder) for part in process.info["cmdline"] or [])
        and os.path.basename((process.info["cmdline"] or [""])[0]).startswith("haproxy")
    ]


@pytest.mark.slow
def test_serving_opens_nothing_beyond_loopback_by_default(served: ServeCommand) -> None:
    # serve.host=127.0.0.1: the API, and no HAProxy with its stats (8404) and metrics (9101)
    # ports on every interface.
    assert listeners_beyond_loopback({served.port, 8404, 9101}) == []
    assert not haproxy_processes()
    assert "HAProxy is enabled" not in served.log
    assert httpx.get(f"{served.url}/health", timeout=30).status_code == 200


@pytest.mark.slow
def test_a_body_over_the_limit_is_refused_before_it_is_read(served: ServeCommand) -> None:
    # One valid row, padded past serve.max_request_bytes: refused for its size alone.
    row = json.dumps({"inputs": [[0.5] * 64]})
    body = (row[:-1] + " " * MAX_REQUEST_BYTES + "}").encode()
    headers = {"content-type": "application/json"}
    sized = httpx.post(f"{served.url}/predict", content=body, headers=headers, timeout=30)

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while it streams in
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    streamed = httpx.post(f"{served.url}/predict", content=chunks(), headers=headers, timeout=30)
    for response in (sized, streamed):
        assert response.status_code == 413, response.text
        assert f"at most {MAX_REQUEST_BYTES} bytes" in response.json()["detail"]
    good = httpx.post(f"{served.url}/predict", content=row, headers=headers, timeout=30)
    assert good.status_code == 200, good.text


@pytest.mark.slow
def test_metadata_health_docs_and_serve_config(served: ServeCommand) -> None:
    metadata = httpx.get(f"{served.url}/metadata", timeout=10).json()
    best = json.loads((served.run_dir / "result.json").read_text())["best_checkpoint"]
    assert metadata["checkpoint"] == str(Path(best, "checkpoint.ckpt").resolve())
    assert metadata["model"] == "MLP"
    assert metadata["input_shape"] == list(IMAGE)
    assert metadata["task"] == {"task": "classification", "classes": list(range(10))}
    inputs = metadata["inputs"]
    assert inputs["kind"] == "table" and inputs["shape"] == [64]
    assert inputs["feature_columns"] == list(COLUMNS)
    # The scale the model expects: each feature's mean and spread in the training rows.
    assert len(inputs["training_mean"]) == len(inputs["training_std"]) == 64
    assert 0 <= min(inputs["training_mean"]) and max(inputs["training_mean"]) <= 16
    assert metadata["device"] == "cpu"
    assert metadata["max_rows_per_request"] == 16
    assert metadata["max_request_bytes"] == MAX_REQUEST_BYTES
    assert httpx.get(f"{served.url}/health", timeout=10).json()["status"] == "ok"
    assert "swagger" in httpx.get(f"{served.url}/docs", timeout=10).text.lower()
    paths = httpx.get(f"{served.url}/openapi.json", timeout=10).json()["paths"]
    assert {"/predict", "/predict/image", "/health", "/metadata"} <= set(paths)
    assert f"Serving at {served.url}" in served.log

    config = yaml.safe_load((served.run_dir / "serve_config.yaml").read_text())
    ServeDeploySchema.parse_obj(config)
    assert config["applications"][0]["args"]["checkpoint_path"] == metadata["checkpoint"]
    assert config["http_options"]["port"] == served.port
    # The default path: Serve's Python proxy (serve.haproxy=false).
    assert config["applications"][0]["args"]["haproxy"] is False


BAD_BODIES = {
    "malformed JSON": b'{"inputs": [[0.1, 0.2',
    "not JSON at all": b"inputs=1,2,3",
    "no inputs": b'{"rows": [[0.0]]}',
    "inputs not a list of rows": b'{"inputs": [1, 2, 3]}',
    "row too short": json.dumps({"inputs": [[0.5] * 63]}).encode(),
    "row too long": json.dumps({"inputs": [[0.5] * 65]}).encode(),
    "ragged image": json.dumps({"inputs": [[[[0.5] * 8] * 8, [[0.5] * 7] * 8]]}).encode(),
    "a string": json.dumps({"inputs": [[0.5] * 63 + ["0.5"]]}).encode(),
    "a boolean": json.dumps({"inputs": [[True] + [0.5] * 63]}).encode(),
    "null": json.dumps({"inputs": [[None] * 64]}).encode(),
    "NaN": ("{" + '"inputs": [[NaN' + ", 0.5" * 63 + "]]}").encode(),
    "Infinity": ("{" + '"inputs": [[-Infinity' + ", 0.5" * 63 + "]]}").encode(),
    "beyond float64": ("{" + '"inputs": [[1e999' + ", 0.5" * 63 + "]]}").encode(),
    "overflows float32 once scaled": json.dumps({"inputs": [[1e300] * 64]}).encode(),
    "empty batch": b'{"inputs": []}',
    "more rows than the limit": json.dumps({"inputs": [[0.5] * 64] * 17}).encode(),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_requests_get_4xx_with_message(served: ServeCommand, case: str) -> None:
    response = httpx.post(
        f"{served.url}/predict",
        content=BAD_BODIES[case],
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.json()["detail"], response.text
    # The server keeps serving good requests.
    good = httpx.post(f"{served.url}/predict", json={"inputs": [[0.5] * 64]}, timeout=30)
    assert good.status_code == 200


@pytest.mark.slow
def test_concurrent_requests_all_succeed_and_are_batched(served: ServeCommand) -> None:
    rows = digit_rows(200)
    expected = expected_probabilities(served.run_dir, rows).argmax(dim=1).tolist()
    before = httpx.get(f"{served.url}/health", timeout=10).json()

    async def send_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=served.url, timeout=120, limits=limits) as client:
            return await asyncio.gather(
                *(client.post("/predict", json={"inputs": [row.tolist()]}) for row in rows)
            )

    responses = asyncio.run(send_all())
    assert [response.status_code for response in responses] == [200] * 200
    # One row per request: a row answered with another request's result would show here.
    assert [response.json()["predictions"][0] for response in responses] == expected
    after = httpx.get(f"{served.url}/health", timeout=10).json()
    assert after["requests"] - before["requests"] == 200
    assert after["forward_passes"] - before["forward_passes"] < 200


@pytest.mark.slow
def test_ctrl_c_stops_serve_and_exits_cleanly(served: ServeCommand) -> None:
    assert served.stop() == 0, served.log[-5000:]
    assert "Stopping Serve" in served.log
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{served.url}/health", timeout=5)


def writable_by_others(path: Path) -> bool:
    """Whether users other than its owner may connect to the Unix socket at `path`: it is
    writable by them, and they may enter every folder above it."""
    if not path.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return False
    return all(folder.stat().st_mode & (stat.S_IXGRP | stat.S_IXOTH) for folder in path.parents)


@pytest.mark.slow
def test_serve_only_serves_an_existing_run_without_training_until_sigterm(
    served: ServeCommand, ray_address: str, tmp_path: Path
) -> None:
    served.stop()  # one Serve instance per cluster
    command = ServeCommand(
        "serve=local",
        "serve.only=true",
        f"ckpt_path={served.run_dir}",
        "serve.haproxy=true",  # HAProxy in front of the replicas, the other way in (Linux)
        run_dir=tmp_path / "run",
        ray_address=ray_address,
    )
    with_haproxy = haproxy_binary() is not None
    try:
        command.wait_until_healthy()
        metadata = httpx.get(f"{command.url}/metadata", timeout=10).json()
        rows = digit_rows(4)
        body = httpx.post(f"{command.url}/predict", json={"inputs": rows.tolist()}, timeout=30)
        assert body.json()["predictions"] == (
            expected_probabilities(served.run_dir, rows).argmax(dim=1).tolist()
        )
        running = haproxy_processes()
        assert bool(running) == with_haproxy
        # Its admin socket (`level admin`: it can redirect or stop the backends) lies in this
        # user's private folder: no other user can reach it.
        bound = [
            connection.laddr
            for process in running
            for connection in process.net_connections(kind="unix")
            if connection.laddr
        ]
        assert bool(bound) == with_haproxy
        assert all(path.startswith(f"{haproxy_dir()}/") for path in bound), bound
        sockets = list(haproxy_dir().glob("*/admin.sock"))
        assert bool(sockets) == with_haproxy
        assert [path for path in sockets if writable_by_others(path)] == []
        # It has its HAProxyManager: not taken for one that an earlier Serve left.
        assert stop_orphaned_haproxy() == []
    finally:
        # SIGTERM, as `docker stop` and Kubernetes send it, stops as cleanly as Ctrl-C.
        assert command.stop(signal.SIGTERM) == 0, command.log[-5000:]
    assert "Stopping Serve" in command.log
    assert ("HAProxy is enabled" in command.log) == with_haproxy
    assert metadata["checkpoint"].startswith(str(served.run_dir.resolve()))
    assert not (tmp_path / "run" / "ray_train").exists()  # nothing was trained
    assert (tmp_path / "run" / "serve_config.yaml").is_file()


class ClosedLoopLoad:
    """`connections` clients on this machine, each sending its next request as soon as the
    previous answer arrives, in a thread, until stopped; never more than `max_seconds` or
    `max_requests`. Records each request's latency and whether it failed."""

    def __init__(
        self, url: str, rows: list, connections: int, max_seconds: float, max_requests: int
    ) -> None:
        self.url, self.rows, self.connections = url, rows, connections
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> "ClosedLoopLoad":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.max_seconds + 60)

    async def _client(self, client: httpx.AsyncClient, offset: int, deadline: float) -> None:
        index = offset
        while not self._stop.is_set() and time.monotonic() < deadline:
            if len(self.latencies) + len(self.failures) >= self.max_requests:
                return
            body = {"inputs": [self.rows[index % len(self.rows)]]}
            index += 1
            started = time.monotonic()
            try:
                response = await client.post("/predict", json=body)
            except httpx.HTTPError as error:
                self.failures.append(f"{type(error).__name__}: {error}")
                continue
            if response.status_code == 200:
                self.latencies.append(time.monotonic() - started)
            else:
                self.failures.append(f"{response.status_code}: {response.text[:200]}")

    async def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        limits = httpx.Limits(max_connections=self.connections)
        async with httpx.AsyncClient(base_url=self.url, timeout=60, limits=limits) as client:
            await asyncio.gather(
                *(self._client(client, i * 7, deadline) for i in range(self.connections))
            )

    def summary(self, start: int = 0, stop: int | None = None) -> str:
        """How many requests were answered (the `start`th to the `stop`th), and their median
        and 99th-percentile latencies."""
        latencies = sorted(self.latencies[start:stop]) or [math.nan]
        p50, p99 = (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] for q in (0.5, 0.99)
        )
        return f"{len(latencies)} requests, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"


def running_replicas(app_name: str) -> int:
    """How many replicas of the app's model are running, by Serve's status API."""
    application = serve.status().applications.get(app_name)
    if application is None:
        return 0
    return application.deployments["ModelServer"].replica_states.get("RUNNING", 0)


def wait_for_replicas(app_name: str, done, timeout: float) -> tuple[int, float]:
    """Poll the replica count until `done(count)`; returns it and the seconds it took."""
    started = time.monotonic()
    while True:
        count = running_replicas(app_name)
        if done(count) or time.monotonic() - started > timeout:
            return count, time.monotonic() - started
        time.sleep(0.25)


# serve=autoscaling made to react within seconds: Serve's own delays (30 s up, 600 s down) are
# for production. `metrics_interval_s` (how often load is reported; deprecated in Ray 2.60, but
# still what sets it) defaults to 10 s. Two replicas of one CPU fill the tests' 2-CPU cluster.
QUICK_AUTOSCALING = [
    "serve.autoscaling.max_replicas=2",
    "serve.autoscaling.upscale_delay_s=1",
    "serve.autoscaling.downscale_delay_s=2",
    "serve.autoscaling.look_back_period_s=2",
    "+serve.autoscaling.metrics_interval_s=0.5",
]


@pytest.mark.slow
def test_autoscaling_adds_a_replica_under_load_and_removes_it_after(
    served: ServeCommand, ray_address: str, tmp_path: Path
) -> None:
    served.stop()  # one Serve instance per cluster
    command = ServeCommand(
        "serve=autoscaling",
        "serve.only=true",
        f"ckpt_path={served.run_dir}",
        *QUICK_AUTOSCALING,
        run_dir=tmp_path / "run",
        ray_address=ray_address,
    )
    rows = digit_rows(64).tolist()
    app = "classifier"
    try:
        command.wait_until_healthy()
        assert running_replicas(app) == 1
        # 24 clients at once: three times target_ongoing_requests (8) for one replica.
        with ClosedLoopLoad(command.url, rows, 24, max_seconds=120, max_requests=50_000) as load:
            up, up_s = wait_for_replicas(app, lambda count: count >= 2, timeout=90)
            scaled_at = len(load.latencies)
            time.sleep(5)  # under load with both
        # One client, so that the replica's removal is tried with requests under way.
        with ClosedLoopLoad(command.url, rows, 1, max_seconds=120, max_requests=50_000) as quiet:
            down, down_s = wait_for_replicas(app, lambda count: count <= 1, timeout=90)
        print(  # for the README's figures: pytest -s
            f"autoscaling: 1 -> {up} replicas {up_s:.1f} s into the load (one replica: "
            f"{load.summary(0, scaled_at)}; then "
            f"{up}: {load.summary(scaled_at)}); {up} -> {down} {down_s:.1f} s after it (a "
            f"single client meanwhile: {quiet.summary()})"
        )
    finally:
        assert command.stop() == 0, command.log[-5000:]
    assert up >= 2, f"still {up} replica(s) after 90 s of load"
    assert down == 1, f"still {down} replicas 90 s after the load"
    assert load.failures == [] and quiet.failures == [], (load.failures[:5], quiet.failures[:5])
    assert len(load.latencies) > 0 and len(quiet.latencies) > 0


@pytest.mark.slow
def test_missing_checkpoint_stops_the_command_with_message(
    ray_address: str, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "serve=local",
            "serve.only=true",
            f"ckpt_path={tmp_path / 'nowhere'}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=PROJECT_ROOT,
        env={**os.environ, "RAY_ADDRESS": ray_address, "HYDRA_FULL_ERROR": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert f"Checkpoint not found: {tmp_path / 'nowhere'} does not exist" in proc.stderr
