"""Start-up cost: processes that do not train must not import Lightning (seconds per process)."""

import subprocess
import sys


def lightning_modules_after(statements: str) -> str:
    """The Lightning modules a fresh interpreter holds after running `statements`."""
    code = f"{statements}\nimport sys\nprint(sorted(m for m in sys.modules if m == 'lightning'))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def test_driver_trials_and_replicas_do_not_import_lightning() -> None:
    # What train.py, the sweeper's trials, Serve replicas and batch prediction load.
    driver = "\n".join(
        [
            "import {{ cookiecutter.package_name }}.training.run",
            "import {{ cookiecutter.package_name }}.tuning.sweep",
            "import {{ cookiecutter.package_name }}.serving.app",
            "import {{ cookiecutter.package_name }}.data.prediction",
            "from {{ cookiecutter.package_name }}.models import MLP, build_model",
            "from {{ cookiecutter.package_name }}.tasks import Classification, Regression",
        ]
    )
    assert lightning_modules_after(driver) == "[]"
    # The LightningModule that trains a network for its task, and the workers that use it.
    for worker in ("tasks.module", "training.worker"):
        statement = f"import {{ cookiecutter.package_name }}.{worker}"
        assert lightning_modules_after(statement) == "['lightning']", worker
