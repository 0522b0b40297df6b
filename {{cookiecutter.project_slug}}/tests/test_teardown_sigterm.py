"""A Ray worker process ended with SIGTERM while Python runs a finalizer prints no traceback.

Ray's SIGTERM handler raises SystemExit wherever the process is; the scripts below install one
like it and send the signal from inside a weakref callback, where the exception cannot
propagate, as happened to a sweep's trial process ended as its driver left (a CI run's
console: "SystemExit: 1" and its traceback under `(run_trial pid=...)`).
"""

import subprocess
import sys

import pytest

from {{ cookiecutter.package_name }} import teardown

SCRIPT = """
import importlib, os, signal, sys, weakref

def on_sigterm(signum, frame):
    raise SystemExit(1)  # as Ray's worker does

signal.signal(signal.SIGTERM, on_sigterm)
module, quiet, happening = sys.argv[1:]
if quiet == "quiet":
    importlib.import_module(module).exit_quietly_on_sigterm()

def finalizer(_):
    if happening == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100_000):  # the handler runs here, inside the callback
            pass
    else:
        raise ValueError("the finalizer's own error")

class Thing:
    pass

thing = Thing()
ref = weakref.ref(thing, finalizer)
del thing
print("went on")
"""


def run_script(quiet: str, happening: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", SCRIPT, teardown.__name__, quiet, happening]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_without_the_hook_the_signal_in_a_finalizer_prints_a_traceback() -> None:
    # The situation is real: Python reports the SystemExit it could not raise.
    proc = run_script("plain", "sigterm")
    assert "Traceback" in proc.stderr and "SystemExit: 1" in proc.stderr


def test_with_the_hook_it_prints_nothing() -> None:
    proc = run_script("quiet", "sigterm")
    assert proc.stderr == "" and proc.stdout == "went on\n"


@pytest.mark.parametrize("quiet", ["plain", "quiet"])
def test_a_finalizers_own_error_is_still_reported(quiet: str) -> None:
    proc = run_script(quiet, "error")
    assert "ValueError: the finalizer's own error" in proc.stderr
