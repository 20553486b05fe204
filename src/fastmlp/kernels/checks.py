"""Input checks that run without temporary arrays (so validated steps stay allocation-free)."""

import numpy as np
from numba import njit


# Deliberately not fastmath: the check must see every NaN and Inf.
@njit(cache=True, nogil=True)
def count_nonfinite(x):
    """Number of NaN or Inf elements in ``x`` (any shape, contiguous)."""
    count = 0
    for v in x.flat:
        if not np.isfinite(v):
            count += 1
    return count


@njit(cache=True, nogil=True)
def first_label_out_of_range(labels, n_classes):
    """Index of the first label outside ``[0, n_classes)``, or -1 if every label fits."""
    for i in range(labels.shape[0]):
        if labels[i] < 0 or labels[i] >= n_classes:
            return i
    return -1


@njit(cache=True, nogil=True)
def count_not_binary(x):
    """Number of elements of ``x`` that are neither 0 nor 1."""
    count = 0
    for v in x.flat:
        if v != 0 and v != 1:
            count += 1
    return count


@njit(cache=True, nogil=True)
def count_not_integral(x):
    """Number of elements of the float array ``x`` with a fractional part."""
    count = 0
    for v in x.flat:
        if v != np.floor(v):
            count += 1
    return count
