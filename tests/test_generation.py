"""Bake every supported combination of answers and check what comes out."""

import itertools
import re
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from .conftest import DEFAULTS, TEMPLATE, bake, python, run

# accelerator x license x github_actions, each with one of the Python versions in turn.
COMBINATIONS = [
    {
        "accelerator": accelerator,
        "license": license_,
        "github_actions": actions,
        "python_version": DEFAULTS["python_version"][index % len(DEFAULTS["python_version"])],
    }
    for index, (accelerator, license_, actions) in enumerate(
        itertools.product(DEFAULTS["accelerator"], DEFAULTS["license"], [True, False])
    )
]
LEFTOVER = re.compile(r"{{ ?cookiecutter|{%|%}|cookiecutter\.")


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[ ]", line.strip())[0] for line in requirements if line.strip()}


def ids(answers: dict) -> str:
    return "-".join(str(value) for value in answers.values())


@pytest.fixture(scope="module", params=COMBINATIONS, ids=ids)
def baked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    answers = request.param
    return answers, bake(tmp_path_factory.mktemp("bake"), project_name="Protein Folding", **answers)


def test_no_template_syntax_left(baked) -> None:
    _, project = baked
    for path in project.rglob("*"):
        assert "cookiecutter" not in str(path.relative_to(project)), path
        if path.is_file():
            text = path.read_text()
            leftover = LEFTOVER.search(text)
            assert leftover is None, f"{path}: {leftover.group(0)!r}"


def test_layout_and_names(baked) -> None:
    answers, project = baked
    assert project.name == "protein-folding"
    assert (project / "src" / "protein_folding" / "__init__.py").is_file()
    assert (project / "train.py").is_file()
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "protein-folding"
    assert pyproject["project"]["requires-python"] == f">={answers['python_version']}"
    dependencies = " ".join(pyproject["project"]["dependencies"])
    for needed in (
        "hydra-core",
        "omegaconf",
        "ray[train,tune,serve,data]",
        "torch>=",
        "lightning",
        "tensorboard",
    ):
        assert needed in dependencies
    assert {"pytest", "ruff"} <= names(pyproject["project"]["optional-dependencies"]["dev"])
    assert (project / "LICENSE").is_file() == (answers["license"] != "none")
    assert not (project / "licenses").exists()
    workflow = project / ".github" / "workflows" / "ci.yaml"
    assert workflow.is_file() == answers["github_actions"]
    if answers["github_actions"]:
        text = workflow.read_text()
        assert "${{ github.workflow }}-${{ github.ref }}" in text
        assert yaml.safe_load(text)["jobs"]["test"]["steps"]


def test_template_test_requirements_cover_the_projects_stack(
    default_project: Path,
) -> None:
    # The template's tests run baked projects from source: their venv needs the project's stack.
    pyproject = tomllib.loads((default_project / "pyproject.toml").read_text())
    lines = (TEMPLATE / "requirements-dev.txt").read_text().splitlines()
    ours = names(line for line in lines if not line.startswith("#"))
    needed = names(
        pyproject["project"]["dependencies"] + pyproject["project"]["optional-dependencies"]["dev"]
    )
    assert needed - {"torch"} <= ours  # torch: `make setup` installs the CPU wheel first


def test_every_yaml_file_parses(baked) -> None:
    _, project = baked
    for path in project.rglob("*.yaml"):
        yaml.safe_load(path.read_text())


def test_ruff_passes(baked) -> None:
    _, project = baked
    ruff = str(Path(sys.executable).parent / "ruff")
    for command in ([ruff, "check", "."], [ruff, "format", "--check", "."]):
        proc = run(command, cwd=project)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_scaling_follows_accelerator(baked) -> None:
    answers, project = baked
    proc = python("train.py", "--cfg", "job", "--package", "scaling", cwd=project)
    assert proc.returncode == 0, proc.stderr
    expected = "local" if answers["accelerator"] == "cpu" else "1gpu"
    assert yaml.safe_load(proc.stdout)["name"] == expected
