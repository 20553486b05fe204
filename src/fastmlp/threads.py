"""One owner for the thread count of both pools a training step uses.

Numba's ``prange`` kernels run on numba's pool; matrix products go to the BLAS that
numba's ``np.dot`` calls (SciPy's OpenBLAS), which has a pool of its own.  Left to their
defaults on a small machine the two pools fight for the same cores, so fastmlp sets both
together.
"""

import contextlib
import numbers

import numba


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
    """Numba's thread count in the calling thread (the BLAS count is set alongside it)."""
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
