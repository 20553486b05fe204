"""Layer normalisation over each row's features, with a learnable gain and bias.

Forward, per row ``i`` of ``x`` (``n`` features), as ``torch.nn.LayerNorm(n, eps)``::

    mu_i    = mean_j x_ij
    var_i   = mean_j (x_ij - mu_i)**2          (biased variance)
    rstd_i  = 1 / sqrt(var_i + eps)
    xhat_ij = (x_ij - mu_i) * rstd_i           cached
    y_ij    = gain_j * xhat_ij + bias_j

Backward, from ``g = dL/dy``::

    dgain_j = sum_i g_ij xhat_ij,   dbias_j = sum_i g_ij
    d_ij    = g_ij gain_j
    dx_ij   = rstd_i (d_ij - mean_j d_ij - xhat_ij mean_j (d_ij xhat_ij))

The forward pass caches ``xhat`` (batch, n) and ``rstd`` (batch,); the backward pass needs
nothing else.  Row statistics are accumulated in float64 whatever the model dtype.  Rows are
split over threads in both passes; the gain and bias gradients are column sums, each column
adding its rows in order 0, 1, ..., so the results do not depend on the split.
"""

import numpy as np
from numba import njit, prange

from fastmlp.config import INNER_JIT_OPTIONS, PARALLEL_JIT_OPTIONS, TINY_JIT_OPTIONS
from fastmlp.kernels.activations import work_chunks


@njit(**INNER_JIT_OPTIONS)
def _layer_norm_rows(x, gain, bias, eps, xhat, rstd, out, row_start, row_stop):
    n = x.shape[1]
    for i in range(row_start, row_stop):
        total = 0.0
        for j in range(n):
            total += x[i, j]
        mean = total / n
        sq = 0.0
        for j in range(n):
            d = x[i, j] - mean
            sq += d * d
        r = 1.0 / np.sqrt(sq / n + eps)
        rstd[i] = r
        for j in range(n):
            h = (x[i, j] - mean) * r
            xhat[i, j] = h
            out[i, j] = gain[j] * xhat[i, j] + bias[j]


@njit(**PARALLEL_JIT_OPTIONS)
def _layer_norm_parallel(x, gain, bias, eps, xhat, rstd, out, n_chunks):
    n_rows = x.shape[0]
    for c in prange(n_chunks):
        _layer_norm_rows(x, gain, bias, eps, xhat, rstd, out,
                         c * n_rows // n_chunks, (c + 1) * n_rows // n_chunks)


@njit(**TINY_JIT_OPTIONS)
def layer_norm_forward(x, gain, bias, eps, xhat, rstd, out, n_threads):
    """``out = gain * (x - mean) / sqrt(var + eps) + bias``, row by row.

    Parameters
    ----------
    x : ndarray of shape (batch, n)
    gain, bias : ndarray of shape (n,)
    eps : float
    xhat : ndarray of shape (batch, n)
        Overwritten with the normalised input (cached for the backward pass).
    rstd : ndarray of shape (batch,)
        Overwritten with ``1 / sqrt(var + eps)`` per row (cached).
    out : ndarray of shape (batch, n)
        Overwritten.
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).
    """
    if n_threads is None:
        _layer_norm_rows(x, gain, bias, eps, xhat, rstd, out, np.int64(0), x.shape[0])
        return
    n_chunks = work_chunks(x.shape[0], x.size, n_threads)
    if n_chunks == 1:
        _layer_norm_rows(x, gain, bias, eps, xhat, rstd, out, np.int64(0), x.shape[0])
    else:
        _layer_norm_parallel(x, gain, bias, eps, xhat, rstd, out, n_chunks)


@njit(**INNER_JIT_OPTIONS)
def _layer_norm_grad_x_rows(xhat, rstd, gain, delta, grad_x, row_start, row_stop):
    n = delta.shape[1]
    for i in range(row_start, row_stop):
        sum_d = 0.0
        sum_dh = 0.0
        for j in range(n):
            d = delta[i, j] * gain[j]
            sum_d += d
            sum_dh += d * xhat[i, j]
        mean_d = sum_d / n
        mean_dh = sum_dh / n
        r = rstd[i]
        for j in range(n):
            grad_x[i, j] = r * (delta[i, j] * gain[j] - mean_d - xhat[i, j] * mean_dh)


@njit(**PARALLEL_JIT_OPTIONS)
def _layer_norm_grad_x_parallel(xhat, rstd, gain, delta, grad_x, n_chunks):
    n_rows = delta.shape[0]
    for c in prange(n_chunks):
        _layer_norm_grad_x_rows(xhat, rstd, gain, delta, grad_x,
                                c * n_rows // n_chunks, (c + 1) * n_rows // n_chunks)


@njit(**INNER_JIT_OPTIONS)
def _layer_norm_param_grads(xhat, delta, grad_gain, grad_bias):
    n = delta.shape[1]
    for j in range(n):
        grad_gain[j] = 0
        grad_bias[j] = 0
    for i in range(delta.shape[0]):
        for j in range(n):
            grad_gain[j] += delta[i, j] * xhat[i, j]
            grad_bias[j] += delta[i, j]


@njit(**TINY_JIT_OPTIONS)
def layer_norm_backward(xhat, rstd, gain, delta, grad_gain, grad_bias, grad_x, compute_grad_x,
                        n_threads):
    """Backward pass of :func:`layer_norm_forward`.

    Parameters
    ----------
    xhat : ndarray of shape (batch, n)
    rstd : ndarray of shape (batch,)
        Cached by the forward pass.
    gain : ndarray of shape (n,)
    delta : ndarray of shape (batch, n)
        Upstream gradient ``dL/d out`` (read only).
    grad_gain, grad_bias : ndarray of shape (n,)
        Overwritten with ``dL/dgain`` and ``dL/dbias``.
    grad_x : ndarray of shape (batch, n)
        Overwritten with ``dL/dx`` when ``compute_grad_x``; untouched otherwise.
    compute_grad_x : bool
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).
    """
    # Summed row after row into each column: the same order on any number of threads.
    _layer_norm_param_grads(xhat, delta, grad_gain, grad_bias)
    if not compute_grad_x:
        return
    if n_threads is None:
        _layer_norm_grad_x_rows(xhat, rstd, gain, delta, grad_x, np.int64(0), delta.shape[0])
        return
    n_chunks = work_chunks(delta.shape[0], delta.size, n_threads)
    if n_chunks == 1:
        _layer_norm_grad_x_rows(xhat, rstd, gain, delta, grad_x, np.int64(0), delta.shape[0])
    else:
        _layer_norm_grad_x_parallel(xhat, rstd, gain, delta, grad_x, n_chunks)
