"""The generated project installs as its README says, and its own test suite passes."""

import sys
from pathlib import Path

import pytest

from .conftest import run

pytestmark = pytest.mark.slow


def test_generated_project_test_suite_passes(default_project: Path) -> None:
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "-e", ".[dev]"]
    installed = run(pip, cwd=default_project)
    assert installed.returncode == 0, installed.stderr
    tests = run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=default_project,
        timeout=3000,
    )
    print(tests.stdout[-5000:])
    assert tests.returncode == 0, tests.stdout[-5000:] + tests.stderr[-3000:]
    assert " passed" in tests.stdout.splitlines()[-1]
