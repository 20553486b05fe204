"""Inference over inputs of another dtype or layout, one chunk of rows at a time.

``X`` may be a ``numpy.memmap``, read-only, Fortran-ordered or of the other float dtype;
every driver here also takes a ``transposed`` flag: ``X`` is then the transpose
``(n_in, n)`` of the input (a Fortran-ordered input passed as its C-ordered transpose, so
both layouts share one compilation).
Each chunk of rows is copied (and converted, element by element: the same rounding as
``X.astype(dtype)``) into ``x_chunk``, a C-contiguous buffer of the model's dtype, and the
network runs on that buffer.  The drivers of :mod:`fastmlp.kernels.network` are thus
called with exactly the argument types they already have for in-memory data: only the
functions here compile again for a new input type, never the layer chain.
"""

from numba import njit

from fastmlp.config import JIT_OPTIONS
from fastmlp.kernels.losses import MSE, loss_and_grad
from fastmlp.kernels.network import count_correct_cached, forward, last_delta, predict_into


@njit(**JIT_OPTIONS)
def gather_chunk(X, transposed, start, stop, x_chunk):
    """Copy rows ``start:stop`` of ``X`` into the first ``stop - start`` rows of ``x_chunk``.

    Parameters
    ----------
    X : ndarray of shape (n, n_in), or (n_in, n) when ``transposed``; any float dtype and layout
    transposed : bool
        Whether ``X`` is the transpose of the input (row ``r`` of the input is ``X[:, r]``).
    start, stop : int
    x_chunk : ndarray of shape (capacity, n_in), C-contiguous, ``capacity >= stop - start``
        Overwritten in its first ``stop - start`` rows; the cast per element rounds as
        numpy's ``astype`` does (to nearest, overflow to Inf).

    Returns
    -------
    ndarray of shape (stop - start, n_in)
        The filled view of ``x_chunk``.
    """
    rows = stop - start
    # Element loops, not slice assignment (see network.train_epoch: a compiled shape check).
    if transposed:
        for i in range(rows):
            for j in range(x_chunk.shape[1]):
                x_chunk[i, j] = X[j, start + i]
    else:
        for i in range(rows):
            for j in range(x_chunk.shape[1]):
                x_chunk[i, j] = X[start + i, j]
    return x_chunk[:rows]


@njit(**JIT_OPTIONS)
def evaluate_gathered(net, loss_code, X, transposed, labels, targets, x_chunk, n_threads):
    """:func:`~fastmlp.kernels.network.evaluate_chunked` over a gathered ``X``.

    The same chunks (``x_chunk.shape[0]`` rows), the same sums in the same order: the result
    is bit for bit that of ``evaluate_chunked`` on ``X.astype(dtype)`` in memory.

    Parameters
    ----------
    net : NetBuffers
        Capacity at least ``x_chunk.shape[0]``.
    loss_code : int
    X : ndarray of shape (n, n_in), or (n_in, n) when ``transposed``
    transposed : bool
    labels : ndarray of int64, shape (n,) or (0,)
    targets : ndarray of shape (n, n_out) or (0, n_out)
    x_chunk : ndarray of shape (chunk_rows, n_in), C-contiguous, model dtype
        Scratch, overwritten.
    n_threads : int or None

    Returns
    -------
    (float, int)
        Mean loss over the rows, and the rows predicted right (0 for MSE).
    """
    n = X.shape[1] if transposed else X.shape[0]
    chunk_rows = x_chunk.shape[0]
    loss_sum = 0.0
    correct = 0
    has_labels = labels.shape[0] > 0
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        x = gather_chunk(X, transposed, start, stop, x_chunk)
        scores = forward(net, x, n_threads)
        lab = labels[start:stop] if has_labels else labels[:0]
        tgt = targets[start:stop] if targets.shape[0] > 0 else targets[:0]
        loss_sum += (stop - start) * loss_and_grad(loss_code, scores, lab, tgt,
                                                  last_delta(net, stop - start), net.row_loss,
                                                  n_threads, net.loss_params)
        if loss_code < MSE:  # MSE, Huber, L1: regression
            correct += count_correct_cached(net, loss_code, lab, tgt)
    return loss_sum / n, correct


@njit(**JIT_OPTIONS)
def predict_gathered(net, X, transposed, transform, x_chunk, out, n_threads):
    """:func:`~fastmlp.kernels.network.predict_into` over a gathered ``X``.

    Parameters
    ----------
    net : NetBuffers
        Capacity at least ``x_chunk.shape[0]``.
    X : ndarray of shape (n, n_in), or (n_in, n) when ``transposed``
    transposed : bool
    transform : int
    x_chunk : ndarray of shape (chunk_rows, n_in), C-contiguous, model dtype
        Scratch, overwritten.
    out : ndarray of shape (n, n_out), or (n, 1) for ``ARGMAX``
        Overwritten.
    n_threads : int or None
    """
    n = X.shape[1] if transposed else X.shape[0]
    chunk_rows = x_chunk.shape[0]
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        x = gather_chunk(X, transposed, start, stop, x_chunk)
        predict_into(net, x, transform, stop - start, out[start:stop], n_threads)
