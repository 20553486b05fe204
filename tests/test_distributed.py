"""Data-parallel training over MPI (fastmlp.distributed), run for real under mpiexec.

Each test launches ``mpiexec -n 2`` or ``-n 3`` (more ranks than this machine's 2 cores, on
purpose) from the virtual environment's own ``bin/`` on tests/mpi_train.py, on loopback
only, with a hard timeout that kills the whole process group, so a hanging rank fails the
test instead of the suite.  Skipped when mpi4py or its mpiexec is not installed
(``pip install '.[test]'`` installs both).
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SCRIPT = HERE / "mpi_train.py"
MPIEXEC = Path(sys.executable).parent / "mpiexec"
#: Generous: the first run may compile the float64 kernels (cached afterwards).
TIMEOUT_S = 240

needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or not MPIEXEC.exists(),
    reason=f"needs mpi4py and {MPIEXEC} (pip install 'fastmlp[mpi]')")


def mpiexec(n, program):
    """Run ``program`` (argv) under ``mpiexec -n N`` on loopback; (returncode, output)."""
    env = dict(os.environ, UCX_NET_DEVICES="lo", HYDRA_IFACE="lo", PYTHONUNBUFFERED="1")
    env.pop("NUMBA_NUM_THREADS", None)  # the threads test needs numba's default
    cmd = [str(MPIEXEC), "-launcher", "fork", "-n", str(n), *program]
    # A session of its own, so a timeout can kill every rank (and hydra's proxy) at once.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=HERE, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"mpiexec -n {n} {program} hung for {TIMEOUT_S} s and was killed:\n{output}")
    return proc.returncode, output


def mpirun(mode, n, tmp_path):
    """Run tests/mpi_train.py MODE under ``mpiexec -n N``; (returncode, output, rank 0's JSON)."""
    out = tmp_path / f"{mode}-{n}.json"
    returncode, output = mpiexec(n, [sys.executable, str(SCRIPT), mode, str(n), str(out)])
    result = json.loads(out.read_text()) if out.exists() else None
    return returncode, output, result


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_equal_shards_match_single_process(n, tmp_path):
    rc, output, result = mpirun("equal", n, tmp_path)
    assert rc == 0, output
    assert result["size"] == n
    for key in ("equal", "adam"):
        eq = result[key]
        # Bit-identical replicas; the same steps as one process on the concatenated batches,
        # float64, so only summation order separates them.
        assert eq["identical"], (key, eq)
        assert eq["steps"] == [eq["ref_steps"]] * n, (key, eq)
        assert eq["max_abs_diff"] < 1e-12, (key, eq)
        assert eq["loss_diff"] < 1e-12, (key, eq)
    shuffled = result["shuffled"]
    assert shuffled["identical"] and shuffled["same_history"], shuffled
    assert shuffled["keys"] == ["loss", "val_accuracy", "val_loss"]


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_uneven_shards_weight_rows(n, tmp_path):
    # Shards of 9, 5 (, 2) rows with batch 3: uneven last batches, and with 3 ranks one rank
    # runs out after its first step and joins the later ones with weight 0.
    rc, output, result = mpirun("uneven", n, tmp_path)
    assert rc == 0, output
    un = result["uneven"]
    assert un["identical"], un
    assert un["steps"] == [un["ref_steps"]] * n
    assert un["max_abs_diff"] < 1e-12, un
    assert un["loss_diff"] < 1e-12, un


@needs_mpi
def test_threads_per_rank(tmp_path):
    rc, output, result = mpirun("threads", 3, tmp_path)
    assert rc == 0, output
    t = result["threads"]
    cores = os.cpu_count()
    expected = max(1, min(t["max"], cores // 3))
    assert t["default"] == [[expected]] * 3
    assert t["after"] == t["before"]  # restored when fit_distributed returns
    assert t["user_set"] == [[t["max"]]] * 3  # NUMBA_NUM_THREADS set: left alone


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_bad_input_on_one_rank_raises_on_every_rank(n, tmp_path):
    rc, output, _ = mpirun("bad", n, tmp_path)
    assert rc != 0
    message = f"fit_distributed: rank 1 of {n}: X contains 1 NaN or Inf value(s)"
    assert output.count(message) == n, output  # the same error on every rank, none hangs
    for r in range(n):
        assert (f"rank {r} refused: fit_distributed: rank 1's model differs from rank 0's in "
                "its optimizer;") in output
        assert (f"rank {r} refused: fit_distributed: validation_data was given on some ranks "
                f"but not on rank(s) {list(range(1, n))}") in output


@needs_mpi
def test_failure_inside_the_loop_aborts_the_job(tmp_path):
    rc, output, _ = mpirun("crash", 3, tmp_path)
    assert rc != 0
    assert "injected failure on rank 1" in output
    assert "fit_distributed: rank 1 of 3 failed; aborting all ranks" in output
    assert "finished, which it must not" not in output


def test_core_does_not_import_mpi4py():
    # fastmlp, fastmlp.distributed included, must import with mpi4py unavailable.
    code = (
        "import sys\n"
        "sys.modules['mpi4py'] = None  # any import of it now fails\n"
        "import fastmlp, fastmlp.distributed\n"
        "assert 'mpi4py.MPI' not in sys.modules\n"
        "try:\n"
        "    fastmlp.distributed.fit_distributed(None, None, None, None)\n"
        "except ImportError as exc:\n"
        "    assert 'fastmlp[mpi]' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@needs_mpi
def test_cli_train_mpi_saves_one_model_from_rank_zero(tmp_path):
    import numpy as np

    import fastmlp
    from fastmlp.datasets import make_spiral

    X, y = make_spiral(n_per_class=40, seed=0)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    model_path = tmp_path / "spiral.fastmlp"
    argv = [sys.executable, "-m", "fastmlp", "train", f"{tmp_path / 'X.npy'}:{tmp_path / 'y.npy'}",
            "--mpi", "--epochs", "3", "--hidden", "16", "--threads", "1", "--out", str(model_path)]
    returncode, output = mpiexec(2, argv)
    assert returncode == 0, output
    assert output.count("saved to") == 1 and "on 2 ranks" in output
    assert output.count("epoch 3/3") == 1
    assert fastmlp.load(str(model_path)).predict(X).shape == (120,)
