"""Bit-for-bit behaviour of the training loop: hashes of fixed runs (tests/behaviour_runs.py).

Two checks, because float results are only bit-stable on one software and hardware stack:

1. ``test_paths_that_must_agree_do``: runs on *any* machine.  Pairs of runs that are the
   same computation by construction must give identical hashes: a fit with a progress bar
   (each epoch's steps run in slices) and the same fit without; a run interrupted and
   resumed from its checkpoint and one that never stopped (single process and 2 MPI
   ranks); every MPI rank's replica.  Each pair compares two independent paths, so this
   test fails when either drifts, whatever the machine.
2. ``test_hashes_match_the_recorded_ones``: every run against the hashes stored in
   tests/behaviour_hashes.json under this machine's key (BLAS library, version and kernel
   family, host CPU as LLVM names it, numpy, numba and scipy versions; see
   ``behaviour_runs.machine_key``).  It proves that a refactor of the loop changed no bit.
   On a machine whose key has no stored hashes it **skips, saying so**: another BLAS kernel
   family or CPU may round differently, and a mismatch there would say nothing about the
   code.  Record them there with ``python tests/behaviour_runs.py record`` on the commit
   before a change, then run this test after it.  A change that is meant to change the
   numbers (a new kernel) re-records, and says so in its commit.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import behaviour_runs as runs

HERE = Path(__file__).parent
MPIEXEC = Path(sys.executable).parent / "mpiexec"
TIMEOUT_S = 300


def _mpi_hashes(tmp_path):
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None, "mpi4py is not installed"
    if not MPIEXEC.exists():
        return None, f"no {MPIEXEC}"
    out = tmp_path / "mpi.json"
    env = dict(os.environ, UCX_NET_DEVICES="lo", HYDRA_IFACE="lo", PYTHONUNBUFFERED="1",
               NUMBA_NUM_THREADS=str(runs.THREADS))
    proc = subprocess.run([str(MPIEXEC), "-launcher", "fork", "-n", "2", sys.executable,
                           str(HERE / "behaviour_runs.py"), "mpi", str(out)],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT_S, cwd=HERE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), None


@pytest.fixture(scope="module")
def hashes(tmp_path_factory):
    found = runs.single_process_runs()
    mpi, why = _mpi_hashes(tmp_path_factory.mktemp("behaviour"))
    if mpi is not None:
        found.update(mpi)
    return found, why


def test_paths_that_must_agree_do(hashes):
    found, why_no_mpi = hashes
    checked = 0
    for a, b, why in runs.MUST_AGREE:
        if a.startswith("mpi_") and why_no_mpi:
            continue
        assert found[a] == found[b], f"{a} != {b}: {why}"
        checked += 1
    for name, agree in found.items():
        if name.endswith(".ranks_agree"):
            assert agree is True, f"{name[:-12]}: the MPI ranks ended with different replicas"
    assert checked >= 2
    if why_no_mpi:
        pytest.skip(f"the single-process pairs agree; MPI pairs not run: {why_no_mpi}")


def test_hashes_match_the_recorded_ones(hashes):
    found, why_no_mpi = hashes
    key = runs.machine_key()
    stored = runs.load_store()["machines"].get(key)
    if stored is None:
        pytest.skip(f"no hashes recorded for this machine ({key}); floats are only bit-stable "
                    "on one BLAS kernel family, CPU and library versions.  The code paths "
                    "that must agree were still compared (test_paths_that_must_agree_do).  "
                    "Record with: python tests/behaviour_runs.py record")
    changed = [name for name, digest in stored.items()
               if not (name.startswith("mpi_") and why_no_mpi) and found[name] != digest]
    assert not changed, (f"these runs no longer end bit-identical to the recorded ones "
                         f"({key}): {changed}")
    if why_no_mpi:
        pytest.skip(f"single-process runs match; MPI runs not checked: {why_no_mpi}")
