"""Load the BLAS that numba's kernels call, without importing ``scipy.linalg``.

The kernels multiply through numba's ``numba_xxgemm`` and ``numba_xxgemv`` helpers
(:mod:`fastmlp.kernels.blas`).  On its first call each helper looks its BLAS function up in
``scipy.linalg.cython_blas``, and numba checks that this module imports when it first sets
up its compiler (importing ``numba.np.arraymath``, before its first compilation).  Both
import it by name, and Python imports a package before its modules: the whole of
``scipy.linalg``, 0.13-0.15 s on the development machine, a fifth of a warm start, for one
compiled extension module that loads in 6 ms and needs nothing from its package.

:func:`load_kernel_blas` loads that module on its own, checks that numba's helpers and it
agree on the width of BLAS integers (numba's own check, which comes with its compiler),
lets the helpers look up their functions while the module stands in ``sys.modules``, then
takes the entry out again: a later ``import scipy.linalg.cython_blas`` is an ordinary
import (it gets the same module object, and ``scipy.linalg`` gets its attribute).  Before
numba first compiles in the process, :func:`prepare_compiler` (run by a ``numba:compile``
listener) puts the module back while numba imports ``numba.np.arraymath`` and runs its
check.  A process that only loads cached kernels never imports that module of numba's
(0.04 s of a warm start).  Where any of this does not apply (SciPy laid out otherwise, the
module already imported) it is the ordinary import.
"""

import ctypes
import importlib.machinery
import importlib.util
import os
import sys
import threading

import numpy as np
from numba.core import event

_MODULE = "scipy.linalg.cython_blas"

# Held while the module stands in ``sys.modules`` half loaded: another thread's first model
# waits here instead of finding it there and running a product before the helpers can.
_loading = threading.Lock()
_loaded = False
_compiler_prepared = False
# The module as this file loaded it, None where it was an ordinary import.
_standalone_module = None

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


def _blas_integers_are_64_bit():
    """Whether the installed SciPy's ``cython_blas`` takes 64-bit integers (ILP64), as
    SciPy records it; builds from before that record were all 32-bit."""
    try:
        from scipy.__config__ import CONFIG

        return bool(CONFIG["Build Dependencies"]["blas"]["cython blas ilp64"])
    except (ImportError, KeyError, TypeError):
        return False


def _helpers_take_64_bit_integers():
    """Whether numba's BLAS helpers were built for 64-bit integers (ILP64); a numba without
    that record has 32-bit ones."""
    from numba import _helperlib

    return bool(getattr(_helperlib, "LAPACK_BUILD_ILP64", False))


def _check_integer_width():
    # numba's check (numba.np.linalg._check_lapack_int_width), which only runs with its
    # compiler: helpers built for one integer width called with the other width's BLAS
    # corrupt memory instead of failing.
    helpers_64_bit = _helpers_take_64_bit_integers()
    if helpers_64_bit != _blas_integers_are_64_bit():
        widths = {True: "64-bit (ILP64)", False: "32-bit (LP64)"}
        raise RuntimeError(
            f"numba's BLAS helpers take {widths[helpers_64_bit]} integers but SciPy's "
            f"cython_blas takes {widths[not helpers_64_bit]} ones: install a numba and a "
            "SciPy built for the same width")


def load_kernel_blas():
    """Load the BLAS library the kernels call, so that threadpoolctl can see it and the
    first product does not pay for ``scipy.linalg`` (see the module notes).  Idempotent
    and thread-safe."""
    with _loading:
        _load_once()


def prepare_compiler():
    """Let numba import ``numba.np.arraymath``, which checks for SciPy's BLAS module, while
    that module stands in ``sys.modules`` (see the module notes).  Idempotent and
    thread-safe; cheap after the first call."""
    global _compiler_prepared
    if _compiler_prepared:
        return
    with _loading:
        if _compiler_prepared:
            return
        _load_once()
        if "numba.np.arraymath" not in sys.modules and _standalone_module is not None \
                and _MODULE not in sys.modules:
            sys.modules[_MODULE] = _standalone_module
            try:
                import numba.np.arraymath  # noqa: F401
            finally:
                del sys.modules[_MODULE]
        _compiler_prepared = True


class _PrepareCompiler(event.Listener):
    """Runs :func:`prepare_compiler` when numba starts compiling anything: the compiler
    refreshes its registries, importing ``numba.np.arraymath``, after this event."""

    def on_start(self, ev):
        prepare_compiler()

    def on_end(self, ev):
        pass


event.register("numba:compile", _PrepareCompiler())


def _load_once():
    global _loaded
    if not _loaded:
        _load()
        _loaded = True


def _load():
    global _standalone_module
    _check_integer_width()
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
        _look_up_helper_functions()
    finally:
        del sys.modules[_MODULE]
    _standalone_module = module
