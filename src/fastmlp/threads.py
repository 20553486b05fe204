"""One owner for the threads a training step uses: numba's pool.

Matrix products go to the BLAS numba calls (SciPy's OpenBLAS), which has a thread pool of
its own.  Left to their defaults the two pools fight for the same cores: a ``prange``
kernel next to a multithreaded BLAS call ran 30-100 times slower on 2 cores.  So fastmlp
keeps that BLAS on one thread (:func:`pin_blas`, done when a model is built) and splits
large products into blocks over numba's threads itself (``kernels.blas.matmul``): no two
threads write one element or split a sum, so results on different thread counts agree to
rounding (OpenBLAS may round a block differently from the whole product; see
docs/architecture.md, "Threads").  numpy's own BLAS, a separate library in the PyPI wheels,
is left alone.

Reproducible mode (:func:`set_reproducible`) trades speed for results that do not depend
on the thread count or, for predictions, on the other rows of a call.
"""

import contextlib
import numbers
import os

import numba

from fastmlp.blas_library import load_kernel_blas

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


_blas_pinned = False

#: The default ``split`` of reproducible mode (:func:`set_reproducible`).  More blocks let
#: more threads help with a product, at a cost on fewer threads: on one thread of the
#: development machine 4 blocks made a large product 1-9 % slower, 8 blocks 2-18 %.
REPRODUCIBLE_SPLIT = 4

# None: reproducible mode off; else the thread count the kernels split their work for.
_reproducible_split = None


def _is_inside(path, directory):
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return os.path.commonpath([path, directory]) == directory


def forked_after_openmp():
    """Whether this process is a child forked after its parent ran numba's GNU OpenMP pool:
    then no ``prange`` driver may run in it (see the module notes)."""
    return _serial_after_fork


def fastmlp_blas_libraries():
    """threadpoolctl's records of the BLAS that numba's kernels call: SciPy's own copy when
    SciPy ships one (PyPI wheels), else every BLAS loaded (a shared system or conda BLAS)."""
    import scipy
    import threadpoolctl

    # threadpoolctl only sees libraries already loaded: load the one numba calls first.
    load_kernel_blas()
    libraries = threadpoolctl.ThreadpoolController().select(user_api="blas")
    scipy_home = os.path.dirname(os.path.dirname(scipy.__file__))
    own = [lib.filepath for lib in libraries.lib_controllers
           if _is_inside(lib.filepath, os.path.join(scipy_home, "scipy.libs"))
           or _is_inside(lib.filepath, os.path.dirname(scipy.__file__))]
    return libraries.select(filepath=own) if own else libraries


def pin_blas():
    """Keep the BLAS that numba's kernels call on one thread (idempotent)."""
    global _blas_pinned
    if not _blas_pinned:
        fastmlp_blas_libraries().limit(limits=1)
        _blas_pinned = True


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
    """Train and predict on ``n`` threads from now on.

    ``n`` threads go to numba's pool, which also runs the matrix products block by block;
    the BLAS underneath stays on one thread, so the two pools never oversubscribe the
    cores.  Numba's setting is per calling thread (numba's own rule): call this from the
    thread that trains.
    """
    n = _check_count(n)
    pin_blas()
    numba.set_num_threads(n)


@contextlib.contextmanager
def threads(n):
    """Context manager: train and predict on ``n`` threads inside the block (as
    :func:`set_num_threads`), the previous count restored after.

    Examples
    --------
    >>> import fastmlp
    >>> with fastmlp.threads(1):
    ...     fastmlp.get_num_threads()
    1
    """
    n = _check_count(n)
    pin_blas()
    previous = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        yield n
    finally:
        numba.set_num_threads(previous)


def set_reproducible(enabled, split=REPRODUCIBLE_SPLIT):
    """Turn reproducible mode on or off for the whole process.

    In reproducible mode:

    - training gives bitwise the same weights whatever the thread count: the kernels cut
      their work into blocks chosen by the array shapes and ``split`` alone, as if for
      ``split`` threads, and the threads (1 or 16) only share the blocks out;
    - ``predict``, ``predict_proba`` and ``decision_function`` compute every row on its
      own, through the same one-row buffers: a row's result is bitwise the same whatever
      other rows come with it and whatever the thread count.

    It costs speed, the more the larger the layers: a large product made of more blocks
    than there are threads, and predictions of many rows one row at a time
    (docs/performance.md gives the figures).  Results still depend on ``split``, the CPU's
    BLAS kernel family, the dtype and the library versions.

    Parameters
    ----------
    enabled : bool
    split : int, default ``REPRODUCIBLE_SPLIT`` (4)
        Blocks per large product: no more threads than this help with one.  Runs agree
        bit for bit only with the same ``split``.
    """
    global _reproducible_split
    if not isinstance(enabled, bool):
        raise TypeError(f"set_reproducible takes True or False, got {enabled!r}")
    if isinstance(split, bool) or not isinstance(split, numbers.Integral) or split < 1:
        raise ValueError(f"split must be an integer >= 1, got {split!r}")
    _reproducible_split = int(split) if enabled else None


def get_reproducible():
    """Whether reproducible mode (:func:`set_reproducible`) is on."""
    return _reproducible_split is not None


@contextlib.contextmanager
def reproducible(enabled=True, split=REPRODUCIBLE_SPLIT):
    """Context manager: reproducible mode (:func:`set_reproducible`) inside the block, the
    previous setting restored after.

    Examples
    --------
    >>> import fastmlp
    >>> with fastmlp.reproducible():
    ...     fastmlp.get_reproducible()
    True
    """
    global _reproducible_split
    previous = _reproducible_split
    set_reproducible(enabled, split)
    try:
        yield
    finally:
        _reproducible_split = previous


def work_split():
    """The thread count the kernels split their work for: reproducible mode's ``split``,
    else :func:`get_num_threads`.  Only the blocks depend on it; the threads that run them
    are numba's, as many as :func:`set_num_threads` chose."""
    return get_num_threads() if _reproducible_split is None else _reproducible_split
