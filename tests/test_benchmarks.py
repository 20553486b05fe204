"""The asv suite runs (one quick pass over every benchmark and parameter) and publishes.

Timings from this pass are not looked at: speed is measured with asv and the comparison
harness on a quiet machine, never asserted in pytest.
"""

import os
import shutil
import subprocess
import sys

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _asv(*args, timeout=1800):
    asv = shutil.which("asv", path=os.path.dirname(sys.executable)) or shutil.which("asv")
    assert asv, "asv is part of the test extra: pip install '.[test]'"
    return subprocess.run([asv, *args], cwd=BENCHMARKS, capture_output=True, text=True, timeout=timeout)


def test_asv_quick_run_and_publish(tmp_path):
    machine = _asv("machine", "--yes", "--machine", "pytest")
    assert machine.returncode == 0, machine.stderr
    run = _asv("run", "--python=same", "--quick", "--machine", "pytest", "--show-stderr",
               "--set-commit-hash", _head())
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    assert "failed" not in output.lower(), output[-5000:]
    assert "Running" in output and "training.TrainEpoch.time_epoch" in output
    published = _asv("publish")
    assert published.returncode == 0, published.stdout + published.stderr
    assert os.path.exists(os.path.join(BENCHMARKS, ".asv", "html", "index.html"))


def _head():
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=BENCHMARKS, capture_output=True, text=True)
    assert out.returncode == 0, "the asv test runs from a git checkout"
    return out.stdout.strip()
