"""Bad answers stop generation with one clear line; awkward but valid answers generate cleanly."""

import tomllib
from pathlib import Path

import pytest
import yaml
from cookiecutter.exceptions import FailedHookException

from .conftest import TEMPLATE, bake, python, run

BAD_ANSWERS = [
    ({"package_name": "2fast"}, "is not a valid Python package name"),
    ({"package_name": "my-package"}, "is not a valid Python package name"),
    ({"package_name": "class"}, "is a Python keyword"),
    ({"package_name": "match"}, "is a Python keyword"),
    ({"package_name": "ray"}, "would shadow"),
    ({"package_name": "torch"}, "would shadow"),
    ({"package_name": "lightning"}, "would shadow"),
    ({"package_name": "hydra"}, "would shadow"),
    ({"package_name": "omegaconf"}, "would shadow"),
    ({"package_name": "test"}, "would shadow"),
    ({"package_name": "json"}, "would shadow"),
    ({"project_name": "Protein Folding!"}, "project_slug 'protein-folding!'"),
    ({"project_slug": "Bad Slug"}, "project_slug 'Bad Slug'"),
    ({"author_email": "not-an-email"}, "author_email"),
    ({"results_dir": "/abs/outputs"}, "results_dir"),
    ({"results_dir": "../outside"}, "results_dir"),
    # Answers that reach the Makefile, shell commands and YAML: nothing there may read them as code.
    ({"results_dir": "out$(shell touch INJECTED)"}, "results_dir 'out$(shell touch INJECTED)'"),
    ({"results_dir": "it's"}, "results_dir"),
    ({"results_dir": "my outputs"}, "results_dir"),
    ({"results_dir": "runs:2024"}, "results_dir"),
    ({"results_dir": "out#x"}, "results_dir"),
    ({"results_dir": "-rf"}, "results_dir"),
    ({"results_dir": "runs/*"}, "results_dir"),
    ({"docker_image": "Has Spaces"}, "docker_image"),
    ({"docker_image": "img$(id)"}, "docker_image"),
    ({"ray_address": "auto; rm -rf ~"}, "ray_address"),
    ({"ray_address": "$(shell id)"}, "ray_address"),
    ({"ray_address": "head:6379'"}, "ray_address"),
]


@pytest.mark.parametrize("answers,message", BAD_ANSWERS, ids=lambda v: str(v)[:40])
def test_bad_answer_is_rejected_and_nothing_generated(
    answers: dict, message: str, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    with pytest.raises(FailedHookException):
        bake(tmp_path, **answers)
    assert list(tmp_path.iterdir()) == []
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and message in errors[0]


def test_safe_results_dir_and_ray_address_reach_make_and_the_config(tmp_path: Path) -> None:
    project = bake(tmp_path, results_dir="results/run_1.v2", ray_address="ray://head-0:10001")
    proc = run(["make", "-n", "tensorboard"], cwd=project)
    assert proc.returncode == 0 and "--logdir results/run_1.v2" in proc.stdout, proc.stderr
    proc = python("train.py", "--cfg", "job", "--package", "_global_", cwd=project)
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    assert config["paths"]["results_dir"] == "results/run_1.v2"
    assert config["ray"]["address"] == "ray://head-0:10001"


def test_awkward_text_survives(tmp_path: Path) -> None:
    tricky = "He said \"hi\" \\ and {braces} 'quotes'; import os"
    project = bake(tmp_path, project_name="Quotes Project", description=tricky, author_name=tricky)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["description"] == tricky
    assert pyproject["project"]["authors"][0]["name"] == tricky
    assert tricky in (project / "README.md").read_text()
    proc = python("-c", "import quotes_project; print(quotes_project.__version__)", cwd=project)
    assert proc.returncode == 0 and proc.stdout.strip() == "0.1.0", proc.stderr


def test_hooks_are_safe_to_run_twice(tmp_path: Path) -> None:
    first = bake(tmp_path, project_name="Twice")
    files = sorted(p.relative_to(first) for p in first.rglob("*"))
    from cookiecutter.main import cookiecutter

    cookiecutter(
        str(TEMPLATE),
        no_input=True,
        extra_context={"project_name": "Twice"},
        output_dir=str(tmp_path),
        overwrite_if_exists=True,
    )
    assert sorted(p.relative_to(first) for p in first.rglob("*")) == files
    assert not (first / ".git").exists()
