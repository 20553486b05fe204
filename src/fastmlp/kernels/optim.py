"""In-place parameter updates over the model's flat parameter vector.

All parameters live in one contiguous vector, weights first and biases after them
(``params[:n_weights]`` are the weights), so one update call covers the whole network and
weight decay touches weights only.

The updates run serially whatever the thread count: they are memory-bound, and split over
2 threads they ran 1.8x (6.3M parameters) to 2.9x (266k) slower here than on one, the two
cores sharing one memory bandwidth and the pool's start-up coming on top.
"""

import numpy as np
from numba import njit

from fastmlp.config import INNER_JIT_OPTIONS, JIT_OPTIONS, TINY_JIT_OPTIONS

SGD = 0
ADAM = 1

#: Layout of ``hyper`` for SGD.
SGD_LR, SGD_MOMENTUM, SGD_NESTEROV, SGD_WEIGHT_DECAY = range(4)
#: Layout of ``hyper`` for Adam and AdamW (``ADAM_DECOUPLED`` != 0 is AdamW).
ADAM_LR, ADAM_BETA1, ADAM_BETA2, ADAM_EPS, ADAM_WEIGHT_DECAY, ADAM_DECOUPLED = range(6)


@njit(**TINY_JIT_OPTIONS)
def _sgd_range(params, grads, velocity, n_weights, lr, momentum, nesterov, weight_decay, start, stop):
    # Plain SGD gets loops of its own, split where the biases start, with no test inside:
    # with ``momentum != 0`` and ``i < n_weights`` tested per element, LLVM wrote the
    # velocity through masked vector stores even at momentum 0, and on AMD Zen 4 such a
    # store into pages never written (np.zeros's copy-on-write zero pages) is very slow: a
    # 784-256-256-10 epoch of plain SGD took 9x as long (writing the buffer once cured it).
    if momentum == 0:
        split = min(max(n_weights, start), stop)
        for i in range(start, split):
            g = grads[i] + weight_decay * params[i]
            params[i] -= lr * g
        for i in range(split, stop):
            params[i] -= lr * grads[i]
        return
    for i in range(start, stop):
        g = grads[i]
        if i < n_weights:
            g += weight_decay * params[i]
        # PyTorch's convention: v <- momentum v + g (no dampening); v starts at 0, so the
        # first step's v equals g exactly as in PyTorch's lazily created buffer.
        v = momentum * velocity[i] + g
        velocity[i] = v
        g = g + momentum * v if nesterov else v
        params[i] -= lr * g


@njit(**TINY_JIT_OPTIONS)
def sgd_update(params, grads, velocity, n_weights, lr, momentum, nesterov, weight_decay, n_threads):
    """One SGD step in place, with PyTorch's momentum, Nesterov and weight-decay rules.

    ``g = grad + weight_decay * W`` (weights only); with momentum ``v = momentum * v + g``
    and ``W -= lr * v`` (or ``W -= lr * (g + momentum * v)`` with Nesterov); without
    momentum ``W -= lr * g``.

    Parameters
    ----------
    params : ndarray of shape (n_params,)
        Updated in place.
    grads : ndarray of shape (n_params,)
        Gradient of the data loss (read only).
    velocity : ndarray of shape (n_params,)
        Momentum buffer, updated in place (unused when ``momentum == 0``).
    n_weights : int
        ``params[:n_weights]`` receive weight decay.
    lr, momentum, weight_decay : float
    nesterov : bool
    n_threads : int
        Unused (the update is serial, see the module notes); kept so every kernel is called
        the same way.
    """
    _sgd_range(params, grads, velocity, n_weights, lr, momentum, nesterov, weight_decay,
               0, params.shape[0])


# A function of its own, not inlined like _sgd_range: inlined into the training loop,
# LLVM contracted its arithmetic differently and the Adam results changed in the last bit.
@njit(**INNER_JIT_OPTIONS)
def _adam_range(params, grads, m, v, n_weights, lr, beta1, beta2, eps, weight_decay, decoupled,
                step_size, bias_correction2_sqrt, start, stop):
    one = params.dtype.type(1.0)
    for i in range(start, stop):
        g = grads[i]
        if i < n_weights and weight_decay != 0:
            if decoupled:
                params[i] *= one - lr * weight_decay
            else:
                g += weight_decay * params[i]
        m[i] = beta1 * m[i] + (one - beta1) * g
        v[i] = beta2 * v[i] + (one - beta2) * g * g
        # PyTorch's arrangement: p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
        params[i] -= step_size * m[i] / (np.sqrt(v[i]) / bias_correction2_sqrt + eps)


@njit(**TINY_JIT_OPTIONS)
def adam_update(params, grads, m, v, n_weights, lr, beta1, beta2, eps, weight_decay, decoupled, step,
                n_threads):
    """One Adam (or, with ``decoupled``, AdamW) step in place, following PyTorch.

    ``m = beta1 m + (1 - beta1) g``, ``v = beta2 v + (1 - beta2) g**2``, then
    ``W -= lr / (1 - beta1**step) * m / (sqrt(v) / sqrt(1 - beta2**step) + eps)``.
    Weight decay touches ``params[:n_weights]`` only: Adam adds ``weight_decay * W`` to
    the gradient (L2), AdamW first scales ``W *= 1 - lr * weight_decay``.

    Parameters
    ----------
    params, grads : ndarray of shape (n_params,)
    m, v : ndarray of shape (n_params,)
        First and second moment estimates, updated in place (start at zero).
    n_weights : int
    lr, beta1, beta2, eps, weight_decay : float
    decoupled : bool
    step : int
        1-based number of this update (bias correction).
    n_threads : int
        Unused (serial, as :func:`sgd_update`).
    """
    one = params.dtype.type(1.0)
    # beta ** step is float64 whatever beta's type: back to the parameters' precision
    step_size = params.dtype.type(lr / (one - beta1 ** step))
    bias_correction2_sqrt = params.dtype.type(np.sqrt(one - beta2 ** step))
    _adam_range(params, grads, m, v, n_weights, lr, beta1, beta2, eps, weight_decay, decoupled,
                step_size, bias_correction2_sqrt, 0, params.shape[0])


#: Layout of ``clip`` (float64; 0 turns a kind of clipping off).
CLIP_NORM, CLIP_VALUE = range(2)


@njit(**JIT_OPTIONS)
def clip_gradients(grads, max_norm, max_value):
    """Clip ``grads`` in place, as PyTorch's ``clip_grad_norm_`` then ``clip_grad_value_``.

    The global L2 norm is summed in float64; when ``max_norm / (norm + 1e-6) < 1`` every
    element is scaled by that factor.  Then, with ``max_value > 0``, every element is
    clamped to ``[-max_value, max_value]``.

    Parameters
    ----------
    grads : ndarray of shape (n_params,)
        The whole network's gradient; clipped in place.
    max_norm, max_value : float
        0 for no clipping of that kind.

    Returns
    -------
    float
        The L2 norm of ``grads`` before clipping (float64).
    """
    total = 0.0
    for i in range(grads.shape[0]):
        g = np.float64(grads[i])
        total += g * g
    norm = np.sqrt(total)
    if max_norm > 0:
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            scale = grads.dtype.type(coef)
            for i in range(grads.shape[0]):
                grads[i] *= scale
    if max_value > 0:
        high = grads.dtype.type(max_value)
        for i in range(grads.shape[0]):
            grads[i] = min(max(grads[i], -high), high)
    return norm


def _optimizer_update(params, grads, state, sgd_hyper, adam_hyper, n_weights, step, clip,
                      n_threads):
    """One update of the optimizer whose hyperparameters are given (so a compiled training
    loop can call it).

    Parameters
    ----------
    params, grads : ndarray of shape (n_params,)
    state : ndarray of shape (n_slots, n_params)
        The optimizer's buffers (SGD: the velocity; Adam: the two moment estimates).
    sgd_hyper : ndarray of shape (4,), or None
        SGD's hyperparameters (``SGD_LR`` ...), or None when the optimizer is Adam.
    adam_hyper : ndarray of shape (6,), or None
        Adam's hyperparameters (``ADAM_LR`` ...), or None when the optimizer is SGD.  Of
        the two, the one that is None has no code compiled: numba drops a branch on
        ``argument is None`` before typing it.
    n_weights : int
    step : int
        1-based number of this update (for optimizers with bias correction).
    clip : ndarray of float64, shape (2,), or None
        ``[max_norm, max_value]`` for :func:`clip_gradients`, applied to ``grads`` (in
        place) before the update; None for no clipping (and no clipping code compiled).
    n_threads : int

    Returns
    -------
    float
        The gradient's L2 norm before clipping; 0.0 when ``clip`` is None.
    """
    norm = 0.0
    if clip is not None:
        norm = clip_gradients(grads, clip[CLIP_NORM], clip[CLIP_VALUE])
    if sgd_hyper is not None:
        sgd_update(params, grads, state[0], n_weights, sgd_hyper[SGD_LR], sgd_hyper[SGD_MOMENTUM],
                   sgd_hyper[SGD_NESTEROV] != 0, sgd_hyper[SGD_WEIGHT_DECAY], n_threads)
    if adam_hyper is not None:
        adam_update(params, grads, state[0], state[1], n_weights, adam_hyper[ADAM_LR],
                    adam_hyper[ADAM_BETA1], adam_hyper[ADAM_BETA2], adam_hyper[ADAM_EPS],
                    adam_hyper[ADAM_WEIGHT_DECAY], adam_hyper[ADAM_DECOUPLED] != 0, step,
                    n_threads)
    return norm


def split_hyperparameters(kind, hyper):
    """``(sgd_hyper, adam_hyper)`` for :func:`optimizer_update`: ``hyper`` in the place of
    optimizer ``kind`` (``SGD``, ``ADAM``), None in the other."""
    return (hyper, None) if kind == SGD else (None, hyper)


# Cached for the calls from Python (apply_gradients, MPI), inlined into the training loop
# (which would otherwise link and optimise this code once more in its own module).
optimizer_update = njit(**JIT_OPTIONS)(_optimizer_update)
step_update = njit(**TINY_JIT_OPTIONS)(_optimizer_update)
