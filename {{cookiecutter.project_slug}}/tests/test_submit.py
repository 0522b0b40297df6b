"""`make submit`: the project travels to a running cluster as a Ray job, and train.py runs there."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_submit_runs_train_py_on_the_cluster(ray_address: str, tmp_path: Path) -> None:
    dashboard = os.environ.get("RAY_API_SERVER_ADDRESS")  # the test cluster's, from own_dashboard
    if not dashboard:
        pytest.skip("the test cluster found no free dashboard port")
    # A researcher's shell: RAY_AUTH_MODE unset (ray.init set it in this process only). The
    # token that the test cluster authenticates with is the one its start wrote to ~/.ray/.
    env = {name: value for name, value in os.environ.items() if name != "RAY_AUTH_MODE"}
    env.pop("RAY_ADDRESS", None)
    overrides = f"ARGS=debug=fast hydra.run.dir={tmp_path}"
    command = ["make", "submit", f"RAY_ADDRESS={dashboard}", overrides]
    for _ in range(12):
        proc = subprocess.run(
            command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        # A cluster that has just started takes some seconds before its head takes jobs.
        if "No available agent to submit job" not in proc.stdout + proc.stderr:
            break
        time.sleep(5)
    output = proc.stdout + proc.stderr
    # Still no agent after a minute: another Ray cluster here may hold the job agent's port.
    assert proc.returncode == 0, output[-3000:]
    assert "succeeded" in output
    result = json.loads((tmp_path / "result.json").read_text())  # written by the job's train.py
    assert result["metrics"]["epoch"] == 1


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_sweep_runs_a_ray_tune_sweep(ray_address: str, tmp_path: Path) -> None:
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    args = f"ARGS=search.num_samples=2 trainer.max_epochs=2 hydra.sweep.dir={tmp_path}"
    proc = subprocess.run(
        ["make", "sweep", args, f"PYTHON={sys.executable}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "Ray Tune sweep asha: 2 trials" in proc.stdout + proc.stderr
    trials = (tmp_path / "trials.csv").read_text().splitlines()
    assert len(trials) == 3 and all("optimizer.lr" in row for row in trials[:1])
