"""The command line and the demo (the README's main job)."""

import subprocess
import sys

import pytest

from fastmlp.cli import main


def test_demo_runs_and_reaches_its_accuracy():
    out = subprocess.run([sys.executable, "-m", "fastmlp", "demo", "--threads", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 35  # 20 spiral + 15 digits epochs
    spiral = float(next(line for line in lines if line.startswith("spiral: final")).split()[-1])
    digits = float(next(line for line in lines if line.startswith("digits: final")).split()[-1])
    assert spiral >= 0.95 and digits >= 0.93


def test_help_and_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "demo" in capsys.readouterr().out
    assert main([]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--threads", "0"])
    assert exc.value.code == 2
    assert "thread count must be an integer" in capsys.readouterr().err
