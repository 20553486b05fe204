"""One owner for the thread count of both pools a training step uses.

Numba's ``prange`` kernels run on numba's pool; matrix products go to the BLAS that
numba's ``np.dot`` calls (SciPy's OpenBLAS), which has a pool of its own.  Left to their
defaults on a small machine the two pools fight for the same cores, so fastmlp sets both
together.
"""

import contextlib
import numbers
import os

import numba

# GNU OpenMP cannot run in a child forked from a process that already used it: numba's
# omp layer then kills the child ("fork() called from a process already using GNU
# OpenMP").  fastmlp passes the thread count into its kernels, so a forked child simply
# runs them serially and never touches the inherited pool.
_serial_after_fork = False


def _after_fork_in_child():
    global _serial_after_fork
    try:
        layer = numba.threading_layer()
    except ValueError:  # the parent never started numba's pool: the child may
        return
    _serial_after_fork = layer == "omp"


os.register_at_fork(after_in_child=_after_fork_in_child)


def _load_blas():
    # threadpoolctl only limits libraries already loaded: load the BLAS numba calls into
    # (and numpy's own) before asking it to.
    import numpy  # noqa: F401
    import scipy.linalg.cython_blas  # noqa: F401
    import threadpoolctl

    return threadpoolctl


def _check_count(n):
    max_threads = numba.config.NUMBA_NUM_THREADS
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= max_threads:
        raise ValueError(f"the thread count must be an integer in [1, {max_threads}] "
                         f"(NUMBA_NUM_THREADS, read at start-up, is the maximum), got {n!r}")
    return int(n)


def get_num_threads():
    """Threads fastmlp's kernels use in the calling thread: numba's count, or 1 in a child
    forked after the parent ran numba's OpenMP pool (see the module notes)."""
    if _serial_after_fork:
        return 1
    return numba.get_num_threads()


def set_num_threads(n):
    """Use ``n`` threads for numba kernels and BLAS calls alike, from now on.

    Numba's setting is per calling thread (numba's own rule): call this from the thread
    that trains.  The BLAS setting is process-wide.
    """
    n = _check_count(n)
    _load_blas().threadpool_limits(limits=n, user_api="blas")
    numba.set_num_threads(n)


@contextlib.contextmanager
def threads(n):
    """Context manager: ``n`` threads for numba and BLAS inside the block, restored after.

    Examples
    --------
    >>> import fastmlp
    >>> with fastmlp.threads(1):
    ...     fastmlp.get_num_threads()
    1
    """
    n = _check_count(n)
    previous = numba.get_num_threads()
    with _load_blas().threadpool_limits(limits=n, user_api="blas"):
        numba.set_num_threads(n)
        try:
            yield n
        finally:
            numba.set_num_threads(previous)
