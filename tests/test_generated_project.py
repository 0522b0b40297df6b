"""The generated project installs as its README says, and its own test suite passes.

One bake, its suite in three parts: the quick tests (`-m "not slow"`, about a minute) run in the
template's quick loop (`make test-quick`), the slow ones (real Ray runs) with the template's slow
tests; `make test` runs both, so each of those runs once. The tests on a cluster of several nodes
(`-m multinode`, about 8 minutes on 2 cores) run with `make test-multinode`: CI's 30 minutes do
not hold them too.
"""

import shutil
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from .conftest import INNER_DURATIONS, run

# The only skips a generated suite may report, by the reason it gives: each depends on the
# machine, not on the template. Reason -> (why it is allowed, whether it is allowed here).
ALLOWED_SKIPS = {
    "Ray has no HAProxy binary on this platform": (
        "Ray bundles HAProxy on Linux only",
        sys.platform != "linux",
    ),
    "make is not installed": ("`make submit` needs make", shutil.which("make") is None),
    "the test cluster found no free dashboard port": (
        "every port the test cluster's dashboard may take was in use on this machine",
        True,
    ),
}


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


def skipped(junit_file: Path) -> list[tuple[str, str]]:
    """(test, reason) of each test a JUnit report shows as skipped (xfails included)."""
    found = []
    for case in ET.parse(junit_file).iter("testcase"):
        for skip in case.iter("skipped"):
            reason = (skip.get("message") or "").removeprefix("Skipped: ").strip()
            found.append((f"{case.get('classname')}::{case.get('name')}", reason))
    return found


def slowest(junit_file: Path, count: int = 15) -> list[str]:
    """The `count` slowest test cases in a junit report, as `seconds  test` lines."""
    cases = [
        (float(case.get("time", 0)), f"{case.get('classname')}::{case.get('name')}")
        for case in ET.parse(junit_file).iter("testcase")
    ]
    return [f"{seconds:7.1f}s  {name}" for seconds, name in sorted(cases, reverse=True)[:count]]


def unexpected_skips(skips: list[tuple[str, str]]) -> list[str]:
    """The skips a fresh clone on this machine should not have."""
    allowed = {reason for reason, (_, here) in ALLOWED_SKIPS.items() if here}
    return [f"{test}: {reason}" for test, reason in skips if reason not in allowed]


def run_suite(project: Path, marker: str, junit: Path, config: pytest.Config, **env: str) -> None:
    """Run the generated suite's `marker` half in `project`; fail on a failure or on a skip
    that ALLOWED_SKIPS does not list, and report the allowed ones."""
    pytest_cmd = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=10", "-m", marker]
    tests = run(
        [sys.executable, *pytest_cmd, f"--junitxml={junit}"], cwd=project, timeout=3000, **env
    )
    print(tests.stdout[-3000:])
    if junit.is_file():
        config.stash[INNER_DURATIONS] += [f"({marker})", *slowest(junit)]
    assert tests.returncode == 0, failures(junit) + "\n" + tests.stdout[-2000:]
    assert " passed" in tests.stdout.splitlines()[-1]
    skips = skipped(junit)
    unexpected = unexpected_skips(skips)
    assert not unexpected, "the generated suite skipped:\n" + "\n".join(unexpected)
    for test, reason in skips:
        warnings.warn(
            f"generated suite skipped {test}: {reason} ({ALLOWED_SKIPS[reason][0]})", stacklevel=1
        )


def test_generated_project_quick_tests_pass(
    default_project: Path, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    # From the source tree, as the template's other tests run a bake: the install is checked
    # by the slow half below.
    src = str(default_project / "src")
    run_suite(default_project, "not slow", tmp_path / "quick.xml", pytestconfig, PYTHONPATH=src)


@pytest.mark.slow
def test_generated_project_test_suite_passes(
    default_project: Path, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "-e", ".[dev]"]
    installed = run(pip, cwd=default_project)
    assert installed.returncode == 0, installed.stderr
    run_suite(default_project, "slow and not multinode", tmp_path / "slow.xml", pytestconfig)


@pytest.mark.multinode
def test_generated_project_multinode_tests_pass(
    default_project: Path, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    # A cluster of a head and two 1-CPU nodes that the tests start, lose nodes of and stop.
    src = str(default_project / "src")
    run_suite(
        default_project, "multinode", tmp_path / "multinode.xml", pytestconfig, PYTHONPATH=src
    )


def test_skips_are_read_from_the_report_and_judged_by_their_reason(tmp_path: Path) -> None:
    report = tmp_path / "report.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_ran" time="0.1"/>'
        '<testcase classname="tests.test_a" name="test_port" time="0.0">'
        '<skipped type="pytest.skip" message="the test cluster found no free dashboard port">'
        "tests/test_a.py:9: the test cluster found no free dashboard port</skipped></testcase>"
        '<testcase classname="tests.test_b" name="test_gpu" time="0.0">'
        '<skipped type="pytest.skip" message="Skipped: no GPU here">no GPU here</skipped>'
        "</testcase></testsuite></testsuites>"
    )
    skips = skipped(report)
    assert skips == [
        ("tests.test_a::test_port", "the test cluster found no free dashboard port"),
        ("tests.test_b::test_gpu", "no GPU here"),
    ]
    assert unexpected_skips(skips) == ["tests.test_b::test_gpu: no GPU here"]
    assert slowest(report, 1) == ["    0.1s  tests.test_a::test_ran"]
