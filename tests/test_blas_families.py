"""The numerics-sensitive tests once more, under another OpenBLAS kernel family.

OpenBLAS picks its kernels by CPU family (``Haswell`` on AMD Zen and older Intel,
``SkylakeX`` on AVX-512 Intel, ...), and they round differently (NUMBA.md, item 13).  A
test tied to one family's rounding would pass on the machine that wrote it and fail on
another vendor's.  So the test files below run a second time in a child pytest with
``OPENBLAS_CORETYPE`` forcing a family other than this machine's own, and the child's
conftest (``pytest_configure``) checks with threadpoolctl that the BLAS fastmlp calls
really runs that family, stopping the child with an error when it does not.  The child
shares numba's on-disk cache (OPENBLAS_CORETYPE is not part of its key), so it compiles
nothing new.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import EXPECT_BLAS_FAMILY

HERE = Path(__file__).parent
NUMERIC_TESTS = ["test_kernels.py", "test_gradients.py", "test_threads.py", "test_sequential.py",
                 "test_distributed.py"]
#: Tests in those files that check no floating-point results (error messages on every
#: rank, a crash, the CLI, thread counts, an import): one run on the machine's own family
#: is enough, and each costs an mpiexec job or a fresh interpreter.
NOT_NUMERIC = ("test_bad_input_on_one_rank or test_failure_inside_the_loop or test_cli_train_mpi "
               "or test_threads_per_rank or test_core_does_not_import_mpi4py "
               "or test_checkpoint_of_another_job or test_threading_layer_is_reported")
TIMEOUT_S = 1500


def _clean_env():
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop(EXPECT_BLAS_FAMILY, None)
    return env


def own_family():
    """The kernel family OpenBLAS picks on this machine for the BLAS fastmlp calls (asked
    in a fresh interpreter without OPENBLAS_CORETYPE: the family is chosen at load)."""
    code = ("import json; from conftest import fastmlp_blas_families; "
            "print(json.dumps(sorted(set(fastmlp_blas_families().values()))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=HERE, env=_clean_env(), timeout=120, check=True)
    families = json.loads(out.stdout)
    assert len(families) == 1 and families[0], families
    return families[0]


def other_family(own):
    """A family every x86-64 CPU fastmlp runs on can execute (AVX2 for Haswell, AVX for
    Sandybridge), other than ``own``."""
    return "Haswell" if own in ("SkylakeX", "Cooperlake", "SapphireRapids") else "Sandybridge"


def test_numerics_hold_under_another_blas_family():
    family = other_family(own_family())
    env = dict(_clean_env(), OPENBLAS_CORETYPE=family, **{EXPECT_BLAS_FAMILY: family})
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", "-k",
           f"not ({NOT_NUMERIC})", *NUMERIC_TESTS]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE, env=env,
                          timeout=TIMEOUT_S)
    output = proc.stdout + proc.stderr
    # The child's conftest printed the family its BLAS reports, and refused to run otherwise.
    assert f"fastmlp's BLAS kernel families: ['{family}']" in output, output
    assert proc.returncode == 0, f"under OPENBLAS_CORETYPE={family}:\n{output[-20000:]}"
    assert " passed" in output.splitlines()[-1], output
