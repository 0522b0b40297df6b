"""Bad config values stop `train.py` before Ray starts, with one clear line per problem."""

import re

import pytest
import torch
from hydra.errors import CompactHydraException

from {{ cookiecutter.package_name }}.checkpoints import CheckpointError
from {{ cookiecutter.package_name }}.config import ConfigError, validate

from .conftest import compose_config, run_train

BAD = [
    (["optimizer.lr=-0.1"], "optimizer.lr must be a number above 0, got -0.1"),
    (["optimizer.lr=fast"], "optimizer.lr must be a number above 0, got 'fast'"),
    (["scaling.num_workers=-1"], "scaling.num_workers must be at least 1, or 0 for one process"),
    (
        ["scaling=local", "fault_tolerance.max_failures=2"],
        "fault_tolerance.max_failures=2 restarts a worker group, and scaling=local",
    ),
    (["scaling.num_workers=two"], "scaling: Value 'two' of type 'str' could not be converted"),
    (["data.batch_size=0"], "data.batch_size must be an integer of at least 1, got 0"),
    (["data.val_fraction=1.5"], "data.val_fraction must be a number between 0 and 1"),
    (
        ["data.val_fraction=0.5", "data.test_fraction=0.5"],
        "data.test_fraction=0.5 and data.val_fraction=0.5 leave no rows to train on",
    ),
    (["trainer.max_epochs=0"], "trainer.max_epochs must be an integer of at least 1, got 0"),
    (["trainer.max_epochs=ten"], "trainer.max_epochs must be an integer of at least 1"),
    (["checkpoint.mode=best"], "checkpoint.mode must be min or max, got 'best'"),
    (["checkpoint.every_n_epochs=0"], "checkpoint.every_n_epochs must be at least 1, got 0"),
    (["+scaling.gpus=2"], "scaling: Key 'gpus' not in 'ScalingSchema'"),
    (["+model.hiden_dim=64"], "model.hiden_dim is not a parameter of"),
    (["+optimizer.momentun=0.9"], "optimizer.momentun is not a parameter of torch.optim.Adam"),
    (["model.dropout=lots"], "model.dropout must be a number in [0, 1), got 'lots'"),
    (["model.hidden_dim=???"], "model.hidden_dim is mandatory (???)"),
    (["search=asha", "search.shuffle_grid=maybe"], "search.shuffle_grid must be true or false"),
    (["checkpoint.metric=val_accuracy"], "checkpoint.metric must be a metric every epoch reports"),
    (["search=asha", "search.metric=val_accc"], "search.metric must be a metric every epoch"),
    (
        ["callbacks=early_stopping", "callbacks.early_stopping.monitor=val_los"],
        "callbacks.early_stopping.monitor must be a metric every epoch reports",
    ),
    (
        ["callbacks=early_stopping", "+callbacks.early_stopping.patiense=5"],
        "callbacks.early_stopping.patiense is not a parameter of",
    ),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=lambda v: str(v)[:40])
def test_bad_value_gives_one_clear_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        validate(compose_config(*overrides))
    assert "1 problem(s)" in str(raised.value)


def test_all_problems_are_listed_together() -> None:
    cfg = compose_config("optimizer.lr=0", "data.batch_size=0", "scaling.num_workers=-1")
    with pytest.raises(ConfigError, match=r"3 problem\(s\)"):
        validate(cfg)


@pytest.mark.parametrize(
    "group",
    [
        "model=cnn",
        "optimizer=sgd",
        "search=asha",
        "search=optuna",
        "search=pbt",
        "data=synthetic",
        "experiment=example",
        "callbacks=early_stopping",
    ],
)
def test_shipped_configs_are_valid(group: str) -> None:
    validate(compose_config(group))


def test_train_py_stops_before_ray_starts(tmp_path) -> None:
    # In a folder named by its overrides (paths=by_overrides), as `python train.py` makes it.
    results = [f"paths.results_dir={tmp_path}", "paths=by_overrides"]
    proc = run_train("optimizer.lr=-1", *results, ray_address="", timeout=120)
    assert proc.returncode != 0
    # The problems alone, once, without a traceback, and Ray never started.
    problem = "Invalid config (1 problem(s)):\n  - optimizer.lr must be a number above 0, got -1"
    assert proc.stderr.count(problem) == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr
    # The run's own log keeps the error, with its traceback.
    (log,) = (tmp_path / "runs" / "optimizer.lr=-1").glob("*/*/train.log")
    kept = log.read_text()
    assert "The run failed" in kept and "Traceback (most recent call last)" in kept
    assert problem in kept


# What the command line names but is not there: each stops train.py before Ray starts.
NOT_THERE = [
    (["data=csv", "data.source.path=no/such.csv"], "no/such.csv does not exist"),
    (["-m", "search=asha", "search.resume=true"], "there is no Ray Tune sweep to resume in"),
    # A cluster started here would have this machine's CPUs only: said before it starts.
    (["scaling=4gpu"], "scaling=4gpu asks for 4 GPUs (4 workers x 1 GPU); this machine has 0 GPUs"),
    (["-m", "search=asha", "scaling=8gpu"], "scaling=8gpu asks for 8 GPUs"),
    # The cluster the project names is down (port 9: nothing listens there).
    (
        ["ray.address=ray://127.0.0.1:9"],
        "No Ray cluster answers at ray://127.0.0.1:9 (from ray.address)",
    ),
]


@pytest.mark.parametrize("overrides,message", NOT_THERE, ids=lambda v: str(v)[:40])
def test_missing_file_or_folder_stops_train_py_in_one_message(
    overrides: list[str], message: str, tmp_path
) -> None:
    folders = [f"hydra.run.dir={tmp_path}", f"hydra.sweep.dir={tmp_path}"]
    proc = run_train(*overrides, *folders, ray_address="", timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Starting a local Ray cluster" not in proc.stdout + proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "overrides,error,message",
    [
        (["predict=batch"], ConfigError, "predict.checkpoint is mandatory"),
        (["predict=batch", "predict.checkpoint=no/such/run"], CheckpointError, "does not exist"),
    ],
)
def test_batch_prediction_checks_its_checkpoint_before_ray_starts(
    overrides: list[str], error: type, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from {{ cookiecutter.package_name }}.data import prediction

    def connect(*args: object) -> None:
        pytest.fail("prediction connected to Ray before checking its checkpoint")

    monkeypatch.setattr(prediction.cluster, "connect", connect)
    assert issubclass(error, CompactHydraException)  # printed without a traceback, as above
    with pytest.raises(error, match=re.escape(message)):
        prediction.predict(compose_config(*overrides))


def test_a_model_that_cannot_take_the_data_is_refused_before_any_worker_starts() -> None:
    from hydra.errors import InstantiationException

    from {{ cookiecutter.package_name }}.training.run import check_model

    cnn = compose_config("model=cnn").model
    check_model(cnn, (1, 8, 8), 10)  # the digits
    check_model(compose_config("model=mlp").model, (32,), 10)
    with pytest.raises(InstantiationException, match="model=cnn needs image inputs"):
        check_model(cnn, (32,), 10)
    cnn.num_blocks = 5  # four 2x2 poolings shrink 8x8 to nothing
    with pytest.raises(ConfigError, match=r"cannot take this data's inputs, shaped \(1, 8, 8\)"):
        check_model(cnn, (1, 8, 8), 10)
    check_model(cnn, (1, 8, 8), 10, forward=False)  # GPU workers: their kernels may need CUDA
    cnn.channels = 128  # 25M parameters: only built on the meta device, never run
    check_model(cnn, (1, 8, 8), 10)


def test_unknown_key_on_the_command_line_is_hydras_error(tmp_path) -> None:
    proc = run_train("model.hiden_dim=64", f"hydra.run.dir={tmp_path}", ray_address="", timeout=60)
    assert proc.returncode != 0
    assert "Could not override 'model.hiden_dim'" in proc.stderr


def test_missing_corrupt_or_finished_resume_checkpoint_is_named(tmp_path) -> None:
    from {{ cookiecutter.package_name }}.training.run import build_trainer, trained_epochs

    with pytest.raises(CheckpointError, match="resume_from=.*nope.ckpt: no such checkpoint"):
        trained_epochs(str(tmp_path / "nope.ckpt"))
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt.ckpt is not a readable checkpoint"):
        trained_epochs(str(corrupt))
    finished = tmp_path / "finished.ckpt"
    torch.save({"epoch": 2, "state_dict": {}}, finished)  # the end of its third epoch
    assert trained_epochs(str(finished)) == 3
    cfg = compose_config("trainer.max_epochs=3", f"resume_from={finished}")
    with pytest.raises(ConfigError, match="has trained 3 epochs and trainer.max_epochs=3"):
        build_trainer(cfg)
