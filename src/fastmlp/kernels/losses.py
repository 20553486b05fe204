"""Losses: value and gradient with respect to the last layer's raw outputs, in one pass.

The network's last layer outputs raw scores (logits); softmax and sigmoid belong to the
loss, computed in their numerically stable forms, as in PyTorch's ``CrossEntropyLoss`` and
``BCEWithLogitsLoss``.  Every kernel writes per-row losses into ``row_loss`` and sums them
serially, so the sum's order does not depend on how many threads computed the rows (each
row's value may still differ by rounding between the serial and the parallel compilation,
see :mod:`fastmlp.kernels.dense`).
"""

import numpy as np
from numba import njit, prange

from fastmlp.config import INNER_JIT_OPTIONS, JIT_OPTIONS, PARALLEL_JIT_OPTIONS, TINY_JIT_OPTIONS
from fastmlp.kernels.activations import work_chunks

SOFTMAX_CROSS_ENTROPY = 0
MULTICLASS_HINGE = 1
BINARY_CROSS_ENTROPY = 2
MSE = 3
HUBER = 4
L1 = 5

#: name -> code
LOSSES = {
    "softmax_cross_entropy": SOFTMAX_CROSS_ENTROPY,
    "multiclass_hinge": MULTICLASS_HINGE,
    "binary_cross_entropy": BINARY_CROSS_ENTROPY,
    "mse": MSE,
    "huber": HUBER,
    "l1": L1,
}

#: Layout of ``loss_params`` (float64): softmax cross-entropy's label smoothing, Huber's delta.
LABEL_SMOOTHING = 0
HUBER_DELTA = 0


@njit(**TINY_JIT_OPTIONS)
def _softmax_xent_rows(scores, labels, grad, row_loss, row_start, row_stop):
    n_rows, n_classes = scores.shape
    inv_n = scores.dtype.type(1.0 / n_rows)
    for i in range(row_start, row_stop):
        peak = scores[i, 0]
        for j in range(1, n_classes):
            peak = max(peak, scores[i, j])
        total = scores.dtype.type(0.0)
        for j in range(n_classes):
            e = np.exp(scores[i, j] - peak)
            grad[i, j] = e
            total += e
        log_norm = peak + np.log(total)
        inv_total = 1 / total
        for j in range(n_classes):
            grad[i, j] *= inv_total * inv_n
        y = labels[i]
        grad[i, y] -= inv_n
        row_loss[i] = log_norm - scores[i, y]


@njit(**TINY_JIT_OPTIONS)
def _multiclass_hinge_rows(scores, labels, grad, row_loss, row_start, row_stop):
    n_rows, n_classes = scores.shape
    inv_n = scores.dtype.type(1.0 / n_rows)
    for i in range(row_start, row_stop):
        y = labels[i]
        correct = scores[i, y]
        loss = 0.0
        n_violations = 0
        for j in range(n_classes):
            margin = scores[i, j] - correct + 1
            if j != y and margin > 0:
                loss += margin
                n_violations += 1
                grad[i, j] = inv_n
            else:
                grad[i, j] = 0
        grad[i, y] = -n_violations * inv_n
        row_loss[i] = loss


@njit(**TINY_JIT_OPTIONS)
def _binary_xent_rows(scores, targets, grad, row_loss, row_start, row_stop):
    n_rows, n_out = scores.shape
    inv_count = scores.dtype.type(1.0 / (n_rows * n_out))
    one = scores.dtype.type(1.0)
    for i in range(row_start, row_stop):
        loss = 0.0
        for j in range(n_out):
            z = scores[i, j]
            t = targets[i, j]
            # log(1 + exp(-|z|)) never overflows; exp(-|z|) <= 1 also gives a stable sigmoid.
            e = np.exp(-abs(z))
            loss += max(z, 0) - z * t + np.log1p(e)
            p = one / (one + e) if z >= 0 else e / (one + e)
            grad[i, j] = (p - t) * inv_count
        row_loss[i] = loss


@njit(**TINY_JIT_OPTIONS)
def _mse_rows(scores, targets, grad, row_loss, row_start, row_stop):
    n_rows, n_out = scores.shape
    scale = scores.dtype.type(2.0 / (n_rows * n_out))
    for i in range(row_start, row_stop):
        loss = 0.0
        for j in range(n_out):
            d = scores[i, j] - targets[i, j]
            loss += d * d
            grad[i, j] = d * scale
        row_loss[i] = loss


@njit(**TINY_JIT_OPTIONS)
def _smoothed_xent_rows(scores, labels, smoothing, grad, row_loss, row_start, row_stop):
    # PyTorch's CrossEntropyLoss(label_smoothing=e): the target is (1 - e) one_hot(y) + e / C,
    # so the loss is (1 - e)(lse - s_y) + e (lse - mean_j s_j) and dL/ds = p - target.
    n_rows, n_classes = scores.shape
    inv_n = scores.dtype.type(1.0 / n_rows)
    one = scores.dtype.type(1.0)
    spread = scores.dtype.type(smoothing / n_classes)
    for i in range(row_start, row_stop):
        peak = scores[i, 0]
        for j in range(1, n_classes):
            peak = max(peak, scores[i, j])
        total = scores.dtype.type(0.0)
        score_sum = 0.0
        for j in range(n_classes):
            e = np.exp(scores[i, j] - peak)
            grad[i, j] = e
            total += e
            score_sum += scores[i, j]
        log_norm = peak + np.log(total)
        inv_total = 1 / total
        for j in range(n_classes):
            grad[i, j] = (grad[i, j] * inv_total - spread) * inv_n
        y = labels[i]
        grad[i, y] -= (one - smoothing) * inv_n
        row_loss[i] = ((one - smoothing) * (log_norm - scores[i, y])
                       + smoothing * (log_norm - score_sum / n_classes))


@njit(**TINY_JIT_OPTIONS)
def _huber_rows(scores, targets, delta, grad, row_loss, row_start, row_stop):
    n_rows, n_out = scores.shape
    inv_count = scores.dtype.type(1.0 / (n_rows * n_out))
    half = scores.dtype.type(0.5)
    for i in range(row_start, row_stop):
        loss = 0.0
        for j in range(n_out):
            d = scores[i, j] - targets[i, j]
            if abs(d) <= delta:
                loss += half * d * d
                grad[i, j] = d * inv_count
            else:
                loss += delta * (abs(d) - half * delta)
                grad[i, j] = (delta if d > 0 else -delta) * inv_count
        row_loss[i] = loss


@njit(**TINY_JIT_OPTIONS)
def _l1_rows(scores, targets, grad, row_loss, row_start, row_stop):
    n_rows, n_out = scores.shape
    inv_count = scores.dtype.type(1.0 / (n_rows * n_out))
    for i in range(row_start, row_stop):
        loss = 0.0
        for j in range(n_out):
            d = scores[i, j] - targets[i, j]
            loss += abs(d)
            # sign(0) = 0, as PyTorch's L1Loss backward
            grad[i, j] = inv_count if d > 0 else (-inv_count if d < 0 else 0)
        row_loss[i] = loss


@njit(**INNER_JIT_OPTIONS)
def _param_loss_rows(code, loss_params, scores, labels, targets, grad, row_loss, row_start, row_stop):
    # The losses with parameters (or added after the first four): reached only when
    # ``loss_params`` is an array, so a model with a default loss compiles none of them.
    param = scores.dtype.type(loss_params[0]) if loss_params.shape[0] > 0 else scores.dtype.type(0.0)
    if code == SOFTMAX_CROSS_ENTROPY:
        _smoothed_xent_rows(scores, labels, param, grad, row_loss, row_start, row_stop)
    elif code == HUBER:
        _huber_rows(scores, targets, param, grad, row_loss, row_start, row_stop)
    else:
        _l1_rows(scores, targets, grad, row_loss, row_start, row_stop)


@njit(**PARALLEL_JIT_OPTIONS)
def _param_loss_parallel(code, loss_params, scores, labels, targets, grad, row_loss, n_chunks):
    n_rows = scores.shape[0]
    for c in prange(n_chunks):
        _param_loss_rows(code, loss_params, scores, labels, targets, grad, row_loss,
                         c * n_rows // n_chunks, (c + 1) * n_rows // n_chunks)


# The per-loss row kernels above are inlined here and into _param_loss_rows: these two
# are the compiled units the serial and the parallel drivers share, and one compilation
# of each costs less than one per loss (numba's fixed cost per function is ~0.1 s).
@njit(**INNER_JIT_OPTIONS)
def _loss_rows(code, scores, labels, targets, grad, row_loss, row_start, row_stop):
    if code == SOFTMAX_CROSS_ENTROPY:
        _softmax_xent_rows(scores, labels, grad, row_loss, row_start, row_stop)
    elif code == MULTICLASS_HINGE:
        _multiclass_hinge_rows(scores, labels, grad, row_loss, row_start, row_stop)
    elif code == BINARY_CROSS_ENTROPY:
        _binary_xent_rows(scores, targets, grad, row_loss, row_start, row_stop)
    else:
        _mse_rows(scores, targets, grad, row_loss, row_start, row_stop)


@njit(**PARALLEL_JIT_OPTIONS)
def _loss_parallel(code, scores, labels, targets, grad, row_loss, n_chunks):
    n_rows = scores.shape[0]
    for c in prange(n_chunks):
        _loss_rows(code, scores, labels, targets, grad, row_loss,
                   c * n_rows // n_chunks, (c + 1) * n_rows // n_chunks)


@njit(**JIT_OPTIONS)
def loss_and_grad(code, scores, labels, targets, grad, row_loss, n_threads, loss_params):
    """Mean loss over the batch and its gradient with respect to ``scores``.

    ==========================  ================================================  =========
    loss                        per-row value                                     mean over
    ==========================  ================================================  =========
    ``softmax_cross_entropy``   ``logsumexp(s) - s[y]``                           rows
    ``multiclass_hinge``        ``sum_{j != y} max(0, s_j - s_y + 1)``            rows
    ``binary_cross_entropy``    ``max(s,0) - s t + log1p(exp(-|s|))`` per output  elements
    ``mse``                     ``(s - t)**2`` per output                         elements
    ``huber``                   ``d**2 / 2`` if ``|d| <= delta`` else             elements
                                ``delta (|d| - delta / 2)``, ``d = s - t``
    ``l1``                      ``|s - t|`` per output                            elements
    ==========================  ================================================  =========

    Softmax cross-entropy with label smoothing ``e`` has the per-row value
    ``(1 - e)(logsumexp(s) - s[y]) + e (logsumexp(s) - mean(s))`` (PyTorch's).

    Parameters
    ----------
    code : int
        Loss code (``LOSSES[name]``).
    scores : ndarray of shape (batch, n_out)
        Raw outputs of the last layer.
    labels : ndarray of int64, shape (batch,)
        Class indices in ``[0, n_out)``; read by the two classification losses only.
    targets : ndarray of shape (batch, n_out)
        Targets; read by binary cross-entropy (values in {0, 1}) and MSE only.
    grad : ndarray of shape (batch, n_out)
        Overwritten with ``dL/dscores`` of the mean loss.
    row_loss : ndarray of float64, shape (>= batch,)
        Scratch: each row's summed loss.
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).
    loss_params : ndarray of float64, shape (n_loss_params,), or None
        None for the four first losses at their defaults (their kernels only are compiled);
        otherwise the loss's parameters (``LABEL_SMOOTHING``, ``HUBER_DELTA``; empty for L1)
        and the kernels of Huber, L1 and smoothed cross-entropy are used.

    Returns
    -------
    float
        The mean loss (float64).
    """
    n_rows, n_out = scores.shape
    if loss_params is not None:
        if n_threads is None:
            _param_loss_rows(code, loss_params, scores, labels, targets, grad, row_loss,
                             np.int64(0), n_rows)
        else:
            n_chunks = work_chunks(n_rows, scores.size, n_threads)
            if n_chunks == 1:
                _param_loss_rows(code, loss_params, scores, labels, targets, grad, row_loss,
                                 np.int64(0), n_rows)
            else:
                _param_loss_parallel(code, loss_params, scores, labels, targets, grad, row_loss,
                                     n_chunks)
    elif n_threads is None:
        _loss_rows(code, scores, labels, targets, grad, row_loss, np.int64(0), n_rows)
    else:
        n_chunks = work_chunks(n_rows, scores.size, n_threads)
        if n_chunks == 1:
            _loss_rows(code, scores, labels, targets, grad, row_loss, np.int64(0), n_rows)
        else:
            _loss_parallel(code, scores, labels, targets, grad, row_loss, n_chunks)
    total = 0.0
    for i in range(n_rows):
        total += row_loss[i]
    if code == BINARY_CROSS_ENTROPY or code == MSE or code == HUBER or code == L1:
        return total / (n_rows * n_out)
    return total / n_rows


@njit(**JIT_OPTIONS)
def weight_rows(code, row_weights, grad, row_loss):
    """Turn the mean loss of :func:`loss_and_grad` into its sample-weighted form, in place.

    Row ``i``'s loss and gradient are multiplied by ``row_weights[i]``; the result is still
    divided by the row (or element) count, not by the sum of the weights, as Keras does: a
    weight of 2 counts a row twice, and all-ones weights change nothing.

    Parameters
    ----------
    code : int
        Loss code, for the divisor (elements for binary cross-entropy, MSE, Huber and L1,
        rows otherwise).
    row_weights : ndarray of shape (batch,)
        Non-negative weights.
    grad : ndarray of shape (batch, n_out)
        ``dL/dscores`` from :func:`loss_and_grad`; each row is scaled by its weight.
    row_loss : ndarray of float64, shape (>= batch,)
        Each row's summed loss from :func:`loss_and_grad`; read only.

    Returns
    -------
    float
        The weighted mean loss (float64).
    """
    n_rows, n_out = grad.shape
    total = 0.0
    for i in range(n_rows):
        w = row_weights[i]
        total += w * row_loss[i]
        for j in range(n_out):
            grad[i, j] *= w
    if code == BINARY_CROSS_ENTROPY or code == MSE or code == HUBER or code == L1:
        return total / (n_rows * n_out)
    return total / n_rows
