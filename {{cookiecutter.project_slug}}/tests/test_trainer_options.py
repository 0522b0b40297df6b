"""The Lightning Trainer's own options: each one either works, or is refused before Ray starts
with the setting of the project that owns it; strategy and precision presets; the profiler."""

import re

import pytest

from {{ cookiecutter.package_name }}.config import ConfigError, validate
from {{ cookiecutter.package_name }}.config.validation import (
    SHIPPED_TRAINER_ARGUMENTS,
    TRAINER_OWNERS,
    trainer_arguments,
)
from {{ cookiecutter.package_name }}.training.options import distribution, trainer_options

from .conftest import compose_config, run_train

# (override, the setting that owns it)
OWNED = [
    ("+trainer.devices=2", "scaling.num_workers"),
    ("+trainer.num_nodes=2", "scaling.num_workers"),
    ("+trainer.accelerator=gpu", "scaling.use_gpu"),
    ("+trainer.strategy=fsdp", "scaling.strategy"),
    ("+trainer.plugins=[]", "the scaling preset"),
    ("+trainer.logger=false", "the logger group"),
    ("+trainer.callbacks=[]", "the callbacks group"),
    ("+trainer.enable_checkpointing=false", "checkpoint (checkpoint.every_n_epochs"),
    ("+trainer.default_root_dir=x", "paths"),
]


@pytest.mark.parametrize("override,owner", OWNED, ids=lambda v: v.split("=")[0][:30])
def test_a_trainer_option_the_project_sets_names_its_owner(override: str, owner: str) -> None:
    name = override.split("=")[0].lstrip("+")
    message = f"{name} is set by the project: choose it with {owner}"
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        validate(compose_config(override))
    assert "1 problem(s)" in str(raised.value)


def test_an_unknown_trainer_option_lists_the_trainers_arguments() -> None:
    with pytest.raises(
        ConfigError, match=r"trainer\.max_epoch is not an argument of lightning\.Trainer"
    ):
        validate(compose_config("+trainer.max_epoch=3"))
    with pytest.raises(ConfigError) as raised:
        validate(compose_config("+trainer.max_epoch=3"))
    listed = str(raised.value).split("(it takes: ", 1)[1]
    assert "max_epochs" in listed and "gradient_clip_val" in listed
    assert "devices" not in listed.split(", ")  # what the project owns is not offered


def test_every_owned_and_shipped_option_is_a_trainer_argument() -> None:
    # The table and the shortcut that skips importing Lightning stay in step with Lightning.
    assert set(TRAINER_OWNERS) | set(SHIPPED_TRAINER_ARGUMENTS) <= trainer_arguments()


def test_other_trainer_options_are_passed_through() -> None:
    cfg = compose_config("+trainer.val_check_interval=0.5", "+trainer.min_epochs=1")
    validate(cfg)
    options = trainer_options(cfg)
    assert options["val_check_interval"] == 0.5 and options["min_epochs"] == 1


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_cpu_precisions_are_valid(precision: str) -> None:
    validate(compose_config(f"trainer.precision={precision}"))


@pytest.mark.parametrize("precision", ["16-mixed", "16"])
def test_half_precision_on_cpus_is_refused(precision: str) -> None:
    with pytest.raises(ConfigError, match=rf"trainer\.precision={precision} needs GPUs"):
        validate(compose_config(f"trainer.precision={precision}"))


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed"])
def test_gpu_strategies_compose_on_a_gpu_preset(strategy: str) -> None:
    cfg = compose_config(
        "scaling=4gpu", f"scaling.strategy={strategy}", "trainer.precision=16-mixed"
    )
    assert cfg.scaling.strategy == strategy and cfg.scaling.num_workers == 4
    try:
        validate(cfg)
    except ConfigError as error:  # DeepSpeed is a package of its own: named if missing
        assert strategy == "deepspeed" and "needs the deepspeed package" in str(error)


def test_fsdp_builds_rays_strategy_for_a_worker_group() -> None:
    from ray.train.lightning import RayDDPStrategy, RayFSDPStrategy

    cfg = compose_config("scaling=4gpu", "scaling.strategy=fsdp")
    assert isinstance(distribution(cfg.scaling, 4)["strategy"], RayFSDPStrategy)
    cfg = compose_config("scaling=cpu", "scaling.num_workers=2")
    assert isinstance(distribution(cfg.scaling, 2)["strategy"], RayDDPStrategy)
    assert distribution(cfg.scaling, 1) == {"devices": 1}  # one worker: a plain one-device run


@pytest.mark.parametrize("scaling", ["cpu", "local"])
def test_gpu_strategies_on_cpus_are_refused(scaling: str) -> None:
    with pytest.raises(ConfigError, match=r"scaling\.strategy=fsdp needs GPUs"):
        validate(compose_config(f"scaling={scaling}", "scaling.strategy=fsdp"))
    with pytest.raises(ConfigError, match=r"scaling\.strategy must be one of ddp, fsdp"):
        validate(compose_config("scaling.strategy=horovod"))


def test_profile_writes_into_the_run_folder(tmp_path) -> None:
    cfg = compose_config("debug=profile", output_dir=tmp_path)
    validate(cfg)
    profiler = trainer_options(cfg)["profiler"]
    assert type(profiler).__name__ == "SimpleProfiler"
    assert profiler.dirpath == str(tmp_path) and profiler.filename == "profile"
    cfg = compose_config("debug=profile", "debug.profiler=pytorch", output_dir=tmp_path)
    assert type(trainer_options(cfg)["profiler"]).__name__ == "PyTorchProfiler"


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["+trainer.strategy=ddp"], "trainer.strategy is set by the project"),
        (["scaling=cpu", "scaling.strategy=deepspeed"], "scaling.strategy=deepspeed needs GPUs"),
        (["trainer.precision=16-mixed"], "trainer.precision=16-mixed needs GPUs"),
    ],
    ids=["strategy", "deepspeed", "16-mixed"],
)
def test_train_py_refuses_them_before_ray_starts(tmp_path, overrides, message) -> None:
    proc = run_train(*overrides, f"paths.results_dir={tmp_path}", ray_address="", timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr
