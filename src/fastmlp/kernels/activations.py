"""Elementwise activations, fused with the bias add, and their derivatives.

Every derivative is taken from the cached *output* ``a = f(z)``, never from ``z``, so the
forward pass keeps one array per layer (which is also the next layer's input):

==============  ==========================  ==========================================
activation      ``a = f(z)``                ``f'`` from ``a``
==============  ==========================  ==========================================
identity        ``z``                       ``1``
sigmoid         ``1 / (1 + exp(-z))``       ``a (1 - a)``
tanh            ``tanh(z)``                 ``1 - a**2``
relu            ``max(z, 0)``               ``a > 0``
leaky_relu      ``max(s z, z)``, 0<=s<=1    ``1 if a > 0 else s``
elu             ``z if z > 0 else           ``1 if a > 0 else a + alpha`` (alpha > 0)
                alpha (exp(z) - 1)``
==============  ==========================  ==========================================

At the kinks (``z == 0``) the derivative used is the left one, as in scikit-learn.

Two smooth activations have derivatives that are not functions of the output alone, so
their layers also cache the pre-activation ``z`` (in the workspace's ``pre_act`` buffer,
which exists only in models that have such a layer):

==============  ===================================  ======================================
activation      ``a = f(z)``                         ``f'`` from ``z``
==============  ===================================  ======================================
gelu            ``z Phi(z)``, ``Phi(z) =             ``Phi(z) + z phi(z)``,
                (1 + erf(z / sqrt 2)) / 2``          ``phi(z) = exp(-z**2 / 2) / sqrt(2 pi)``
silu            ``z sigmoid(z)``                     ``s (1 + z (1 - s))``, ``s = sigmoid(z)``
==============  ===================================  ======================================

They have kernels of their own (:func:`bias_smooth_activation`, :func:`smooth_activation_grad`),
never reached from :func:`bias_activation`: a runtime activation code compiles every branch
of the function it selects in, so a model without gelu or silu compiles no ``erf``.
"""

import math

import numpy as np
from numba import njit, prange

from fastmlp.config import (INNER_JIT_OPTIONS, PARALLEL_JIT_OPTIONS, PARALLEL_MIN_ELEMENTS,
                            TINY_JIT_OPTIONS)

IDENTITY = 0
SIGMOID = 1
TANH = 2
RELU = 3
LEAKY_RELU = 4
ELU = 5
GELU = 6
SILU = 7
#: Codes from this one on need the pre-activation cached (the smooth kernels below).
FIRST_SMOOTH = GELU

#: name -> (code, name of its float parameter or None, default value of that parameter)
ACTIVATIONS = {
    "identity": (IDENTITY, None, 0.0),
    "sigmoid": (SIGMOID, None, 0.0),
    "tanh": (TANH, None, 0.0),
    "relu": (RELU, None, 0.0),
    "leaky_relu": (LEAKY_RELU, "negative_slope", 0.01),
    "elu": (ELU, "alpha", 1.0),
    "gelu": (GELU, None, 0.0),
    "silu": (SILU, None, 0.0),
}


@njit(**INNER_JIT_OPTIONS)
def _bias_activation_rows(z, b, code, param, row_start, row_stop):
    # One loop nest per activation so the branch on ``code`` sits outside the hot loop.
    n_out = z.shape[1]
    one = z.dtype.type(1.0)
    if code == IDENTITY:
        for i in range(row_start, row_stop):
            for j in range(n_out):
                z[i, j] = z[i, j] + b[j]
    elif code == SIGMOID:
        for i in range(row_start, row_stop):
            for j in range(n_out):
                z[i, j] = one / (one + np.exp(-(z[i, j] + b[j])))
    elif code == TANH:
        for i in range(row_start, row_stop):
            for j in range(n_out):
                z[i, j] = np.tanh(z[i, j] + b[j])
    elif code == RELU:
        for i in range(row_start, row_stop):
            for j in range(n_out):
                v = z[i, j] + b[j]
                z[i, j] = v if v > 0 else 0
    elif code == LEAKY_RELU:
        for i in range(row_start, row_stop):
            for j in range(n_out):
                v = z[i, j] + b[j]
                z[i, j] = v if v > 0 else param * v
    else:  # ELU; expm1 keeps precision for small negative z
        for i in range(row_start, row_stop):
            for j in range(n_out):
                v = z[i, j] + b[j]
                z[i, j] = v if v > 0 else param * np.expm1(v)


@njit(**INNER_JIT_OPTIONS)
def _activation_grad_rows(a, delta, code, param, row_start, row_stop):
    n_out = a.shape[1]
    one = a.dtype.type(1.0)
    if code == IDENTITY:
        return
    if code == SIGMOID:
        for i in range(row_start, row_stop):
            for j in range(n_out):
                delta[i, j] *= a[i, j] * (one - a[i, j])
    elif code == TANH:
        for i in range(row_start, row_stop):
            for j in range(n_out):
                delta[i, j] *= one - a[i, j] * a[i, j]
    elif code == RELU:
        for i in range(row_start, row_stop):
            for j in range(n_out):
                if a[i, j] <= 0:
                    delta[i, j] = 0
    elif code == LEAKY_RELU:
        for i in range(row_start, row_stop):
            for j in range(n_out):
                if a[i, j] <= 0:
                    delta[i, j] *= param
    else:  # ELU: f'(z) = alpha exp(z) = a + alpha for z <= 0
        for i in range(row_start, row_stop):
            for j in range(n_out):
                if a[i, j] <= 0:
                    delta[i, j] *= a[i, j] + param


@njit(**PARALLEL_JIT_OPTIONS)
def _bias_activation_parallel(z, b, code, param, n_chunks):
    n_rows = z.shape[0]
    for c in prange(n_chunks):
        _bias_activation_rows(z, b, code, param, c * n_rows // n_chunks, (c + 1) * n_rows // n_chunks)


@njit(**PARALLEL_JIT_OPTIONS)
def _activation_grad_parallel(a, delta, code, param, n_chunks):
    n_rows = a.shape[0]
    for c in prange(n_chunks):
        _activation_grad_rows(a, delta, code, param, c * n_rows // n_chunks, (c + 1) * n_rows // n_chunks)


@njit(**TINY_JIT_OPTIONS)
def work_chunks(n_units, n_elements, n_threads):
    """How many chunks to split ``n_units`` rows (or columns) of elementwise work into.

    One chunk (the serial path) below ``PARALLEL_MIN_ELEMENTS`` elements or with one
    thread; otherwise one chunk per thread, never more than there are units.  The caller
    passes ``n_threads`` (``numba.get_num_threads()`` read in Python): calling that inside
    a kernel would stop numba from caching it.
    """
    if n_threads < 2 or n_elements < PARALLEL_MIN_ELEMENTS or n_units < 2:
        return 1
    return min(n_threads, n_units)


@njit(**TINY_JIT_OPTIONS)
def bias_activation(z, b, code, param, n_threads):
    """Add the bias and apply the activation in place: ``z <- f(z + b)``.

    Parameters
    ----------
    z : ndarray of shape (batch, n_out)
        The product ``x @ W``; overwritten with the activation ``a``.
    b : ndarray of shape (n_out,)
    code : int
        Activation code (``ACTIVATIONS[name][0]``).
    param : float
        ``negative_slope`` for leaky ReLU, ``alpha`` for ELU, ignored otherwise.
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).
        Threads the elementwise work may use (it stays serial when small).
    """
    if n_threads is None:
        _bias_activation_rows(z, b, code, param, np.int64(0), z.shape[0])
        return
    n_chunks = work_chunks(z.shape[0], z.size, n_threads)
    if n_chunks == 1:
        _bias_activation_rows(z, b, code, param, np.int64(0), z.shape[0])
    else:
        _bias_activation_parallel(z, b, code, param, n_chunks)


@njit(**TINY_JIT_OPTIONS)
def activation_grad(a, delta, code, param, n_threads):
    """Turn ``dL/da`` into ``dL/dz`` in place: ``delta <- delta * f'(z)``, with f' from ``a``.

    Parameters
    ----------
    a : ndarray of shape (batch, n_out)
        The cached activation output of the forward pass.
    delta : ndarray of shape (batch, n_out)
        Upstream gradient ``dL/da`` on entry, ``dL/dz`` on return.
    code : int
    param : float
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).
    """
    if code == IDENTITY:
        return
    if n_threads is None:
        _activation_grad_rows(a, delta, code, param, np.int64(0), a.shape[0])
        return
    n_chunks = work_chunks(a.shape[0], a.size, n_threads)
    if n_chunks == 1:
        _activation_grad_rows(a, delta, code, param, np.int64(0), a.shape[0])
    else:
        _activation_grad_parallel(a, delta, code, param, n_chunks)


@njit(**INNER_JIT_OPTIONS)
def _bias_smooth_rows(z, b, code, pre, row_start, row_stop):
    n_out = z.shape[1]
    half = z.dtype.type(0.5)
    one = z.dtype.type(1.0)
    inv_sqrt2 = z.dtype.type(1.0 / math.sqrt(2.0))
    if code == GELU:
        for i in range(row_start, row_stop):
            for j in range(n_out):
                v = z[i, j] + b[j]
                pre[i, j] = v
                z[i, j] = half * v * (one + math.erf(v * inv_sqrt2))
    else:  # SILU; the sigmoid from exp(-|v|) <= 1, which never overflows
        for i in range(row_start, row_stop):
            for j in range(n_out):
                v = z[i, j] + b[j]
                pre[i, j] = v
                e = np.exp(-abs(v))
                s = one / (one + e) if v >= 0 else e / (one + e)
                z[i, j] = v * s


@njit(**INNER_JIT_OPTIONS)
def _smooth_grad_rows(pre, delta, code, row_start, row_stop):
    n_out = pre.shape[1]
    half = pre.dtype.type(0.5)
    one = pre.dtype.type(1.0)
    inv_sqrt2 = pre.dtype.type(1.0 / math.sqrt(2.0))
    inv_sqrt_2pi = pre.dtype.type(1.0 / math.sqrt(2.0 * math.pi))
    if code == GELU:
        for i in range(row_start, row_stop):
            for j in range(n_out):
                v = pre[i, j]
                cdf = half * (one + math.erf(v * inv_sqrt2))
                delta[i, j] *= cdf + v * inv_sqrt_2pi * np.exp(-half * v * v)
    else:  # SILU
        for i in range(row_start, row_stop):
            for j in range(n_out):
                v = pre[i, j]
                e = np.exp(-abs(v))
                s = one / (one + e) if v >= 0 else e / (one + e)
                delta[i, j] *= s * (one + v * (one - s))


@njit(**PARALLEL_JIT_OPTIONS)
def _bias_smooth_parallel(z, b, code, pre, n_chunks):
    n_rows = z.shape[0]
    for c in prange(n_chunks):
        _bias_smooth_rows(z, b, code, pre, c * n_rows // n_chunks, (c + 1) * n_rows // n_chunks)


@njit(**PARALLEL_JIT_OPTIONS)
def _smooth_grad_parallel(pre, delta, code, n_chunks):
    n_rows = pre.shape[0]
    for c in prange(n_chunks):
        _smooth_grad_rows(pre, delta, code, c * n_rows // n_chunks, (c + 1) * n_rows // n_chunks)


@njit(**TINY_JIT_OPTIONS)
def bias_smooth_activation(z, b, code, pre, n_threads):
    """``pre <- z + b`` and ``z <- f(z + b)`` for ``gelu``/``silu``, in one pass.

    Parameters
    ----------
    z : ndarray of shape (batch, n_out)
        The product ``x @ W``; overwritten with the activation ``a``.
    b : ndarray of shape (n_out,)
    code : int
        ``GELU`` or ``SILU``.
    pre : ndarray of shape (batch, n_out)
        Overwritten with the pre-activation ``z + b``: the cache
        :func:`smooth_activation_grad` reads.
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).
    """
    if n_threads is None:
        _bias_smooth_rows(z, b, code, pre, np.int64(0), z.shape[0])
        return
    n_chunks = work_chunks(z.shape[0], z.size, n_threads)
    if n_chunks == 1:
        _bias_smooth_rows(z, b, code, pre, np.int64(0), z.shape[0])
    else:
        _bias_smooth_parallel(z, b, code, pre, n_chunks)


@njit(**TINY_JIT_OPTIONS)
def smooth_activation_grad(pre, delta, code, n_threads):
    """``delta <- delta * f'(z)`` for ``gelu``/``silu``, with ``f'`` from the cached ``z``.

    Parameters
    ----------
    pre : ndarray of shape (batch, n_out)
        The pre-activation cached by :func:`bias_smooth_activation`.
    delta : ndarray of shape (batch, n_out)
        Upstream gradient ``dL/da`` on entry, ``dL/dz`` on return.
    code : int
        ``GELU`` or ``SILU``.
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).
    """
    if n_threads is None:
        _smooth_grad_rows(pre, delta, code, np.int64(0), pre.shape[0])
        return
    n_chunks = work_chunks(pre.shape[0], pre.size, n_threads)
    if n_chunks == 1:
        _smooth_grad_rows(pre, delta, code, np.int64(0), pre.shape[0])
    else:
        _smooth_grad_parallel(pre, delta, code, n_chunks)
