"""Bad answers stop generation with one clear line; awkward but valid answers generate cleanly."""

import tomllib
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException

from .conftest import TEMPLATE, bake, python

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
    ({"docker_image": "Has Spaces"}, "docker_image"),
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
