"""The one door from Python into the compiled network drivers (:mod:`fastmlp.kernels.network`).

Every call the package makes into ``fastmlp.kernels.network`` goes through a function here,
with the kernels' own argument order, so that a change of a driver's signature is adapted
in one file.  Nothing here validates, and nothing but read-only labels and targets on their
way to evaluation (:func:`_writable`) is copied: the callers (:class:`~fastmlp.Sequential`,
:mod:`fastmlp.workspace`, :func:`~fastmlp.gradcheck`) own every array and check it first.
"""

from fastmlp.kernels import blas, gather, network, optim
from fastmlp.kernels.checks import count_nonfinite

# Column names of the ``arch`` table and of ``buffer_offsets``, and the prediction
# transforms: constants of the drivers' data layout.
N_IN, N_OUT, PIECES, W_OFFSET, B_OFFSET = (network.N_IN, network.N_OUT, network.PIECES,
                                           network.W_OFFSET, network.B_OFFSET)
ACT_OFFSET, Z_OFFSET, WINNER_OFFSET = network.ACT_OFFSET, network.Z_OFFSET, network.WINNER_OFFSET
MASK_OFFSET, NORM_OFFSET, RSTD_OFFSET = network.MASK_OFFSET, network.NORM_OFFSET, network.RSTD_OFFSET
ACTIVATION, KIND, THRESHOLD = network.ACTIVATION, network.KIND, network.THRESHOLD
DENSE, DROPOUT, LAYER_NORM = network.DENSE, network.DROPOUT, network.LAYER_NORM
KEY_SEED, KEY_STEP, KEY_STREAM, KEY_ACTIVE = (network.KEY_SEED, network.KEY_STEP,
                                              network.KEY_STREAM, network.KEY_ACTIVE)
PRE_ACT_OFFSET, ACTIVATION = network.PRE_ACT_OFFSET, network.ACTIVATION
RAW, SOFTMAX, SIGMOID, THRESHOLD, ARGMAX = (network.RAW, network.SOFTMAX, network.SIGMOID,
                                            network.THRESHOLD, network.ARGMAX)
NetBuffers = network.NetBuffers
# Rows (columns) a block of a product split over threads holds at least.
BLOCK_ALIGN = blas.BLOCK_ALIGN

__all__ = ["count_nonfinite", "train_epoch", "compute_gradients", "optimizer_update",
           "count_correct_cached", "evaluate_chunked", "predict_into", "bound_predict_into",
           "evaluate_gathered",
           "predict_gathered"]


def _weights_or_none(weights):
    # The kernels take None for "no sample weights" (and then compile no weighting code);
    # the API layer passes an empty array.
    return None if weights.shape[0] == 0 else weights


def _read_only(array):
    # numba types a read-only array as a type of its own: a writable and a read-only input
    # (a memory-mapped file, an array from np.frombuffer) would each compile the driver,
    # about 4.6 s for train_epoch.  No driver writes its inputs, so each input that may be
    # the caller's own array reaches them read-only: a view, not a copy.
    if not array.flags.writeable:
        return array
    view = array.view()
    view.flags.writeable = False
    return view


def _input(X):
    # ``(X for the drivers, transposed)``.  numba types the layout too: a Fortran-ordered X
    # (a memmap of a Fortran .npy, a large DataFrame's values) would compile the drivers a
    # third time.  Its transpose is C-ordered, and the drivers read it as the transpose.
    if X.flags.f_contiguous and not X.flags.c_contiguous:
        return _read_only(X.T), True
    return _read_only(X), False


def _writable(array):
    # The evaluation drivers hand slices of the labels and targets to the loss kernels,
    # which the training loop calls with its (writable) batch buffers: a read-only one
    # would compile those kernels and the driver again.  They hold a value or a few per
    # row, so a read-only one is copied; X, the large one, never is.
    return array if array.flags.writeable else array.copy()


def train_epoch(net, loss_code, X, labels, targets, weights, order, batch_size, x_batch,
                label_batch, target_batch, weight_batch, opt_kind, opt_state, hyper, n_weights,
                clip, step_count, first, stop, batch_losses, batch_correct, batch_grad_norms,
                n_threads):
    """Steps ``first .. stop - 1`` of an epoch, compiled; returns the index of the first step
    not run (``stop`` unless a loss was not finite).  See ``kernels.network.train_epoch``."""
    sgd_hyper, adam_hyper = optim.split_hyperparameters(opt_kind, hyper)
    # The rows are copied into the batch buffers, so only this driver sees the inputs'
    # types: the read-only views add no signature to the kernels below it.
    weights = _weights_or_none(weights)
    if weights is not None:
        weights = _read_only(weights)
    return network.train_epoch(net, loss_code, *_input(X), _read_only(labels),
                               _read_only(targets), weights, order, batch_size, x_batch,
                               label_batch, target_batch, weight_batch, opt_state, sgd_hyper,
                               adam_hyper, n_weights, clip, step_count, net.dropout_key, first,
                               stop, batch_losses, batch_correct, batch_grad_norms, n_threads)


def compute_gradients(net, loss_code, x, labels, targets, row_weights, n_threads):
    """Forward and backward pass on one batch into ``net.grads``; returns the mean loss."""
    return network.compute_gradients(net, loss_code, x, labels, targets,
                                     _weights_or_none(row_weights), n_threads)


def optimizer_update(kind, params, grads, state, hyper, n_weights, step_count, clip, n_threads):
    """One in-place optimizer update of ``params`` and ``state`` from ``grads`` (clipped in
    place first when ``clip`` is not None); returns the gradient norm before clipping (0.0
    without ``clip``)."""
    sgd_hyper, adam_hyper = optim.split_hyperparameters(kind, hyper)
    return optim.optimizer_update(params, grads, state, sgd_hyper, adam_hyper, n_weights,
                                  step_count, clip, n_threads)


def count_correct_cached(net, loss_code, labels, targets):
    """Rows the last forward pass (its scores cached in ``net``) predicted right."""
    return network.count_correct_cached(net, loss_code, labels, targets)


def evaluate_chunked(net, loss_code, X, labels, targets, chunk_rows, n_threads):
    """``(mean loss, rows predicted right)`` over ``X`` in chunks of ``chunk_rows``."""
    return network.evaluate_chunked(net, loss_code, X, _writable(labels), _writable(targets),
                                    chunk_rows, n_threads)


def predict_into(net, X, transform, chunk_rows, out, n_threads):
    """Scores of ``X`` after ``transform`` (``RAW``, ``SOFTMAX``, ...) written into ``out``."""
    network.predict_into(net, X, transform, chunk_rows, out, n_threads)


def bound_predict_into(net, X, transform, chunk_rows, out, n_threads):
    """:func:`predict_into` compiled for the types of these arguments, as a function of the
    same arguments that skips numba's per-call dispatch; None when numba has compiled no
    such version (call :func:`predict_into` first).

    numba's dispatcher works out the type of every argument on every call, which for the
    15 fields of ``net`` is most of a small prediction's time (2-3 us of 9 for one row on
    64-128-10).  The returned function checks nothing: it takes its arguments as having
    exactly the types it was bound to, so a caller may only pass it arguments of the same
    types (the same workspace, ``X`` and ``out`` of the same dtype, layout and flags).
    """
    driver = network.predict_into
    signature = tuple(driver.typeof_pyval(value) for value in
                      (net, X, transform, chunk_rows, out, n_threads))
    overload = driver.overloads.get(signature)
    return None if overload is None else overload.entry_point


def evaluate_gathered(net, loss_code, X, labels, targets, x_chunk, n_threads):
    """:func:`evaluate_chunked` for an ``X`` of another dtype or layout (a memory-mapped
    file, say), gathered ``x_chunk.shape[0]`` rows at a time into ``x_chunk``."""
    return gather.evaluate_gathered(net, loss_code, *_input(X), _writable(labels),
                                    _writable(targets), x_chunk, n_threads)


def predict_gathered(net, X, transform, x_chunk, out, n_threads):
    """:func:`predict_into` for an ``X`` of another dtype or layout, gathered into ``x_chunk``."""
    gather.predict_gathered(net, *_input(X), transform, x_chunk, out, n_threads)
