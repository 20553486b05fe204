"""Load the BLAS that numba's kernels call, without importing ``scipy.linalg``.

The kernels multiply through numba's ``numba_xxgemm`` and ``numba_xxgemv`` helpers
(:mod:`fastmlp.kernels.blas`).  On its first call each helper looks its BLAS function up in
``scipy.linalg.cython_blas``, and numba checks that this module imports when it first sets
up its compiler (before its first compilation).  Both import it by name, and Python
imports a package before its modules: the whole of ``scipy.linalg``, 0.13-0.15 s on the
development machine, a fifth of a warm start, for one compiled extension module that loads
in 6 ms and needs nothing from its package.

:func:`load_kernel_blas` loads that module on its own, lets numba run its check and the
helpers look up their functions while the module stands in ``sys.modules``, then takes
the entry out again: a later ``import scipy.linalg.cython_blas`` is an ordinary import
(it gets the same module object, and ``scipy.linalg`` gets its attribute).  Where any of
this does not apply (SciPy laid out otherwise, the module already imported) it is the
ordinary import.
"""

import ctypes
import importlib.machinery
import importlib.util
import os
import sys
import threading

import numpy as np

_MODULE = "scipy.linalg.cython_blas"

# Held while the module stands in ``sys.modules`` half loaded: another thread's first model
# waits here instead of finding it there and running a product before the helpers can.
_loading = threading.Lock()
_loaded = False

# The helpers' C signatures (numba/_lapack.c), as kernels.blas declares them for numba.
_GEMM_PROTOTYPE = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_char, ctypes.c_char, ctypes.c_char, ctypes.c_ssize_t,
    ctypes.c_ssize_t, ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ssize_t,
    ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ssize_t)
_GEMV_PROTOTYPE = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_char, ctypes.c_char, ctypes.c_ssize_t, ctypes.c_ssize_t,
    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_void_p, ctypes.c_void_p,
    ctypes.c_void_p)


def _look_up_helper_functions():
    # One 1 x 1 product per helper and kind the kernels use (float32 "s", float64 "d"):
    # each helper caches the function it found, so none of them imports the module again.
    from numba import _helperlib

    gemm = _GEMM_PROTOTYPE(_helperlib.c_helpers["xxgemm"])
    gemv = _GEMV_PROTOTYPE(_helperlib.c_helpers["xxgemv"])
    for kind, dtype in ((b"s", np.float32), (b"d", np.float64)):
        one, zero, out = np.ones(1, dtype), np.zeros(1, dtype), np.zeros(1, dtype)
        a, b, c = one.ctypes.data, zero.ctypes.data, out.ctypes.data
        if gemm(kind, b"N", b"N", 1, 1, 1, a, a, 1, a, 1, b, c, 1) != 0:
            raise RuntimeError(f"numba's gemm helper found no {kind.decode()}gemm")
        if gemv(kind, b"N", 1, 1, a, a, 1, a, b, c) != 0:
            raise RuntimeError(f"numba's gemv helper found no {kind.decode()}gemv")


def load_kernel_blas():
    """Load the BLAS library the kernels call, so that threadpoolctl can see it and the
    first product does not pay for ``scipy.linalg`` (see the module notes).  Idempotent
    and thread-safe."""
    global _loaded
    with _loading:
        if not _loaded:
            _load()
            _loaded = True


def _load():
    if _MODULE in sys.modules or "scipy.linalg" in sys.modules:
        import scipy.linalg.cython_blas  # noqa: F401
        return
    import scipy

    spec = importlib.machinery.PathFinder.find_spec(
        _MODULE, [os.path.join(os.path.dirname(scipy.__file__), "linalg")])
    if spec is None:
        import scipy.linalg.cython_blas  # noqa: F401
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE] = module
    try:
        spec.loader.exec_module(module)
        # numba's check (SciPy's integer width against numba's) runs when this module of
        # numba's is first imported, and again here in case it was imported before.
        import numba.np.arraymath  # noqa: F401
        from numba.np.linalg import ensure_blas

        ensure_blas()
        _look_up_helper_functions()
    finally:
        del sys.modules[_MODULE]
