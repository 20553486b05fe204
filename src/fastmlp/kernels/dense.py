"""Dense and maxout layers: fused forward pass and backward pass.

Matrix products go to single-threaded BLAS, split into row or column blocks over numba's
threads (:func:`fastmlp.kernels.blas.matmul`); the elementwise work (bias, activation, its
derivative, the bias gradient) runs in numba, split over rows or over output features.
No two threads write one element and no sum is split, so any number of chunks computes each
element by the same formula.  The whole-array call and the ``prange`` driver's chunks call
one compiled row kernel, but LLVM may inline it into either caller, and fastmath's
``reassoc`` lets it vectorise the copies differently: the one-thread and the multi-thread
results agree to rounding (a few ulp, seen in the float32 softmax gradient), and the BLAS
blocks likewise.
"""

import numpy as np
from numba import njit, prange

from fastmlp.config import INNER_JIT_OPTIONS, PARALLEL_JIT_OPTIONS, TINY_JIT_OPTIONS
from fastmlp.kernels.activations import (activation_grad, bias_activation, bias_smooth_activation,
                                         work_chunks)
from fastmlp.kernels.blas import matmul


@njit(**INNER_JIT_OPTIONS)
def _column_sum_range(x, out, col_start, col_stop):
    for j in range(col_start, col_stop):
        out[j] = 0
    for i in range(x.shape[0]):
        for j in range(col_start, col_stop):
            out[j] += x[i, j]


@njit(**PARALLEL_JIT_OPTIONS)
def _column_sum_parallel(x, out, n_chunks):
    n_cols = x.shape[1]
    for c in prange(n_chunks):
        _column_sum_range(x, out, c * n_cols // n_chunks, (c + 1) * n_cols // n_chunks)


@njit(**TINY_JIT_OPTIONS)
def column_sum(x, out, n_threads):
    """Sum over rows: ``out[j] = sum_i x[i, j]``, rows added in order 0, 1, ...

    Parameters
    ----------
    x : ndarray of shape (batch, n)
    out : ndarray of shape (n,)
        Overwritten.
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).
    """
    if n_threads is None:
        _column_sum_range(x, out, np.int64(0), x.shape[1])
        return
    n_chunks = work_chunks(x.shape[1], x.size, n_threads)
    if n_chunks == 1:
        _column_sum_range(x, out, np.int64(0), x.shape[1])
    else:
        _column_sum_parallel(x, out, n_chunks)


@njit(**TINY_JIT_OPTIONS)
def dense_forward(x, W, b, code, param, out, n_threads):
    """Fused dense layer ``out = f(x @ W + b)``.

    Parameters
    ----------
    x : ndarray of shape (batch, n_in)
    W : ndarray of shape (n_in, n_out)
    b : ndarray of shape (n_out,)
    code : int
        Activation code, see :mod:`fastmlp.kernels.activations`.
    param : float
        Activation parameter (leaky ReLU slope, ELU alpha).
    out : ndarray of shape (batch, n_out), C-contiguous
        Overwritten with the activation; it is also the cache the backward pass needs.
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).
        Threads for the elementwise work (BLAS sizes its own pool, see ``fastmlp.threads``).
    """
    matmul(x, False, W, False, out, n_threads)
    bias_activation(out, b, code, param, n_threads)


@njit(**TINY_JIT_OPTIONS)
def dense_smooth_forward(x, W, b, code, out, pre, n_threads):
    """Fused dense layer ``out = f(x @ W + b)`` for ``gelu``/``silu``, caching ``z = x @ W + b``.

    Parameters
    ----------
    x : ndarray of shape (batch, n_in)
    W : ndarray of shape (n_in, n_out)
    b : ndarray of shape (n_out,)
    code : int
        ``GELU`` or ``SILU`` (see :mod:`fastmlp.kernels.activations`).
    out : ndarray of shape (batch, n_out), C-contiguous
        Overwritten with the activation (the next layer's input).
    pre : ndarray of shape (batch, n_out)
        Overwritten with the pre-activation ``z``, the cache the backward pass needs
        (:func:`~fastmlp.kernels.activations.smooth_activation_grad`, then
        :func:`dense_backward` with the identity code).
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).
    """
    matmul(x, False, W, False, out, n_threads)
    bias_smooth_activation(out, b, code, pre, n_threads)


@njit(**TINY_JIT_OPTIONS)
def dense_backward(x, W, a, code, param, delta, grad_W, grad_b, grad_x, compute_grad_x, n_threads):
    """Backward pass of :func:`dense_forward`.

    Parameters
    ----------
    x : ndarray of shape (batch, n_in)
        The layer's input in the forward pass.
    W : ndarray of shape (n_in, n_out)
    a : ndarray of shape (batch, n_out)
        The cached output of the forward pass.
    code, param
        As in :func:`dense_forward`.
    delta : ndarray of shape (batch, n_out)
        ``dL/da`` on entry; overwritten with ``dL/dz``.
    grad_W : ndarray of shape (n_in, n_out)
        Overwritten with ``dL/dW = x.T @ dL/dz``.
    grad_b : ndarray of shape (n_out,)
        Overwritten with ``dL/db``, the column sums of ``dL/dz``.
    grad_x : ndarray of shape (batch, n_in)
        Overwritten with ``dL/dx = dL/dz @ W.T`` when ``compute_grad_x``; untouched
        otherwise (the first layer has no use for it).
    compute_grad_x : bool
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).
    """
    activation_grad(a, delta, code, param, n_threads)
    matmul(x, True, delta, False, grad_W, n_threads)
    column_sum(delta, grad_b, n_threads)
    if compute_grad_x:
        matmul(delta, False, W, True, grad_x, n_threads)


@njit(**INNER_JIT_OPTIONS)
def _maxout_select_rows(z, b, pieces, out, winner, row_start, row_stop):
    n_out = out.shape[1]
    for i in range(row_start, row_stop):
        for j in range(n_out):
            best = z[i, j] + b[j]
            best_piece = 0
            for k in range(1, pieces):
                v = z[i, k * n_out + j] + b[k * n_out + j]
                if v > best:  # strict: ties go to the lowest piece, like np.argmax
                    best = v
                    best_piece = k
            out[i, j] = best
            winner[i, j] = best_piece


@njit(**PARALLEL_JIT_OPTIONS)
def _maxout_select_parallel(z, b, pieces, out, winner, n_chunks):
    n_rows = z.shape[0]
    for c in prange(n_chunks):
        _maxout_select_rows(z, b, pieces, out, winner, c * n_rows // n_chunks, (c + 1) * n_rows // n_chunks)


@njit(**TINY_JIT_OPTIONS)
def maxout_forward(x, W, b, pieces, z, out, winner, n_threads):
    """Maxout layer ``out[:, j] = max_k (x @ W_k + b_k)[:, j]``.

    Piece ``k`` owns columns ``k * n_out : (k + 1) * n_out`` of ``W`` and ``b``, so
    ``W.reshape(n_in, pieces, n_out)[:, k, :]`` is its weight matrix.

    Parameters
    ----------
    x : ndarray of shape (batch, n_in)
    W : ndarray of shape (n_in, pieces * n_out)
    b : ndarray of shape (pieces * n_out,)
    pieces : int
    z : ndarray of shape (batch, pieces * n_out)
        Scratch for the pieces' pre-activations (reused as ``dL/dz`` by the backward pass).
    out : ndarray of shape (batch, n_out)
        Overwritten with the maxout output.
    winner : ndarray of int32, shape (batch, n_out)
        Overwritten with the index of the winning piece: the cache the backward pass needs.
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).
    """
    matmul(x, False, W, False, z, n_threads)
    if n_threads is None:
        _maxout_select_rows(z, b, pieces, out, winner, np.int64(0), z.shape[0])
        return
    n_chunks = work_chunks(z.shape[0], z.size, n_threads)
    if n_chunks == 1:
        _maxout_select_rows(z, b, pieces, out, winner, np.int64(0), z.shape[0])
    else:
        _maxout_select_parallel(z, b, pieces, out, winner, n_chunks)


@njit(**TINY_JIT_OPTIONS)
def maxout_backward(x, W, winner, pieces, delta, grad_z, grad_W, grad_b, grad_x, compute_grad_x,
                    n_threads):
    """Backward pass of :func:`maxout_forward`: the gradient flows to the winning piece only.

    Parameters
    ----------
    x : ndarray of shape (batch, n_in)
    W : ndarray of shape (n_in, pieces * n_out)
    winner : ndarray of int32, shape (batch, n_out)
        Cached by the forward pass.
    pieces : int
    delta : ndarray of shape (batch, n_out)
        Upstream gradient ``dL/d out`` (read only).
    grad_z : ndarray of shape (batch, pieces * n_out)
        Overwritten with ``dL/dz`` of every piece (zero for the losers).
    grad_W : ndarray of shape (n_in, pieces * n_out)
        Overwritten.
    grad_b : ndarray of shape (pieces * n_out,)
        Overwritten.
    grad_x : ndarray of shape (batch, n_in)
        Overwritten when ``compute_grad_x``.
    compute_grad_x : bool
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).
    """
    n_out = delta.shape[1]
    for i in range(delta.shape[0]):
        for c in range(grad_z.shape[1]):
            grad_z[i, c] = 0
        for j in range(n_out):
            grad_z[i, winner[i, j] * n_out + j] = delta[i, j]
    matmul(x, True, grad_z, False, grad_W, n_threads)
    column_sum(grad_z, grad_b, n_threads)
    if compute_grad_x:
        matmul(grad_z, False, W, True, grad_x, n_threads)
