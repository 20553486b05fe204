"""Numba kernels: pure functions over arrays the caller owns.

Nothing here validates input or allocates in a hot loop; the API layer above
(:mod:`fastmlp.sequential`) owns validation, state and buffers.

Every kernel that may split work over threads takes ``n_threads``: an int, or None for the
*serial build*.  numba removes a branch on ``argument is None`` before it types the code, so
with None no ``prange`` driver is compiled at all, about half of a first fit's compile
time; :meth:`fastmlp.workspace.Workspace.kernel_threads` passes None whenever the work is
too small to be split anyway, which keeps the results bit for bit those of ``n_threads``.
The maxout buffers in :class:`~fastmlp.kernels.network.NetBuffers` are None the same way
for networks without maxout layers.

A row kernel (``_*_rows``) is called on rows ``row_start`` to ``row_stop``: by its
``prange`` driver once per chunk, and on all rows from ``np.int64(0)``, never a plain ``0``,
which numba types as ``Literal[int](0)``: it would compile a second copy of each row
kernel for the whole-array call, beside the drivers' (each row kernel compiled twice in the
parallel build).

The modules are imported here, inside :func:`fastmlp.jitcache.kernel_cache`, so that their
compiled code is cached where that module decides (a per-user directory when the package
is read-only), dropped when any kernel source changes, and compiled by one process at a
time.  :mod:`fastmlp.numba_inlining` is installed when anything first compiles: numba
then inlines the one-line helpers without two copies of their IR that it never uses (1.6-2 s
of a first fit).  The private kernels that only other kernels call have no entry point from
Python (:mod:`fastmlp.compiled_only`): a call from Python raises TypeError.  A call from
Python of an inlined helper runs a cached copy of it (:mod:`fastmlp.inline_copies`).
"""

from fastmlp import compiled_only, inline_copies, jitcache, numba_inlining

numba_inlining.install_at_first_compilation()
with jitcache.kernel_cache():
    from fastmlp.kernels import (activations, blas, checks, dense, dropout, gather, layer_norm,
                                 losses, network, optim, schedules)

#: Every kernel module, in the order they are guarded.
MODULES = (activations, blas, checks, dense, dropout, gather, layer_norm, losses, network, optim,
           schedules)

for _module in MODULES:
    jitcache.guard_module(_module)
    compiled_only.refuse_python_calls(_module)
    inline_copies.cache_python_calls(_module)
del _module
