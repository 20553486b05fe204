"""Numba's cache is dropped when any kernel source changes (numba checks only the file
that defines a function, not its callees')."""

import os

from fastmlp.jitcache import drop_stale_cache


def test_changed_kernel_sources_drop_the_cache(tmp_path):
    kernels = tmp_path / "kernels"
    cache = kernels / "__pycache__"
    cache.mkdir(parents=True)
    (kernels / "dense.py").write_text("def f(): return 1\n")
    (tmp_path / "config.py").write_text("X = 1\n")
    drop_stale_cache(str(cache), str(kernels))
    cached = [cache / "dense.f-1.py311.nbi", cache / "dense.f-1.py311.1.nbc"]
    for path in cached:
        path.write_text("compiled")
    drop_stale_cache(str(cache), str(kernels))  # nothing changed: the cache stays
    assert all(path.exists() for path in cached)
    (tmp_path / "config.py").write_text("X = 2\n")  # a change outside the defining file
    drop_stale_cache(str(cache), str(kernels))
    assert not any(path.exists() for path in cached)
    for path in cached:
        path.write_text("compiled again")
    drop_stale_cache(str(cache), str(kernels))
    assert all(path.exists() for path in cached)
    assert sorted(os.listdir(cache)) == sorted([p.name for p in cached]
                                               + ["fastmlp-kernels.sha256", "fastmlp-compile.lock"])


# --- The cache where users install, shared by processes, and damaged -------------------
#
# Each case runs fresh interpreters (a process's first call is what the cache serves) on
# one cheap kernel, so the mechanism is exercised without compiling a whole network.

import hashlib
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastmlp
from fastmlp import SGD, Dense, Sequential

from compile_record import RECORD_COMPILES

PACKAGE = os.path.dirname(os.path.abspath(fastmlp.__file__))

# A child: import fastmlp, call one kernel (a parallel=True one, the kind numba #4807 saw
# crash when several processes filled a cache at once), report what numba compiled.
CHILD = RECORD_COMPILES + r"""
import json, os, sys, time
import numpy as np
start_file = os.environ.get("START_FILE")
while start_file and not os.path.exists(start_file):
    time.sleep(0.005)
from fastmlp import jitcache
from fastmlp.kernels import activations
z = np.ones((4, 3))
activations._bias_activation_parallel(z, np.full(3, 0.5), activations.RELU, 0.0, 2)
print(json.dumps({"compiled": compiled, "cache": jitcache.cache_directory(),
                  "result": z.tolist()}))
"""


def _child(env, timeout=300, script=CHILD, args=()):
    """Run ``script`` in a fresh interpreter; the JSON of its last line."""
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update(extra)
    return env


def test_a_read_only_install_caches_in_the_users_directory(tmp_path):
    # A copy of the package whose directory cannot be written: numba's in-tree cache is out,
    # and the per-user directory ($XDG_CACHE_HOME/fastmlp) must serve the second process.
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "fastmlp", ignore=shutil.ignore_patterns("__pycache__"))
    # Root ignores permission bits; a __pycache__ that is a plain file cannot be created
    # or written for anyone, which is what a read-only install means to numba.
    (site / "fastmlp" / "kernels" / "__pycache__").write_text("not a directory")
    for path in site.rglob("*"):
        path.chmod(0o555 if path.is_dir() else 0o444)
    xdg = tmp_path / "xdg"
    env = _env(PYTHONPATH=str(site), XDG_CACHE_HOME=str(xdg))
    try:
        first, second = _child(env), _child(env)
    finally:
        for path in [site, *site.rglob("*")]:
            path.chmod(0o755)
    assert first["cache"].startswith(str(xdg / "fastmlp")), first["cache"]
    assert "_bias_activation_parallel" in first["compiled"]
    assert second["compiled"] == [] and second["cache"] == first["cache"]
    assert first["result"] == second["result"] == [[1.5] * 3] * 4


def test_numba_cache_dir_still_wins(tmp_path):
    result = _child(_env(NUMBA_CACHE_DIR=str(tmp_path / "numba")))
    assert result["cache"].startswith(str(tmp_path / "numba"))


def test_processes_starting_together_compile_once_and_all_load(tmp_path):
    # Three processes released at the same instant on an empty cache: the kernel's file lock
    # lets one compile and save; the others wait for it and load what it saved.
    start = tmp_path / "go"
    env = _env(NUMBA_CACHE_DIR=str(tmp_path / "cache"), START_FILE=str(start))
    children = [subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(3)]
    time.sleep(1.0)  # let all three import numpy and numba first
    start.write_text("")
    results = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    compilers = [r for r in results if "_bias_activation_parallel" in r["compiled"]]
    assert len(compilers) == 1, [r["compiled"] for r in results]
    assert all(r["result"] == [[1.5] * 3] * 4 for r in results)


# A child that calls one of two kernels: the parallel bias-and-activation forward pass, or
# the serial dropout gradient, which calls nothing the first one compiles.
KERNEL_CHILD = RECORD_COMPILES + r"""
import json, sys, time
import numpy as np
from fastmlp.kernels import activations, dropout
z = np.ones((4, 3))
if sys.argv[1] == "forward":
    activations._bias_activation_parallel(z, np.full(3, 0.5), activations.RELU, 0.0, 2)
else:
    dropout.dropout_backward(np.ones((4, 3)), z, np.empty((4, 3)))
print(json.dumps({"compiled": compiled, "finished": time.time()}))
"""


def _kernel_child(env, which, timeout=300):
    return _child(env, timeout, script=KERNEL_CHILD, args=(which,))


def test_processes_compile_different_kernels_at_once_and_wait_for_the_same_one(tmp_path):
    # This test holds the forward kernel's lock, as a process compiling it would.  A
    # process that needs that kernel waits for it; one that needs another kernel compiles
    # it meanwhile (with one lock for the whole cache it would wait too, and time out).
    import fcntl

    from fastmlp import jitcache
    from fastmlp.kernels import activations

    root = tmp_path / "cache"
    env = _env(NUMBA_CACHE_DIR=str(root))
    cache_dir = root / jitcache._numba_subpath(jitcache.KERNEL_SOURCES)
    lock = Path(jitcache.kernel_lock_path(
        str(cache_dir), jitcache.cache_file_prefix(activations._bias_activation_parallel.py_func)))
    lock.parent.mkdir(parents=True)
    with open(lock, "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        waiting = subprocess.Popen([sys.executable, "-c", KERNEL_CHILD, "forward"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            other = _kernel_child(env, "gradient", timeout=120)
            assert "dropout_backward" in other["compiled"]
            assert waiting.poll() is None, waiting.communicate()
        except BaseException:
            waiting.kill()
            waiting.communicate()
            raise
        released = time.time()
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert "_bias_activation_parallel" in result["compiled"] and result["finished"] > released
    # Both kernels were saved and vouched for: the next processes load them.
    assert _kernel_child(env, "forward")["compiled"] == []
    assert _kernel_child(env, "gradient")["compiled"] == []


STALE_CHILD = RECORD_COMPILES + r"""
import json, os, sys
import numpy as np
from fastmlp import jitcache
from fastmlp.kernels import activations
# Another fastmlp (other kernel sources) renews the cache while this process runs.
with open(os.path.join(jitcache.cache_directory(), jitcache.STAMP_NAME), "w") as stamp:
    stamp.write("the digest of some other version's kernel sources")
z = np.ones((4, 3))
activations._bias_activation_parallel(z, np.full(3, 0.5), activations.RELU, 0.0, 2)
print(json.dumps({"compiled": compiled, "result": z.tolist()}))
"""


def test_a_process_whose_cache_another_version_renewed_compiles_in_memory(tmp_path):
    # The kernels of another version, loaded into this process, would be called with this
    # version's arguments (a crash, seen while kernel sources were edited under a running
    # suite); its own would be stale code for the other version.  So it neither loads
    # nor saves once the stamp names other sources.
    env = _env(NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    _child(env)  # fills the cache, with this version's stamp
    directory, _ = _kernel_files(tmp_path / "cache")

    def kernel_files():
        return {p.name: p.stat().st_mtime_ns for p in directory.glob("*.nb[ic]")}

    before = kernel_files()
    assert any(name.startswith("activations._bias_activation_parallel-") for name in before)
    done = subprocess.run([sys.executable, "-c", STALE_CHILD], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "_bias_activation_parallel" in result["compiled"]  # compiled, not loaded
    assert result["result"] == [[1.5] * 3] * 4
    assert kernel_files() == before  # nothing saved or rewritten


def _kernel_files(cache_root):
    (directory,) = [d for d in cache_root.iterdir() if d.is_dir()]
    return directory, sorted(directory.glob("activations._bias_activation_parallel-*"))


@pytest.mark.parametrize("damage", ["truncate index", "truncate data", "garble data",
                                    "empty data", "garble manifest"])
def test_a_damaged_cache_file_is_compiled_again(tmp_path, damage):
    root = tmp_path / "cache"
    env = _env(NUMBA_CACHE_DIR=str(root))
    assert "_bias_activation_parallel" in _child(env)["compiled"]
    directory, files = _kernel_files(root)
    index = next(f for f in files if f.suffix == ".nbi")
    data = next(f for f in files if f.suffix == ".nbc")
    if damage == "truncate index":
        index.write_bytes(index.read_bytes()[:30])  # numba alone: UnpicklingError
    elif damage == "truncate data":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "garble data":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(64)  # inside the machine code
        data.write_bytes(bytes(raw))
    elif damage == "empty data":
        data.write_bytes(b"")
    else:
        (directory / "fastmlp-manifest.json").write_text("{not json")
    again = _child(env)
    assert "_bias_activation_parallel" in again["compiled"]
    assert again["result"] == [[1.5] * 3] * 4
    assert _child(env)["compiled"] == []  # and the repaired cache serves the next process


NOTICE_CHILD = r"""
import sys
import numpy as np
from fastmlp import jitcache
from fastmlp.kernels import activations
z = np.ones((4, 3))
with jitcache.compile_notices(sys.argv[1] == "on"):
    activations._bias_activation_parallel(z, np.zeros(3), activations.RELU, 0.0, 2)
"""


@pytest.mark.parametrize("notices", ["on", "off"])
def test_a_compilation_says_so_on_stderr_only_when_asked(tmp_path, notices):
    done = subprocess.run([sys.executable, "-c", NOTICE_CHILD, notices], capture_output=True,
                          text=True, timeout=300, env=_env(NUMBA_CACHE_DIR=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("fastmlp:")]
    if notices == "on":
        assert len(lines) == 2, done.stderr
        assert "compiling fastmlp.kernels _bias_activation_parallel (float64)" in lines[0]
        assert "once per machine" in lines[0] and "fastmlp compile" in lines[0]
        assert lines[1].startswith("fastmlp: compiled in ")
    else:
        assert lines == [], done.stderr


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_fit_asks_for_compile_notices_when_verbose(monkeypatch, verbose):
    import contextlib

    import fastmlp.training as training

    asked = []

    @contextlib.contextmanager
    def recorder(enabled=True):
        asked.append(enabled)
        yield

    monkeypatch.setattr(training, "compile_notices", recorder)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 4))
    model = fastmlp.Sequential([fastmlp.Dense(4, 3)], seed=0)
    model.fit(X, rng.integers(0, 3, 16), epochs=1, batch_size=8, verbose=verbose)
    # Verbose fits ask for notices; a quiet one leaves the caller's setting (off by default,
    # on under the CLI and the demo) as it is.
    assert asked == ([True] if verbose else [])


COVERED_CHILD = RECORD_COMPILES + r"""
import json
import numpy as np
import fastmlp
from fastmlp import Adam, Dense, SGD, Sequential
rng = np.random.default_rng(1)
X = rng.normal(size=(40, 5)).astype(np.float32)
y = rng.integers(0, 4, size=40)
for optimizer in (SGD(lr=0.1, momentum=0.9), Adam(lr=0.01)):
    model = Sequential([Dense(5, 6, activation="tanh"), Dense(6, 4)], loss="multiclass_hinge",
                       optimizer=optimizer, seed=3)
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    model.fit(X, y, epochs=1, batch_size=16, sample_weight=rng.uniform(size=40), verbose=0)
    model.train_step(X[:16], y[:16])
    model.evaluate(X, y)
    model.predict(X)
    with fastmlp.reproducible():
        model.predict(X)
print(json.dumps(compiled))
"""


@pytest.fixture(scope="module")
def float32_dense_cache(tmp_path_factory):
    """A cache that ``fastmlp compile`` filled with one combination, in a fresh interpreter:
    the environment that points at it, and that command's finished process."""
    cache = tmp_path_factory.mktemp("float32-dense") / "cache"
    env = _env(NUMBA_CACHE_DIR=str(cache), NUMBA_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "fastmlp", "compile", "--dtype", "float32",
                          "--features", "dense", "--builds", "serial"],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr
    return env, cache, run


def test_fastmlp_compile_fills_the_cache_for_what_it_names(float32_dense_cache):
    # A fresh interpreter compiled one combination into an empty cache; then another, with
    # a model of that combination (another loss, activation, sizes, both optimizers, with
    # and without weights), must load everything and compile nothing.
    env, cache, run = float32_dense_cache
    # Its own report, one line per combination (the compile notices come in between).
    report = [line for line in run.stderr.splitlines() if line.startswith("fastmlp compile:")]
    assert report[0].startswith(f"fastmlp compile: cache directory {cache}"), report
    assert len(report) == 2 and report[1].startswith("fastmlp compile: float32 dense serial: "), report
    child = subprocess.run([sys.executable, "-c", COVERED_CHILD], capture_output=True, text=True,
                           env=env, timeout=900)
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout.strip().splitlines()[-1]) == []


def test_numba_loads_kernels_as_kernel_cache_expects():
    from fastmlp.jitcache import KernelCache, numba_loads_as_expected
    from fastmlp.kernels import network

    assert numba_loads_as_expected(), (
        "numba's FunctionCache.load_overload is not the refresh-then-load that "
        "fastmlp.jitcache.KernelCache replaces: read it again, and adapt KernelCache or drop it")
    assert type(network.train_epoch._cache) is KernelCache


# A warm start: a model fitted from the filled cache, then code the cache does not hold.
WARM_CHILD = RECORD_COMPILES + r"""
import hashlib, json, math, sys
import numba
import numpy as np
from fastmlp import Dense, SGD, Sequential
from fastmlp.kernels import activations
rng = np.random.default_rng(5)
X = rng.normal(size=(48, 5)).astype(np.float32)
y = rng.integers(0, 3, size=48)
model = Sequential([Dense(5, 7, activation="relu"), Dense(7, 3)], optimizer=SGD(lr=0.1), seed=2)
model.fit(X, y, epochs=2, batch_size=16, verbose=0)
compiled_by_fit = list(compiled)
# numba.np.npyimpl holds numba's lowering of numpy's ufuncs: only a refresh of its compiler
# imports it, which loading machine code must not have needed.
refreshed = "numba.np.npyimpl" in sys.modules
# Modules a compilation needs and loading kernels does not (fastmlp.blas_library, the
# view in kernels.network): 0.04-0.07 s each of a warm start.
WITH_THE_COMPILER = ("numba.np.arraymath", "numba.np.arrayobj", "scipy.linalg")
imported_by_fit = [name for name in WITH_THE_COMPILER if name in sys.modules]

@numba.njit
def users_function(x):
    return math.erf(x) + np.sum(np.exp(np.zeros(3)))

a = np.array([[0.5, -1.0], [0.0, 2.0]])
delta = np.ones((2, 2))
activations.activation_grad(a, delta, activations.RELU, 0.0, None)
print(json.dumps({"compiled_by_fit": compiled_by_fit, "refreshed": refreshed, "compiled": compiled,
                  "imported_by_fit": imported_by_fit,
                  "imported_by_compiling": [name for name in WITH_THE_COMPILER
                                            if name in sys.modules],
                  "params": hashlib.sha256(model.params.tobytes()).hexdigest(),
                  "users_function": users_function(0.5), "relu_grad": delta.tolist()}))
"""


def test_a_warm_start_loads_without_refreshing_numbas_compiler(float32_dense_cache):
    # Loading the machine code needs numba's runtime only (jitcache.KernelCache); what the
    # process compiles afterwards still finds numba's compiler whole.
    env, _, _ = float32_dense_cache
    warm = _child(env, script=WARM_CHILD)
    assert warm["compiled_by_fit"] == [] and warm["refreshed"] is False, warm
    assert warm["imported_by_fit"] == [], warm
    # Compiling brings numba's array code in, and its check of SciPy's BLAS module runs
    # without importing scipy.linalg (fastmlp.blas_library.prepare_compiler).
    assert warm["imported_by_compiling"] == ["numba.np.arraymath", "numba.np.arrayobj"], warm
    rng = np.random.default_rng(5)
    X = rng.normal(size=(48, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=48)
    model = Sequential([Dense(5, 7, activation="relu"), Dense(7, 3)], optimizer=SGD(lr=0.1),
                       seed=2)
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    assert warm["params"] == hashlib.sha256(model.params.tobytes()).hexdigest()
    # (with the overloads numba compiles for the user's function)
    assert {"users_function", "_activation_grad_rows"} <= set(warm["compiled"]), warm["compiled"]
    assert warm["users_function"] == math.erf(0.5) + 3.0
    assert warm["relu_grad"] == [[1.0, 0.0], [0.0, 1.0]]


def test_one_thread_compiles_the_parallel_build_only_for_reproducible_mode(capsys):
    # One thread runs the parallel build only in reproducible mode: outside it the build is
    # skipped, with a line that says how to compile it (nothing is compiled here).
    from fastmlp.precompile import precompile

    with fastmlp.threads(1):
        done = precompile(dtypes=["float32"], features=["dense"], builds=["parallel"], verbose=True)
    assert done == []
    assert "float32 dense parallel: skipped" in capsys.readouterr().err
