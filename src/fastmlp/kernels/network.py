"""Whole-network drivers: forward, backward, a training step and a whole epoch.

The network is described by small integer tables instead of Python objects, so that a
compiled loop can walk it with no Python in between:

``arch`` : int64 array of shape (n_layers, 8)
    Per layer ``[n_in, n_out, pieces, activation code, weight offset, bias offset, kind,
    threshold]``.  Kind ``DENSE``: ``pieces == 1`` is a dense layer, ``pieces > 1`` a
    maxout layer; the offsets index the flat parameter (and gradient) vector: ``W`` is
    ``params[w:w + n_in*pieces*n_out]`` reshaped to ``(n_in, pieces*n_out)``, ``b`` is
    ``params[b:b + pieces*n_out]``.  Kind ``LAYER_NORM`` (``n_in == n_out``): the gain is
    ``params[w:w + n]``, the bias ``params[b:b + n]``, and ``act_params`` holds ``eps``.
    Kind ``DROPOUT`` (``n_in == n_out``, no parameters): ``threshold`` is
    ``ceil(rate * 2**53)`` and ``act_params`` holds ``1 / (1 - rate)``.
``buffer_offsets`` : int64 array of shape (n_layers, 7)
    Per layer the start of its rows in ``acts``/``deltas``, in ``zbuf``, in ``winner``, in
    ``mask``, in ``norm_cache`` of its ``xhat`` rows and of its ``rstd`` entries, and in
    ``pre_act``,
    computed for ``capacity`` rows.  A batch of ``n <= capacity`` rows uses the first
    ``n * width`` elements from that start: a contiguous view, so the last, smaller batch of
    an epoch needs no other buffer.

The buffers travel together in a :class:`NetBuffers` named tuple.
"""

from collections import namedtuple

import numpy as np
from numba import njit, types
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic

from fastmlp.config import INNER_JIT_OPTIONS, JIT_OPTIONS, TINY_JIT_OPTIONS
from fastmlp.kernels.activations import FIRST_SMOOTH, IDENTITY, smooth_activation_grad
from fastmlp.kernels.dense import (dense_backward, dense_forward, dense_smooth_forward,
                                   maxout_backward, maxout_forward)
from fastmlp.kernels.dropout import (KEY_ACTIVE, KEY_SEED, KEY_STEP, KEY_STREAM, copy_rows,
                                     dropout_backward, dropout_forward)
from fastmlp.kernels.layer_norm import layer_norm_backward, layer_norm_forward
from fastmlp.kernels.losses import BINARY_CROSS_ENTROPY, MSE, loss_and_grad, weight_rows
from fastmlp.kernels.optim import step_update

N_IN, N_OUT, PIECES, ACTIVATION, W_OFFSET, B_OFFSET, KIND, THRESHOLD = range(8)
(ACT_OFFSET, Z_OFFSET, WINNER_OFFSET, MASK_OFFSET, NORM_OFFSET, RSTD_OFFSET,
 PRE_ACT_OFFSET) = range(7)
#: Layer kinds (``arch[k, KIND]``).
DENSE, DROPOUT, LAYER_NORM = range(3)

# Layer 0's index, typed int64 as every other layer's: numba types a literal ``0`` as
# ``Literal[int](0)`` and compiles a second copy of the layer functions for it.
FIRST_LAYER = np.zeros(1, dtype=np.int64)

#: How scores are turned into predictions by :func:`predict_into`.
RAW, SOFTMAX, SIGMOID, THRESHOLD, ARGMAX = range(5)

NetBuffers = namedtuple(
    "NetBuffers",
    [
        "arch",  # int64 (n_layers, 6), see module docstring
        "act_params",  # (n_layers,) activation parameter per layer, model dtype
        "params",  # (n_params,) all weights, then all biases
        "grads",  # (n_params,) same layout as params; empty for inference
        "acts",  # (capacity * sum n_out,) each layer's output, cached for backward
        "deltas",  # (capacity * sum n_out,) dL/d(output) per layer, then dL/dz
        "zbuf",  # (capacity * sum pieces*n_out over maxout layers,) pre-activations / dL/dz;
                 # None without maxout layers, so that no maxout code is compiled
        "winner",  # int32 (capacity * sum n_out over maxout layers,) winning piece; or None
        "buffer_offsets",  # int64 (n_layers, 7)
        "row_loss",  # float64 (capacity,) per-row losses
        "mask",  # (capacity * sum n over dropout layers,) each dropout layer's mask, cached
                 # for backward; size 0 when the masks are off (inference); None without
                 # dropout layers, so that no dropout code is compiled
        "dropout_key",  # int64 (4,) [seed, step, stream, active], see kernels.dropout; or None
        "norm_cache",  # (capacity * sum (n + 1) over layer-norm layers,) per such layer its
                       # normalised input (capacity, n) then 1/std (capacity,); or None
        "pre_act",  # (capacity * sum n_out over gelu/silu layers,) their pre-activations z;
                    # None without such layers, so that none of their code is compiled
        "loss_params",  # float64 (n_loss_params,): the loss's parameters; None for the
                        # four first losses at their defaults (see kernels.losses)
    ],
)


@intrinsic
def _as_matrix(typingctx, segment, n_rows, n_cols):
    """The 1-D C-contiguous ``segment`` of ``n_rows * n_cols`` items as a C-contiguous
    ``(n_rows, n_cols)`` view (the caller checks the size).

    What ``segment.reshape((n_rows, n_cols))`` gives, built in place: numba's reshape
    calls a function of ``numba.np.arrayobj``, so every cached kernel using it made a warm
    process import that module (0.045-0.07 s, a tenth of a warm start) to rebuild the
    function's environment.
    """
    if not (isinstance(segment, types.Array) and segment.ndim == 1 and segment.layout == "C"):
        return None
    matrix_type = segment.copy(ndim=2, layout="C")

    def codegen(context, builder, signature, args):
        from numba.np.arrayobj import make_array, populate_array

        source = make_array(signature.args[0])(context, builder, args[0])
        view = make_array(matrix_type)(context, builder)
        rows, cols = (context.cast(builder, value, from_type, types.intp)
                      for value, from_type in zip(args[1:], signature.args[1:]))
        populate_array(view, data=source.data, shape=[rows, cols],
                       strides=[builder.mul(cols, source.itemsize), source.itemsize],
                       itemsize=source.itemsize, meminfo=source.meminfo, parent=source.parent)
        return impl_ret_borrowed(context, builder, matrix_type, view._getvalue())

    return matrix_type(segment, n_rows, n_cols), codegen


@njit(**TINY_JIT_OPTIONS)
def _rows(buf, offset, n_rows, n_cols):
    # buf[offset:offset + n_rows*n_cols] as (n_rows, n_cols); like reshape, refuses a
    # segment that runs past the buffer's end.
    segment = buf[offset:offset + n_rows * n_cols]
    if segment.size != n_rows * n_cols:
        raise ValueError("a layer's view runs past the end of its buffer")
    return _as_matrix(segment, n_rows, n_cols)


@njit(**TINY_JIT_OPTIONS)
def layer_weights(arch, flat, k):
    """Views ``(W, b)`` of layer ``k`` into ``flat`` (the parameters or the gradients)."""
    n_in = arch[k, N_IN]
    width = arch[k, N_OUT] * arch[k, PIECES]
    w = arch[k, W_OFFSET]
    b = arch[k, B_OFFSET]
    return _rows(flat, w, n_in, width), flat[b:b + width]


@njit(**TINY_JIT_OPTIONS)
def layer_output(net, k, n_rows):
    """View of layer ``k``'s cached output for the current ``n_rows`` rows."""
    return _rows(net.acts, net.buffer_offsets[k, ACT_OFFSET], n_rows, net.arch[k, N_OUT])


@njit(**INNER_JIT_OPTIONS)
def _layer_forward(net, k, x, zbuf, winner, mask, norm_cache, pre_act, n_threads):
    # ``zbuf`` and ``winner`` (``mask``, ``norm_cache``, ``pre_act``) are ``net``'s fields
    # passed again as arguments: for a network without maxout (dropout, layer-norm,
    # gelu/silu) layers they are None, and numba then compiles none of that layer kind's
    # code (it prunes a branch on ``argument is None`` before typing it).
    arch = net.arch
    n_rows = x.shape[0]
    out = layer_output(net, k, n_rows)
    if mask is not None:
        if arch[k, KIND] == DROPOUT:
            key = net.dropout_key
            if key[KEY_ACTIVE] == 0:
                copy_rows(x, out)
            else:
                m = _rows(mask, net.buffer_offsets[k, MASK_OFFSET], n_rows, arch[k, N_OUT])
                dropout_forward(x, arch[k, THRESHOLD], net.act_params[k], key[KEY_SEED],
                                key[KEY_STEP], key[KEY_STREAM], k, m, out, n_threads)
            return
    if norm_cache is not None:
        if arch[k, KIND] == LAYER_NORM:
            gain, bias = _norm_params(arch, net.params, k)
            xhat, rstd = _norm_cache_rows(net, norm_cache, k, n_rows)
            layer_norm_forward(x, gain, bias, net.act_params[k], xhat, rstd, out, n_threads)
            return
    W, b = layer_weights(arch, net.params, k)
    if zbuf is None or winner is None or arch[k, PIECES] == 1:
        if pre_act is None or arch[k, ACTIVATION] < FIRST_SMOOTH:
            dense_forward(x, W, b, arch[k, ACTIVATION], net.act_params[k], out, n_threads)
        else:
            pre = _rows(pre_act, net.buffer_offsets[k, PRE_ACT_OFFSET], n_rows, arch[k, N_OUT])
            dense_smooth_forward(x, W, b, arch[k, ACTIVATION], out, pre, n_threads)
    else:
        pieces = arch[k, PIECES]
        n_out = arch[k, N_OUT]
        z = _rows(zbuf, net.buffer_offsets[k, Z_OFFSET], n_rows, pieces * n_out)
        winners = _rows(winner, net.buffer_offsets[k, WINNER_OFFSET], n_rows, n_out)
        maxout_forward(x, W, b, pieces, z, out, winners, n_threads)


@njit(**TINY_JIT_OPTIONS)
def _norm_params(arch, flat, k):
    # Views ``(gain, bias)`` of layer-norm layer ``k`` into ``flat`` (parameters or gradients).
    n = arch[k, N_OUT]
    return flat[arch[k, W_OFFSET]:arch[k, W_OFFSET] + n], flat[arch[k, B_OFFSET]:arch[k, B_OFFSET] + n]


@njit(**TINY_JIT_OPTIONS)
def _norm_cache_rows(net, norm_cache, k, n_rows):
    # Layer-norm layer ``k``'s cached ``xhat`` (n_rows, n) and ``rstd`` (n_rows,).
    n = net.arch[k, N_OUT]
    xhat = _rows(norm_cache, net.buffer_offsets[k, NORM_OFFSET], n_rows, n)
    rstd_start = net.buffer_offsets[k, RSTD_OFFSET]
    return xhat, norm_cache[rstd_start:rstd_start + n_rows]


@njit(**TINY_JIT_OPTIONS)
def forward(net, x, n_threads):
    """Run the network on ``x`` (batch, n_in), ``batch <= capacity``; return the scores view.

    Every layer's output is left in ``net.acts`` (and maxout winners in ``net.winner``)
    for :func:`backward`.
    """
    n_layers = net.arch.shape[0]
    # Layer 0 reads the caller's array; it is a separate call so that a read-only or
    # differently laid-out input does not have to unify with the workspace views.
    _layer_forward(net, FIRST_LAYER[0], x, net.zbuf, net.winner, net.mask, net.norm_cache,
                   net.pre_act, n_threads)
    for k in range(1, n_layers):
        _layer_forward(net, k, layer_output(net, k - 1, x.shape[0]), net.zbuf, net.winner,
                       net.mask, net.norm_cache, net.pre_act, n_threads)
    return layer_output(net, n_layers - 1, x.shape[0])


@njit(**INNER_JIT_OPTIONS)
def _layer_backward(net, k, x, zbuf, winner, mask, norm_cache, pre_act, n_threads):
    # ``zbuf``/``winner``/``mask``/``norm_cache``/``pre_act``: None without such layers, as
    # in :func:`_layer_forward`.
    arch = net.arch
    n_rows = x.shape[0]
    n_in = arch[k, N_IN]
    n_out = arch[k, N_OUT]
    delta = _rows(net.deltas, net.buffer_offsets[k, ACT_OFFSET], n_rows, n_out)
    compute_grad_x = k > 0
    # Layer 0 has no upstream delta to fill; any view of the right type stands in, untouched.
    grad_x = _rows(net.deltas, net.buffer_offsets[k - 1, ACT_OFFSET] if compute_grad_x else 0,
                   n_rows if compute_grad_x else 0, n_in)
    if mask is not None:
        if arch[k, KIND] == DROPOUT:
            if compute_grad_x:
                m = _rows(mask, net.buffer_offsets[k, MASK_OFFSET], n_rows, n_out)
                dropout_backward(m, delta, grad_x)
            return
    if norm_cache is not None:
        if arch[k, KIND] == LAYER_NORM:
            gain, _ = _norm_params(arch, net.params, k)
            grad_gain, grad_bias = _norm_params(arch, net.grads, k)
            xhat, rstd = _norm_cache_rows(net, norm_cache, k, n_rows)
            layer_norm_backward(xhat, rstd, gain, delta, grad_gain, grad_bias, grad_x,
                                compute_grad_x, n_threads)
            return
    W, _ = layer_weights(arch, net.params, k)
    grad_W, grad_b = layer_weights(arch, net.grads, k)
    if zbuf is None or winner is None or arch[k, PIECES] == 1:
        a = layer_output(net, k, n_rows)
        code = arch[k, ACTIVATION]
        if pre_act is not None and code >= FIRST_SMOOTH:
            pre = _rows(pre_act, net.buffer_offsets[k, PRE_ACT_OFFSET], n_rows, n_out)
            smooth_activation_grad(pre, delta, code, n_threads)
            code = IDENTITY  # delta is dL/dz now: the rest is a linear layer's backward
        dense_backward(x, W, a, code, net.act_params[k], delta,
                       grad_W, grad_b, grad_x, compute_grad_x, n_threads)
    else:
        pieces = arch[k, PIECES]
        grad_z = _rows(zbuf, net.buffer_offsets[k, Z_OFFSET], n_rows, pieces * n_out)
        winners = _rows(winner, net.buffer_offsets[k, WINNER_OFFSET], n_rows, n_out)
        maxout_backward(x, W, winners, pieces, delta, grad_z, grad_W, grad_b, grad_x,
                        compute_grad_x, n_threads)


@njit(**TINY_JIT_OPTIONS)
def backward(net, x, n_threads):
    """Backpropagate from the last layer's ``delta`` (already filled by the loss) to the
    gradient vector ``net.grads``, using the activations cached by :func:`forward` on ``x``."""
    n_layers = net.arch.shape[0]
    for k in range(n_layers - 1, 0, -1):
        _layer_backward(net, k, layer_output(net, k - 1, x.shape[0]), net.zbuf, net.winner,
                        net.mask, net.norm_cache, net.pre_act, n_threads)
    _layer_backward(net, FIRST_LAYER[0], x, net.zbuf, net.winner, net.mask, net.norm_cache,
                    net.pre_act, n_threads)


@njit(**TINY_JIT_OPTIONS)
def last_delta(net, n_rows):
    """View of the last layer's delta rows (where the loss writes ``dL/dscores``)."""
    k = net.arch.shape[0] - 1
    return _rows(net.deltas, net.buffer_offsets[k, ACT_OFFSET], n_rows, net.arch[k, N_OUT])


def _compute_gradients(net, loss_code, x, labels, targets, row_weights, n_threads):
    """Forward, loss and backward on one batch; the gradient of the mean data loss is left
    in ``net.grads``.

    Parameters
    ----------
    net : NetBuffers
    loss_code : int
    x : ndarray of shape (batch, n_in)
    labels : ndarray of int64, shape (batch,) or (0,)
        Class labels (classification losses), empty otherwise.
    targets : ndarray of shape (batch, n_out) or (0, n_out)
        Targets (binary cross-entropy, MSE), empty otherwise.
    row_weights : ndarray of shape (batch,), or None
        Sample weights (see :func:`~fastmlp.kernels.losses.weight_rows`); None for none.
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).
        Threads for the elementwise kernels (``numba.get_num_threads()`` of the caller).

    Returns
    -------
    float
        The batch's mean (weighted) loss.
    """
    scores = forward(net, x, n_threads)
    delta = last_delta(net, x.shape[0])
    loss = loss_and_grad(loss_code, scores, labels, targets, delta, net.row_loss, n_threads,
                         net.loss_params)
    if row_weights is not None:
        loss = weight_rows(loss_code, row_weights, delta, net.row_loss)
    backward(net, x, n_threads)
    return loss


# Twice: cached for the calls from Python (the step API, MPI), and inlined into
# train_epoch, which would otherwise link and optimise the whole step's code once more
# (numba re-optimises every callee's code in each caller's module).
compute_gradients = njit(**JIT_OPTIONS)(_compute_gradients)
_step_gradients = njit(**TINY_JIT_OPTIONS)(_compute_gradients)


@njit(**TINY_JIT_OPTIONS)
def _count_correct(loss_code, scores, labels, targets):
    count = 0
    for i in range(scores.shape[0]):
        if loss_code == BINARY_CROSS_ENTROPY:
            # Subset accuracy, as scikit-learn's accuracy_score for multi-label targets.
            hit = True
            for j in range(scores.shape[1]):
                if (scores[i, j] > 0) != (targets[i, j] > 0.5):
                    hit = False
            count += hit
        else:
            best = 0
            top = scores[i, 0]
            for j in range(1, scores.shape[1]):
                v = scores[i, j]
                if v > top:  # strict: ties go to the lowest class, like np.argmax
                    top = v
                    best = j
            count += best == labels[i]
    return count


def _count_correct_cached(net, loss_code, labels, targets):
    """Rows of the last forward pass whose cached scores predict them right.

    After :func:`compute_gradients` too: backward leaves the cached outputs alone, so the
    scores are still those the step's forward pass computed (no second forward pass).

    Parameters
    ----------
    net : NetBuffers
    loss_code : int
        Not MSE.
    labels : ndarray of int64, shape (batch,) or (0,)
        The batch's class labels (label losses), empty otherwise.
    targets : ndarray of shape (batch, n_out) or (0, n_out)
        The batch's 0/1 targets (binary cross-entropy), empty otherwise.

    Returns
    -------
    int
    """
    n_rows = labels.shape[0] if labels.shape[0] > 0 else targets.shape[0]
    scores = layer_output(net, net.arch.shape[0] - 1, n_rows)
    return _count_correct(loss_code, scores, labels, targets)


# Cached for Python (the step API), inlined into train_epoch, as compute_gradients.
count_correct_cached = njit(**JIT_OPTIONS)(_count_correct_cached)
_step_count_correct = njit(**TINY_JIT_OPTIONS)(_count_correct_cached)


@njit(**JIT_OPTIONS)
def train_epoch(net, loss_code, X, transposed, labels, targets, weights, order, batch_size,
                x_batch, label_batch, target_batch, weight_batch,
                opt_state, sgd_hyper, adam_hyper, n_weights, clip, first_step, dropout_key,
                first_batch, stop_batch, batch_losses, batch_correct, batch_grad_norms,
                n_threads):
    """Batches ``first_batch`` to ``stop_batch - 1`` of an epoch, compiled whole: no Python
    runs between steps.

    Rows are visited in ``order``; batch ``s`` gathers rows ``order[s*batch_size:...]``
    into ``x_batch`` (and the label/target/weight buffers) and takes one optimizer step.
    The last batch is smaller when ``batch_size`` does not divide ``len(order)``.  A whole
    epoch is one call with ``(0, n_batches)``; a progress display calls it on slices.

    Parameters
    ----------
    net : NetBuffers
        Capacity at least ``batch_size``.
    loss_code : int
    X : ndarray of shape (n, n_in), or (n_in, n) when ``transposed``
    transposed : bool
        Whether ``X`` is the transpose of the input: a Fortran-ordered input is passed as
        its (C-ordered) transpose, so that it shares the C-ordered input's compilation.
    labels : ndarray of int64, shape (n,) or (0,)
    targets : ndarray of shape (n, n_out) or (0, n_out)
    weights : ndarray of shape (n,), or None
        Per-row sample weights, or None for none (no weighting code is then compiled).
    order : ndarray of int64, shape (n,)
    batch_size : int
    x_batch : ndarray of shape (batch_size, n_in)
    label_batch : ndarray of int64, shape (batch_size,)
    target_batch : ndarray of shape (batch_size, n_out) or (0, n_out)
    weight_batch : ndarray of shape (batch_size,)
    opt_state, sgd_hyper, adam_hyper, n_weights, clip
        As in :func:`fastmlp.kernels.optim.optimizer_update` (``clip`` None: no clipping).
    first_step : int
        Number of optimizer steps taken before batch 0 of this epoch.
    dropout_key : ndarray of int64, shape (4,), or None
        ``net.dropout_key`` (None without dropout layers): its step field is set to each
        batch's optimizer step (``first_step + s + 1``) before that batch's forward pass.
    first_batch, stop_batch : int
        The half-open range of batch indices to run, ``0 <= first_batch <= stop_batch <=
        n_batches``.
    batch_losses : ndarray of float64, shape (n_batches,)
        Entry ``s`` is overwritten with batch ``s``'s mean loss.
    batch_correct : ndarray of int64, shape (n_batches,)
        Entry ``s`` is overwritten with the number of batch ``s``'s rows the network
        predicted right before the step (0 for the regression losses).
    batch_grad_norms : ndarray of float64, shape (n_batches,) or (0,)
        With ``clip``, entry ``s`` is overwritten with batch ``s``'s gradient norm before
        clipping; not touched (and may be empty) without.
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).

    Returns
    -------
    int
        The index after the last completed batch: ``stop_batch``, or a smaller ``s``
        when batch ``s``'s loss was NaN or Inf.  The step was then not applied, so the
        parameters are those that produced the first non-finite loss (still finite
        themselves).
    """
    n = order.shape[0]
    has_labels = labels.shape[0] > 0
    has_targets = targets.shape[0] > 0
    for s in range(first_batch, stop_batch):
        start = s * batch_size
        rows = min(batch_size, n - start)
        for i in range(rows):
            r = order[start + i]
            # Element loops, not slice assignments: those compile a shape check with a
            # formatted error message, a second of compile time for a shape that cannot differ.
            if transposed:
                for j in range(x_batch.shape[1]):
                    x_batch[i, j] = X[j, r]
            else:
                for j in range(x_batch.shape[1]):
                    x_batch[i, j] = X[r, j]
            if has_labels:
                label_batch[i] = labels[r]
            if has_targets:
                for j in range(targets.shape[1]):
                    target_batch[i, j] = targets[r, j]
            if weights is not None:
                weight_batch[i] = weights[r]
        lab = label_batch[:rows] if has_labels else label_batch[:0]
        tgt = target_batch[:rows] if has_targets else target_batch[:0]
        if dropout_key is not None:
            dropout_key[KEY_STEP] = first_step + s + 1
        # Two calls rather than one with ``None if ... else``, which numba would type as an
        # optional array and so compile the weighting code for unweighted data too.
        if weights is None:
            loss = _step_gradients(net, loss_code, x_batch[:rows], lab, tgt, None, n_threads)
        else:
            loss = _step_gradients(net, loss_code, x_batch[:rows], lab, tgt, weight_batch[:rows],
                                   n_threads)
        batch_losses[s] = loss
        if not np.isfinite(loss):
            return s
        if loss_code < MSE:  # MSE, Huber, L1: regression, no accuracy
            batch_correct[s] = _step_count_correct(net, loss_code, lab, tgt)
        norm = step_update(net.params, net.grads, opt_state, sgd_hyper, adam_hyper, n_weights,
                           first_step + s + 1, clip, n_threads)
        if clip is not None:
            batch_grad_norms[s] = norm
    return stop_batch


@njit(**JIT_OPTIONS)
def evaluate_chunked(net, loss_code, X, labels, targets, chunk_rows, n_threads):
    """Mean loss and number of correct predictions over all of ``X``, ``chunk_rows`` at a time.

    Returns
    -------
    (float, int)
        Mean loss (as the training loss, averaged over rows) and the number of rows
        predicted right (0 for MSE).
    """
    n = X.shape[0]
    loss_sum = 0.0
    correct = 0
    has_labels = labels.shape[0] > 0
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        scores = forward(net, X[start:stop], n_threads)
        lab = labels[start:stop] if has_labels else labels[:0]
        tgt = targets[start:stop] if targets.shape[0] > 0 else targets[:0]
        loss_sum += (stop - start) * loss_and_grad(loss_code, scores, lab, tgt,
                                                  last_delta(net, stop - start), net.row_loss,
                                                  n_threads, net.loss_params)
        if loss_code < MSE:  # MSE, Huber, L1: regression
            correct += _count_correct(loss_code, scores, lab, tgt)
    return loss_sum / n, correct


@njit(**INNER_JIT_OPTIONS)
def _transform_scores(scores, transform, out):
    n_rows, n_out = scores.shape
    one = scores.dtype.type(1.0)
    for i in range(n_rows):
        if transform == SOFTMAX:
            peak = scores[i, 0]
            for j in range(1, n_out):
                peak = max(peak, scores[i, j])
            total = scores.dtype.type(0.0)
            for j in range(n_out):
                e = np.exp(scores[i, j] - peak)
                out[i, j] = e
                total += e
            for j in range(n_out):
                out[i, j] /= total
        elif transform == ARGMAX:
            best = 0
            for j in range(1, n_out):
                if scores[i, j] > scores[i, best]:
                    best = j
            out[i, 0] = best
        else:
            for j in range(n_out):
                z = scores[i, j]
                if transform == SIGMOID:
                    e = np.exp(-abs(z))
                    out[i, j] = one / (one + e) if z >= 0 else e / (one + e)
                elif transform == THRESHOLD:
                    out[i, j] = z > 0
                else:
                    out[i, j] = z


@njit(**JIT_OPTIONS)
def predict_into(net, X, transform, chunk_rows, out, n_threads):
    """Forward ``X`` in chunks of ``chunk_rows`` rows and write transformed scores to ``out``.

    Parameters
    ----------
    net : NetBuffers
        Capacity at least ``chunk_rows``.
    X : ndarray of shape (n, n_in)
    transform : int
        ``RAW``, ``SOFTMAX``, ``SIGMOID``, ``THRESHOLD`` (``score > 0``) or ``ARGMAX``.
    chunk_rows : int
    out : ndarray of shape (n, n_out), or (n, 1) for ``ARGMAX``
        Overwritten.
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).
    """
    n = X.shape[0]
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        scores = forward(net, X[start:stop], n_threads)
        _transform_scores(scores, transform, out[start:stop])
