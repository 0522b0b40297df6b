"""The generated README's recipes for models, tasks and data of your own, followed exactly as
written: each file it shows is written where its first line says, each command it shows is run."""

import json
import re
import sys
from pathlib import Path

import pytest

from .conftest import bake, run

pytestmark = pytest.mark.slow

SECTION = "## Tasks, and models and data of your own"
# A fenced block whose first line names the file it is: "# src/<package>/models/x.py".
FILE_BLOCK = re.compile(r"```(?:python|yaml)\n# ((?:src|configs)/\S+)\n(.*?)```", re.DOTALL)
COMMAND_BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)


def recipe_section(project: Path) -> str:
    readme = (project / "README.md").read_text()
    start = readme.index(SECTION)
    end = readme.index("\n## ", start + len(SECTION))
    return readme[start:end]


@pytest.fixture(scope="module")
def recipes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A project of its own (its package named apart from the other bakes'), with every file of
    the recipes written into it; and the recipes' commands that add something of your own."""
    project = bake(tmp_path_factory.mktemp("recipes"), project_name="Recipe Check")
    section = recipe_section(project)
    written = []
    for path, content in FILE_BLOCK.findall(section):
        target = project / path
        assert not target.exists(), f"the recipe would overwrite {path}"
        target.write_text(f"# {path}\n{content}")
        written.append(path)
    assert len(written) == 6, written  # a network, a module, a task: a file and a yaml each
    commands = [
        line.split("#")[0].strip()
        for block in COMMAND_BLOCK.findall(section)
        for line in block.splitlines()
        if line.startswith("python train.py") and any(n in line for n in NEW_OPTIONS)
    ]
    return project, commands


NEW_OPTIONS = ("model=wide_net", "model=sine_fit", "task=binary")


def test_recipe_files_pass_the_projects_linter(recipes: tuple[Path, list[str]]) -> None:
    project, _ = recipes
    checked = run([sys.executable, "-m", "ruff", "check", "src", "configs"], cwd=project)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def train(project: Path, command: str, run_dir: Path) -> tuple[dict, str]:
    args = command.split()[2:] + [f"hydra.run.dir={run_dir}"]
    proc = run(
        [sys.executable, "train.py", *args],
        cwd=project,
        timeout=600,
        PYTHONPATH=str(project / "src"),
        HYDRA_FULL_ERROR="0",
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((run_dir / "result.json").read_text()), proc.stdout + proc.stderr


@pytest.mark.parametrize("option", NEW_OPTIONS)
def test_each_recipe_trains_as_written(
    recipes: tuple[Path, list[str]], option: str, tmp_path: Path
) -> None:
    project, commands = recipes
    mine = [command for command in commands if option in command]
    assert mine, f"the README runs nothing with {option}"
    # The first command of each recipe (each run starts Ray: ~15 s).
    summary, console = train(project, mine[0], tmp_path / "run")
    metrics = summary["metrics"]
    assert summary["best_checkpoint"], console[-3000:]
    if option == "task=binary":
        assert 0.5 < metrics["val_auroc"] <= 1.0 and "val_acc" in metrics, metrics
    if option == "model=sine_fit":
        # It logs no val_loss: it still trains, says so once, and keeps the latest epoch.
        assert console.count("The model logs no 'val_loss'") == 1, console[-3000:]
        assert "val_loss" not in metrics and metrics["epoch"] == 20
        assert summary["best_checkpoint"] == summary["latest_checkpoint"]
    if option == "model=wide_net":
        assert metrics["val_acc"] > 0.5
