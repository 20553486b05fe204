"""The asv suite works: every benchmark runs for every parameter, and asv runs and publishes.

Timings are not looked at: speed is measured with asv and the comparison harness on a
quiet machine, never asserted in pytest.

Every benchmark method is called here once per parameter combination, in this process, as
asv's ``setup``, method, ``teardown`` sequence would call it.  That is what can break when a
kernel or the API changes, and in one process it costs the benchmarks' own work only: asv's
quick pass starts a fresh interpreter per benchmark and took 435 s of a 14-minute suite.
asv itself then runs the start-up benchmarks (``timeraw``: a fresh interpreter per sample,
which only asv does; the cold-cache one compiles a first step from nothing) and one training
benchmark, and publishes.
"""

import inspect
import itertools
import os
import shutil
import subprocess
import sys

import numba
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCHMARKS)

from benchmarks import kernels, large_data, startup, training  # noqa: E402  (benchmarks/benchmarks/)

METHOD_PREFIXES = ("time_", "track_", "mem_", "peakmem_")


def _parameter_sets(cls):
    params = getattr(cls, "params", None)
    if not params:
        return [()]
    if not isinstance(params, tuple):  # asv: a single list is one parameter
        params = (params,)
    return list(itertools.product(*params))


def _cases():
    for module in (kernels, training, startup, large_data):
        for name, cls in sorted(vars(module).items()):
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            methods = sorted(m for m in dir(cls) if m.startswith(METHOD_PREFIXES))
            if not methods:
                continue
            for values in _parameter_sets(cls):
                label = f"{module.__name__.split('.')[-1]}.{name}({', '.join(map(str, values))})"
                yield pytest.param(cls, methods, values, id=label)


@pytest.mark.parametrize("cls, methods, values", list(_cases()))
def test_every_benchmark_runs_for_every_parameter(cls, methods, values):
    if "threads" in getattr(cls, "param_names", ()) and \
            values[cls.param_names.index("threads")] > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("more threads than numba has here: asv skips it too (setup raises)")
    # One setup for all of a class's methods (asv repeats it per method): the methods only
    # read what setup built, and the large network's setup is itself an epoch of training.
    bench = cls()
    if hasattr(bench, "setup"):
        bench.setup(*values)
    try:
        for method in methods:
            result = getattr(bench, method)(*values)
            if method.startswith("track_"):
                assert isinstance(result, (int, float)) and result == result, (method, result)
    finally:
        if hasattr(bench, "teardown"):
            bench.teardown(*values)


def _asv(*args, timeout=1800):
    asv = shutil.which("asv", path=os.path.dirname(sys.executable)) or shutil.which("asv")
    assert asv, "asv is part of the test extra: pip install '.[test]'"
    return subprocess.run([asv, *args], cwd=BENCHMARKS, capture_output=True, text=True, timeout=timeout)


def test_asv_runs_and_publishes(tmp_path):
    machine = _asv("machine", "--yes", "--machine", "pytest")
    assert machine.returncode == 0, machine.stderr
    run = _asv("run", "--python=same", "--quick", "--machine", "pytest", "--show-stderr",
               "--set-commit-hash", _head(),
               "--bench", r"startup\.StartUp\.|training\.TrainStep\.time_train_step")
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    assert "failed" not in output.lower(), output[-5000:]
    assert "startup.StartUp.timeraw_import_only" in output
    assert "training.TrainStep.time_train_step" in output
    published = _asv("publish")
    assert published.returncode == 0, published.stdout + published.stderr
    assert os.path.exists(os.path.join(BENCHMARKS, ".asv", "html", "index.html"))


def _head():
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=BENCHMARKS, capture_output=True, text=True)
    assert out.returncode == 0, "the asv test runs from a git checkout"
    return out.stdout.strip()
