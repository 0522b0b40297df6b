"""Runs and checkpoints go to cloud storage when paths.storage_path is a URI; local by default."""

from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.training.run import run_config
from {{ cookiecutter.package_name }}.tuning.trial import trial_storage

from .conftest import compose_config


@pytest.mark.parametrize("uri", ["s3://team-bucket/runs/exp-1", "gs://team-bucket/runs/exp-1"])
def test_cloud_uri_reaches_ray_train_unchanged(uri: str, tmp_path: Path) -> None:
    cfg = compose_config(f"paths.storage_path={uri}", output_dir=tmp_path)
    assert run_config(cfg).storage_path == uri


def test_local_default_is_the_run_folder(tmp_path: Path) -> None:
    cfg = compose_config(output_dir=tmp_path)
    assert run_config(cfg).storage_path == str(tmp_path)


def test_a_sweeps_shared_storage_gives_each_trial_its_own_folder(tmp_path: Path) -> None:
    # The sweep's default (each trial's own folder) and a folder inside it stay as they are;
    # one bucket or shared folder for the whole sweep gets a folder per trial, named as in
    # the sweep dir. (test_sweep.py runs a sweep so, interrupted and resumed.)
    trial_dir = tmp_path / "sweep" / "3"
    assert trial_storage(str(trial_dir), str(trial_dir), "3") == str(trial_dir)
    assert trial_storage(str(trial_dir / "ray"), str(trial_dir), "3") == str(trial_dir / "ray")
    shared = tmp_path / "shared"
    assert trial_storage(str(shared), str(trial_dir), "3") == str(shared / "3")
    assert trial_storage(str(tmp_path / "sweep"), str(trial_dir), "3") == str(trial_dir)
    bucket = "s3://team-bucket/exp-1"
    assert trial_storage(f"{bucket}/", str(trial_dir), "3") == f"{bucket}/3"
