"""The numerics-sensitive tests once more, under another OpenBLAS kernel family.

OpenBLAS picks its kernels by CPU family (``Haswell`` on AMD Zen and older Intel,
``SkylakeX`` on AVX-512 Intel, ...), and they round differently (NUMBA.md, item 13).  A
test tied to one family's rounding would pass on the machine that wrote it and fail on
another vendor's.  So the test files below run a second time in a child pytest with
``OPENBLAS_CORETYPE`` forcing a family other than this machine's own, and the child's
conftest (``pytest_configure``) checks with threadpoolctl that the BLAS fastmlp calls
really runs that family, stopping the child with an error when it does not.  The child
shares numba's on-disk cache (OPENBLAS_CORETYPE is not part of its key): a kernel that it
or this session compiles first, the other loads (jitcache's lock per kernel makes the other
wait for it), and kernels that only one of them needs compile on both cores at once.

In a one-process session the child starts when the session does and runs beside it
(:class:`OtherFamilyRun`); the test, moved to the end, waits for it.  Under pytest-xdist
(setup.cfg's default) the test goes first instead, and the worker that gets it starts the
child and waits, while the other workers go on (conftest).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
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


class OtherFamilyRun:
    """The child pytest under another kernel family, running beside the rest of the suite.

    It is a minute or more of work that needs nothing from this session.  In a one-process
    session conftest's ``pytest_collection_finish`` starts it (:func:`start_early`) before
    the first test runs and moves the test that checks it to the end, so that on a machine
    with a core to spare the two overlap instead of adding up; under pytest-xdist the test
    itself starts it, first.  Its output goes to temporary files, read only by the test's
    assertions.
    """

    def __init__(self):
        self.family = self.error = self.proc = None
        try:
            self.family = other_family(own_family())
            env = dict(_clean_env(), OPENBLAS_CORETYPE=self.family,
                       **{EXPECT_BLAS_FAMILY: self.family})
            # One process (-n 0): the session it runs beside already has a worker per core.
            cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "0", "-x",
                   "-k", f"not ({NOT_NUMERIC})", *NUMERIC_TESTS]
            # stdout and stderr apart, as subprocess.run(capture_output=True) kept them: the
            # assertions read their concatenation, whose last line is pytest's summary.
            self._stdout, self._stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            self.started = time.monotonic()
            # In this session's process group, so that Ctrl-C at the terminal or a signal to
            # the group (``timeout``, a CI runner) reaches it as it reached the child that the
            # test used to run itself; stop() covers this process ending on its own.
            self.proc = subprocess.Popen(cmd, stdout=self._stdout, stderr=self._stderr, cwd=HERE,
                                         env=env, stdin=subprocess.DEVNULL)
        except Exception as exc:  # raised by the test, not at collection
            self.error = exc

    def result(self):
        """Wait for the child (within TIMEOUT_S of its start); ``(returncode, output)``."""
        if self.error is not None:
            raise self.error
        try:
            self.proc.wait(timeout=max(0.0, TIMEOUT_S - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.stop()
            raise subprocess.TimeoutExpired(self.proc.args, TIMEOUT_S, self._read(self._stdout),
                                            self._read(self._stderr)) from None
        return self.proc.returncode, self._read(self._stdout) + self._read(self._stderr)

    @staticmethod
    def _read(file):
        file.seek(0)
        return file.read()

    def stop(self, grace_s=15):
        """End the child if it still runs: SIGTERM first, which its conftest turns into
        KeyboardInterrupt so that its pytest unwinds and the test it is in ends its own
        processes, then SIGKILL after ``grace_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


#: The run conftest started for this session, if it did.
_early_run = None


def start_early():
    """Start the child now; conftest calls this before the first test when the test below
    is selected (and never inside the child: see conftest)."""
    global _early_run
    _early_run = OtherFamilyRun()
    return _early_run


def test_numerics_hold_under_another_blas_family():
    global _early_run
    run, _early_run = _early_run or OtherFamilyRun(), None
    try:
        returncode, output = run.result()
    finally:
        run.stop()
    family = run.family
    # The child's conftest printed the family its BLAS reports, and refused to run otherwise.
    assert f"fastmlp's BLAS kernel families: ['{family}']" in output, output
    assert returncode == 0, f"under OPENBLAS_CORETYPE={family}:\n{output[-20000:]}"
    assert " passed" in output.splitlines()[-1], output


test_numerics_hold_under_another_blas_family.start_early = start_early
