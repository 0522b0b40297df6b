"""Every option of every config group composes, and builds what it describes."""

import os
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from {{ cookiecutter.package_name }}.models import build_model
from {{ cookiecutter.package_name }}.tasks import Classification
from {{ cookiecutter.package_name }}.training.run import scaling_config
from {{ cookiecutter.package_name }}.training.worker import build_module

from .conftest import CONFIG_DIR, compose_config

GROUPS = [
    "model",
    "task",
    "data",
    "optimizer",
    "scheduler",
    "trainer",
    "checkpoint",
    "logger",
    "callbacks",
    "scaling",
    "search",
    "serve",
    "predict",
    "paths",
    "experiment",
    "debug",
]


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group,option", [(group, option) for group in GROUPS for option in options(group)]
)
def test_every_option_composes(group: str, option: str) -> None:
    cfg = compose_config(f"{group}={option}")
    path = CONFIG_DIR / group / f"{option}.yaml"
    source = OmegaConf.load(path)
    source.pop("defaults", None)
    # A `_global_` file (experiment, debug, search) sets keys anywhere; the others fill their group.
    if not path.read_text().startswith("# @package _global_"):
        source = OmegaConf.create({group: source})
    for key, value in source.items():
        if OmegaConf.is_config(value):
            assert OmegaConf.merge(cfg[key], value) == cfg[key], f"{key} not set by {path.name}"
        else:
            assert cfg[key] == value
    # Everything outside Hydra's run-time paths resolves.
    groups = ("model", "task", "data", "optimizer", "scheduler", "trainer", "scaling", "search")
    for key in (*groups, "serve"):
        OmegaConf.to_container(cfg[key], resolve=True)


def test_groups_have_options() -> None:
    for group in GROUPS:
        assert options(group), f"configs/{group}/ has no options"


@pytest.mark.parametrize("preset", options("debug"))
def test_debug_presets_log_within_their_short_epochs(preset: str) -> None:
    # Lightning warns in every such run when an epoch has fewer steps than its logging interval.
    trainer = compose_config(f"debug={preset}").trainer
    steps = trainer.get("overfit_batches") or trainer.limit_train_batches
    assert isinstance(steps, int), "a debug preset caps its batches"
    assert trainer.log_every_n_steps <= steps


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_models_build_for_digits(model: str) -> None:
    import torch

    cfg = compose_config(f"model={model}", "data=digits")
    source = instantiate(cfg.data.source)
    module, kind = build_module(cfg, Classification(source.num_classes), source.input_shape)
    assert kind == "network"  # a plain network, trained by TaskModule for the task
    logits = module(torch.zeros(3, *source.input_shape))
    assert logits.shape == (3, 10)


def test_cnn_on_flat_features_says_why() -> None:
    cfg = compose_config("model=cnn", "data=synthetic")
    with pytest.raises(InstantiationException, match="model=cnn needs image inputs"):
        build_model(cfg.model, (32,), 10)


@pytest.mark.parametrize("preset", options("scaling"))
def test_scaling_presets_map_to_ray(preset: str) -> None:
    cfg = compose_config(f"scaling={preset}")
    scaling = scaling_config(cfg.scaling)
    assert cfg.scaling.name == preset
    assert scaling.num_workers == cfg.scaling.num_workers >= (0 if preset == "local" else 1)
    assert scaling.use_gpu == (preset not in ("cpu", "local"))
    if scaling.use_gpu:
        assert scaling.resources_per_worker["GPU"] == 1


def test_sizes_come_from_config() -> None:
    cfg = compose_config("model=mlp", "model.hidden_dim=17", "model.num_layers=3")
    net = build_module(cfg, Classification(10), (64,))[0].net
    widths = [layer.out_features for layer in net if hasattr(layer, "out_features")]
    assert widths == [17, 17, 17, 10]


def test_experiment_overrides_groups() -> None:
    cfg = compose_config("experiment=example")
    assert cfg.model._target_.endswith("CNN")
    assert cfg.optimizer._target_ == "torch.optim.AdamW"
    assert cfg.model.channels == 16


def run_folder(*overrides: str) -> tuple[str, ...]:
    """The folder `python train.py <overrides>` would run in, as Hydra works it out, in parts."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    hydra_config = HydraConfig.instance()
    before = hydra_config.cfg
    try:
        hydra_config.set_config(cfg)  # as Hydra's run_job does before it makes the folder
        return Path(os.path.normpath(cfg.hydra.run.dir)).parts
    finally:
        hydra_config.cfg = before


def test_run_folders_can_be_named_by_their_overrides() -> None:
    date, time = r"\d{4}-\d\d-\d\d", r"\d\d-\d\d-\d\d"
    where = ["paths.results_dir=results", "paths.storage_path=s3://b/x", "resume_from=last.ckpt"]
    root, runs, *named = run_folder("paths=by_overrides", "model=cnn", "optimizer.lr=0.01", *where)
    # The overrides that say what runs name the folder; those that say where things go do not.
    assert (root, runs) == ("results", "runs")
    assert named[0] == "model=cnn,optimizer.lr=0.01"
    assert re.fullmatch(date, named[1]) and re.fullmatch(time, named[2]), named
    # Without overrides to name it by, and by default: <date>/<time>.
    for overrides in (["paths=by_overrides"], ["model=cnn"]):
        root, runs, *dated = run_folder(*overrides, "paths.results_dir=results")
        assert len(dated) == 2 and re.fullmatch(date, dated[0]) and re.fullmatch(time, dated[1])
