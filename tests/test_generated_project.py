"""The generated project installs as its README says, and its own test suite passes."""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .conftest import run

pytestmark = pytest.mark.slow


def failures(junit_file: Path) -> str:
    """Each failed test of a JUnit report with its own message: the suite's output tail is
    mostly the logs of whichever test ran last."""
    if not junit_file.is_file():
        return "(no JUnit report: pytest did not get to write one)"
    reports = []
    for case in ET.parse(junit_file).iter("testcase"):
        for problem in [*case.iter("failure"), *case.iter("error")]:
            name = f"{case.get('classname')}::{case.get('name')}"
            reports.append(f"--- {name}\n{(problem.text or problem.get('message') or '')[:6000]}")
    return "\n".join(reports)


def test_generated_project_test_suite_passes(default_project: Path, tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "-e", ".[dev]"]
    installed = run(pip, cwd=default_project)
    assert installed.returncode == 0, installed.stderr
    junit = tmp_path / "generated-suite.xml"
    pytest_cmd = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=10"]
    tests = run(
        [sys.executable, *pytest_cmd, f"--junitxml={junit}"], cwd=default_project, timeout=3000
    )
    print(tests.stdout[-3000:])
    assert tests.returncode == 0, failures(junit) + "\n" + tests.stdout[-2000:]
    assert " passed" in tests.stdout.splitlines()[-1]
