"""Inverted dropout with counter-based masks.

A unit is kept or dropped by a hash of its coordinates, not by a draw from a sequential
random stream: unit ``j`` of batch row ``i`` in layer ``k`` at optimizer step ``t`` of a
model with seed ``s`` on stream (MPI rank) ``r`` is kept when

    u = (splitmix64(row_key(s, t, r, k, i) ^ j) >> 11) * 2**-53  >=  rate

(``u`` is uniform on ``[0, 1)`` in steps of ``2**-53``; the comparison is done exactly, on
the integer ``threshold = ceil(rate * 2**53)``).  So the mask depends on nothing but those
six integers: the same step on 1 or N threads, after a resume or in a gradient check draws
the same mask, bit for bit.  Kept units are scaled by ``1 / (1 - rate)``.

The mask (``0`` or ``1 / (1 - rate)`` per unit, model dtype) is written during the forward
pass and cached for the backward pass, which multiplies the upstream gradient by it.
Recomputing it there would save ``batch * width`` elements per dropout layer, but costs a
hash per element a second time; the cache is the simpler contract (what the forward pass
used is what the backward pass reads).
"""

import numpy as np
from numba import njit, prange

from fastmlp.config import INNER_JIT_OPTIONS, JIT_OPTIONS, TINY_JIT_OPTIONS, PARALLEL_JIT_OPTIONS
from fastmlp.kernels.activations import work_chunks

# splitmix64 (Steele, Lea and Flood 2014; Vigna's reference constants).
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_S32 = np.uint64(32)

#: Uniform draws are 53-bit integers: ``threshold = ceil(rate * 2**53)`` drops a unit when
#: its draw is below it.
MASK_BITS = 53

# Fields of the ``dropout_key`` vector of :class:`~fastmlp.kernels.network.NetBuffers`.
KEY_SEED, KEY_STEP, KEY_STREAM, KEY_ACTIVE = range(4)


@njit(**TINY_JIT_OPTIONS)
def splitmix64(x):
    """The splitmix64 finaliser of ``x + golden``: a bijection of uint64 with full avalanche."""
    z = x + _GOLDEN
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(**TINY_JIT_OPTIONS)
def row_key(seed, step, stream, layer, row):
    """The hash every unit of one row's mask is drawn from (all arguments int64)."""
    h = splitmix64(np.uint64(seed))
    h = splitmix64(h ^ np.uint64(step))
    h = splitmix64(h ^ ((np.uint64(stream) << _S32) ^ np.uint64(layer)))
    return splitmix64(h ^ np.uint64(row))


@njit(**INNER_JIT_OPTIONS)
def _dropout_rows(x, threshold, scale, seed, step, stream, layer, mask, out, row_start, row_stop):
    zero = out.dtype.type(0.0)
    limit = np.uint64(threshold)
    for i in range(row_start, row_stop):
        key = row_key(seed, step, stream, layer, i)
        for j in range(x.shape[1]):
            keep = (splitmix64(key ^ np.uint64(j)) >> _S11) >= limit
            m = scale if keep else zero
            mask[i, j] = m
            out[i, j] = x[i, j] * m


@njit(**PARALLEL_JIT_OPTIONS)
def _dropout_parallel(x, threshold, scale, seed, step, stream, layer, mask, out, n_chunks):
    n_rows = x.shape[0]
    for c in prange(n_chunks):
        _dropout_rows(x, threshold, scale, seed, step, stream, layer, mask, out,
                      c * n_rows // n_chunks, (c + 1) * n_rows // n_chunks)


@njit(**TINY_JIT_OPTIONS)
def dropout_forward(x, threshold, scale, seed, step, stream, layer, mask, out, n_threads):
    """Draw the mask and apply it in one pass: ``out = x * mask``.

    Parameters
    ----------
    x : ndarray of shape (batch, n)
    threshold : int
        ``ceil(rate * 2**53)``: a unit whose 53-bit draw is below it is dropped.
    scale : float
        ``1 / (1 - rate)`` in the model dtype: the mask value of a kept unit.
    seed, step, stream, layer : int
        The key (model seed, optimizer step, stream i.e. MPI rank, layer index); the row
        position in the batch and the unit index complete it.
    mask : ndarray of shape (batch, n)
        Overwritten with ``0`` or ``scale``: the cache the backward pass reads.
    out : ndarray of shape (batch, n)
        Overwritten.
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).  Rows are split; each row's
        mask depends on its position only, so every split draws the same masks.
    """
    if n_threads is None:
        _dropout_rows(x, threshold, scale, seed, step, stream, layer, mask, out, np.int64(0),
                      x.shape[0])
        return
    n_chunks = work_chunks(x.shape[0], x.size, n_threads)
    if n_chunks == 1:
        _dropout_rows(x, threshold, scale, seed, step, stream, layer, mask, out, np.int64(0),
                      x.shape[0])
    else:
        _dropout_parallel(x, threshold, scale, seed, step, stream, layer, mask, out, n_chunks)


@njit(**JIT_OPTIONS)
def dropout_backward(mask, delta, grad_x):
    """``grad_x = delta * mask``: the gradient flows through the kept units only.

    Parameters
    ----------
    mask : ndarray of shape (batch, n)
        Cached by :func:`dropout_forward`.
    delta : ndarray of shape (batch, n)
        Upstream gradient ``dL/d out`` (read only).
    grad_x : ndarray of shape (batch, n)
        Overwritten with ``dL/dx``.
    """
    for i in range(delta.shape[0]):
        for j in range(delta.shape[1]):
            grad_x[i, j] = delta[i, j] * mask[i, j]


@njit(**JIT_OPTIONS)
def copy_rows(x, out):
    """``out[...] = x`` (dropout in inference: the identity), element by element."""
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = x[i, j]
