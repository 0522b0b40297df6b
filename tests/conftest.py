"""Helpers for baking the template into throwaway projects."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
# The generated suite's slowest tests, shown at the end of this session's report: CI's time
# goes mostly there (test_generated_project.py adds them).
INNER_DURATIONS = pytest.StashKey[list[str]]()
DEFAULTS = json.loads((TEMPLATE / "cookiecutter.json").read_text())


def bake(output_dir: Path, **answers) -> Path:
    """Generate a project with `answers` (the rest default) and return its folder."""
    return Path(
        cookiecutter(
            str(TEMPLATE), no_input=True, extra_context=answers, output_dir=str(output_dir)
        )
    )


def run(
    cmd: list[str], cwd: Path, timeout: float = 1800, **env: str
) -> subprocess.CompletedProcess:
    # Callers assert on the return code themselves, with the output in the message.
    return subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
        check=False,
    )


def python(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run this interpreter in a generated project, its src/ on the path (as an install would)."""
    return run([sys.executable, *args], cwd=cwd, timeout=timeout, PYTHONPATH=str(cwd / "src"))


@pytest.fixture(scope="session")
def default_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bake(tmp_path_factory.mktemp("default"))


def pytest_configure(config: pytest.Config) -> None:
    config.stash[INNER_DURATIONS] = []


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    lines = config.stash.get(INNER_DURATIONS, [])
    if lines:
        terminalreporter.write_sep("=", "slowest tests of the generated suite")
        for line in lines:
            terminalreporter.write_line(line)
