"""Runs and checkpoints go to cloud storage when paths.storage_path is a URI; local by default."""

from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.training.run import run_config

from .conftest import compose_config


@pytest.mark.parametrize("uri", ["s3://team-bucket/runs/exp-1", "gs://team-bucket/runs/exp-1"])
def test_cloud_uri_reaches_ray_train_unchanged(uri: str, tmp_path: Path) -> None:
    cfg = compose_config(f"paths.storage_path={uri}", output_dir=tmp_path)
    assert run_config(cfg).storage_path == uri


def test_local_default_is_the_run_folder(tmp_path: Path) -> None:
    cfg = compose_config(output_dir=tmp_path)
    assert run_config(cfg).storage_path == str(tmp_path)
