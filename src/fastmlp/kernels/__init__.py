"""Numba kernels: pure functions over arrays the caller owns.

Nothing here validates input or allocates in a hot loop; the API layer above
(:mod:`fastmlp.sequential`) owns validation, state and buffers.

The modules are imported here, inside :func:`fastmlp.jitcache.kernel_cache`, so that their
compiled code is cached where that module decides (a per-user directory when the package
is read-only), dropped when any kernel source changes, and compiled by one process at a
time.
"""

from fastmlp import jitcache

with jitcache.kernel_cache():
    from fastmlp.kernels import activations, blas, checks, dense, losses, network, optim, schedules

for _module in (activations, blas, checks, dense, losses, network, optim, schedules):
    jitcache.guard_module(_module)
del _module
