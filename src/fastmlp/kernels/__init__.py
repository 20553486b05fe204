"""Numba kernels: pure functions over arrays the caller owns.

Nothing here validates input or allocates in a hot loop; the API layer above
(:mod:`fastmlp.sequential`) owns validation, state and buffers.
"""
