"""In-place parameter updates over the model's flat parameter buffer.

All parameters live in one contiguous vector, weights first and biases after them
(``params[:n_weights]`` are the weights), so one update call covers the whole network and
weight decay touches weights only.
"""

from numba import njit, prange

from fastmlp.config import JIT_OPTIONS, PARALLEL_JIT_OPTIONS
from fastmlp.kernels.activations import work_chunks

SGD = 0

#: Layout of ``hyper`` for SGD.
SGD_LR, SGD_MOMENTUM, SGD_NESTEROV, SGD_WEIGHT_DECAY = range(4)


@njit(**JIT_OPTIONS)
def _sgd_range(params, grads, velocity, n_weights, lr, momentum, nesterov, weight_decay, start, stop):
    for i in range(start, stop):
        g = grads[i]
        if i < n_weights:
            g += weight_decay * params[i]
        if momentum != 0:
            # PyTorch's convention: v <- momentum v + g (no dampening); v starts at 0, so the
            # first step's v equals g exactly as in PyTorch's lazily created buffer.
            v = momentum * velocity[i] + g
            velocity[i] = v
            g = g + momentum * v if nesterov else v
        params[i] -= lr * g


@njit(**PARALLEL_JIT_OPTIONS)
def _sgd_parallel(params, grads, velocity, n_weights, lr, momentum, nesterov, weight_decay, n_chunks):
    n = params.shape[0]
    for c in prange(n_chunks):
        _sgd_range(params, grads, velocity, n_weights, lr, momentum, nesterov, weight_decay,
                   c * n // n_chunks, (c + 1) * n // n_chunks)


@njit(**JIT_OPTIONS)
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
    """
    n_chunks = work_chunks(params.shape[0], params.shape[0], n_threads)
    if n_chunks == 1:
        _sgd_range(params, grads, velocity, n_weights, lr, momentum, nesterov, weight_decay,
                   0, params.shape[0])
    else:
        _sgd_parallel(params, grads, velocity, n_weights, lr, momentum, nesterov, weight_decay, n_chunks)


@njit(**JIT_OPTIONS)
def optimizer_update(kind, params, grads, state, hyper, n_weights, step, n_threads):
    """Dispatch one update of optimizer ``kind`` (so a compiled training loop can call it).

    Parameters
    ----------
    kind : int
        Optimizer code (``SGD``).
    params, grads : ndarray of shape (n_params,)
    state : ndarray of shape (n_slots, n_params)
        The optimizer's buffers (SGD: one slot, the velocity).
    hyper : ndarray of shape (n_hyper,)
        Hyperparameters in the optimizer's layout (``SGD_LR`` ...).
    n_weights : int
    step : int
        1-based number of this update (for optimizers with bias correction).
    n_threads : int
    """
    if kind == SGD:
        sgd_update(params, grads, state[0], n_weights, hyper[SGD_LR], hyper[SGD_MOMENTUM],
                   hyper[SGD_NESTEROV] != 0, hyper[SGD_WEIGHT_DECAY], n_threads)
