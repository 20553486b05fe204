"""Preallocated buffers for a given (architecture, capacity in rows, dtype).

Allocated once; every training step and forward pass afterwards writes into them, and a
batch smaller than the capacity uses contiguous views of the same arrays.
"""

import numpy as np

from fastmlp.config import PARALLEL_MIN_ELEMENTS, PARALLEL_MIN_FLOPS
from fastmlp.threads import forked_after_openmp
from fastmlp.compiled import (ACT_OFFSET, ACTIVATION, BLOCK_ALIGN, DENSE, DROPOUT, KEY_ACTIVE,
                              KEY_SEED, KEY_STEP, KEY_STREAM, KIND, LAYER_NORM, MASK_OFFSET,
                              N_OUT, NORM_OFFSET, PIECES, PRE_ACT_OFFSET, RSTD_OFFSET, THRESHOLD,
                              WINNER_OFFSET, Z_OFFSET, NetBuffers)
from fastmlp.kernels.activations import FIRST_SMOOTH
from fastmlp.layers import Dropout, LayerNorm


def layer_table(layers, dtype):
    """The integer ``arch`` table, the activation-parameter vector, and the parameter count.

    Weights of all layers come first in the flat parameter vector, then all biases, so
    that ``params[:n_weights]`` is exactly what weight decay applies to.

    A layer norm's gain and bias sit among the biases (gain then bias, in layer order), so
    they are not weight-decayed either; a dropout layer has no parameters (its offsets
    point at an empty range).

    Returns
    -------
    arch : ndarray of int64, shape (n_layers, 8)
    act_params : ndarray of shape (n_layers,), ``dtype``
        The activation parameter; a layer norm's ``eps``; a dropout layer's ``1/(1-rate)``.
    n_weights : int
    n_params : int
    """
    arch = np.zeros((len(layers), 8), dtype=np.int64)
    offset = 0
    for k, layer in enumerate(layers):
        arch[k, :4] = (layer.n_in, layer.n_out, layer.pieces, layer.activation_code)
        arch[k, 4] = offset
        if not layer.takes_width:
            offset += layer.n_in * layer.pieces * layer.n_out
    n_weights = offset
    for k, layer in enumerate(layers):
        arch[k, 5] = offset
        if isinstance(layer, LayerNorm):
            arch[k, KIND] = LAYER_NORM
            arch[k, 4] = offset
            arch[k, 5] = offset + layer.n_out
            offset += 2 * layer.n_out
        elif isinstance(layer, Dropout):
            arch[k, KIND] = DROPOUT
            arch[k, 4] = offset
            arch[k, THRESHOLD] = layer.threshold
        else:
            arch[k, KIND] = DENSE
            offset += layer.pieces * layer.n_out
    act_params = np.array([layer.activation_param for layer in layers], dtype=dtype)
    return arch, act_params, n_weights, offset


def has_parallel_work(arch, capacity):
    """Whether some kernel on a batch of up to ``capacity`` rows would split its work over
    threads: a product of at least ``PARALLEL_MIN_FLOPS`` with a side of two
    ``BLOCK_ALIGN`` blocks (:func:`fastmlp.kernels.blas.matmul`), or an elementwise pass over
    at least ``PARALLEL_MIN_ELEMENTS`` elements (:func:`fastmlp.kernels.activations
    .work_chunks`).  Both grow with the rows, so ``capacity`` bounds every call."""
    for (n_in, n_out, pieces), kind in zip(arch[:, :3], arch[:, KIND]):
        width = int(n_out * pieces)
        sides = (capacity, int(n_in), width)
        if (kind == DENSE and 2 * capacity * n_in * width >= PARALLEL_MIN_FLOPS
                and max(sides) >= 2 * BLOCK_ALIGN):
            return True
        # Elementwise passes split rows, or columns for the bias gradient's column sums,
        # so a single row of a wide layer is split too.
        if capacity * width >= PARALLEL_MIN_ELEMENTS:
            return True
    return False


class Workspace:
    """Every buffer one forward/backward pass of up to ``capacity`` rows needs.

    Parameters
    ----------
    arch, act_params, params
        From :func:`layer_table` and the model (``params`` is shared, not copied).
    capacity : int
        Largest batch the buffers hold.
    n_targets : int
        Width of the target rows (binary cross-entropy, MSE), or 0 for class labels.
    training : bool
        Also allocate the gradient vector and the minibatch gather buffers.
    dropout_key : tuple (seed, stream) or None
        With dropout layers: the model's mask seed and stream (MPI rank).  The masks are
        drawn (``dropout_key[active] = 1``) in a training workspace, or in any workspace
        when ``masks`` is True; otherwise dropout is the identity.
    masks : bool
        Draw dropout masks even when not ``training`` (a gradient check holds the mask of
        a training step fixed while it evaluates the loss).
    loss_params : ndarray of float64, shape (n_loss_params,), or None
        The loss's parameters as the kernels read them (``Loss.kernel_params()``); None for
        a loss that has none.
    """

    def __init__(self, arch, act_params, params, capacity, n_targets, training, dropout_key=None,
                 masks=False, loss_params=None):
        dtype = params.dtype
        self._parallel_work = has_parallel_work(arch, capacity)
        n_out = arch[:, N_OUT]
        is_maxout = arch[:, PIECES] > 1
        n_in = int(arch[0, 0])
        self.capacity = capacity
        offsets = np.zeros((len(arch), 7), dtype=np.int64)
        offsets[1:, ACT_OFFSET] = capacity * np.cumsum(n_out)[:-1]
        z_widths = np.where(is_maxout, n_out * arch[:, PIECES], 0)
        offsets[1:, Z_OFFSET] = capacity * np.cumsum(z_widths)[:-1]
        winner_widths = np.where(is_maxout, n_out, 0)
        offsets[1:, WINNER_OFFSET] = capacity * np.cumsum(winner_widths)[:-1]
        is_dropout = arch[:, KIND] == DROPOUT
        draws_masks = bool(is_dropout.any()) and (training or masks)
        mask_widths = np.where(is_dropout, n_out, 0) if draws_masks else np.zeros_like(n_out)
        offsets[1:, MASK_OFFSET] = capacity * np.cumsum(mask_widths)[:-1]
        is_norm = arch[:, KIND] == LAYER_NORM
        norm_widths = np.where(is_norm, n_out + 1, 0)  # xhat rows, then one rstd per row
        offsets[:, NORM_OFFSET] = capacity * (np.cumsum(norm_widths) - norm_widths)
        offsets[:, RSTD_OFFSET] = offsets[:, NORM_OFFSET] + capacity * np.where(is_norm, n_out, 0)
        key = None
        if is_dropout.any():
            seed, stream = dropout_key
            key = np.zeros(4, dtype=np.int64)
            key[KEY_SEED], key[KEY_STREAM], key[KEY_ACTIVE] = seed, stream, draws_masks
        is_smooth = ((arch[:, KIND] == DENSE) & (arch[:, PIECES] == 1)
                     & (arch[:, ACTIVATION] >= FIRST_SMOOTH))  # gelu, silu
        pre_widths = np.where(is_smooth, n_out, 0)
        offsets[1:, PRE_ACT_OFFSET] = capacity * np.cumsum(pre_widths)[:-1]
        act_size = capacity * int(n_out.sum())
        self.net = NetBuffers(
            arch=arch,
            act_params=act_params,
            params=params,
            grads=np.zeros(params.shape[0] if training else 0, dtype=dtype),  # (n_params,)
            acts=np.zeros(act_size, dtype=dtype),  # [(capacity, n_out_k)] back to back
            deltas=np.zeros(act_size, dtype=dtype),  # [(capacity, n_out_k)]
            # [(capacity, pieces*n_out_k)] and [(capacity, n_out_k)] over the maxout layers;
            # None without any, which keeps the maxout kernels out of the compiled code
            zbuf=np.zeros(capacity * int(z_widths.sum()), dtype=dtype) if is_maxout.any() else None,
            winner=(np.zeros(capacity * int(winner_widths.sum()), dtype=np.int32)
                    if is_maxout.any() else None),
            buffer_offsets=offsets,
            row_loss=np.zeros(capacity, dtype=np.float64),  # (capacity,)
            # [(capacity, n_k)] over the dropout layers when masks are drawn, else size 0;
            # None without dropout layers, which keeps the dropout kernels out of the code
            mask=np.zeros(capacity * int(mask_widths.sum()), dtype=dtype) if is_dropout.any() else None,
            dropout_key=key,  # int64 (4,) or None
            # [(capacity, n_k) then (capacity,)] over the layer-norm layers; or None
            norm_cache=(np.zeros(capacity * int(norm_widths.sum()), dtype=dtype)
                        if is_norm.any() else None),
            # [(capacity, n_out_k)] over the gelu/silu layers: their pre-activations, which
            # their derivative needs; None without any, which keeps their kernels out
            pre_act=(np.zeros(capacity * int(pre_widths.sum()), dtype=dtype)
                     if is_smooth.any() else None),
            loss_params=loss_params,
        )
        gather_rows = capacity if training else 0
        self.x_batch = np.zeros((gather_rows, n_in), dtype=dtype)  # (capacity, n_in)
        self.label_batch = np.zeros(gather_rows, dtype=np.int64)  # (capacity,)
        self.target_batch = np.zeros((gather_rows if n_targets else 0, max(n_targets, 1)), dtype=dtype)
        self.weight_batch = np.zeros(gather_rows, dtype=dtype)  # (capacity,) sample weights
        # For a workspace kept across predict calls (Sequential._call_workspace): the
        # compiled prediction driver per output dtype and build, bound to these buffers'
        # types (compiled.bound_predict_into); None for a workspace used once.
        self.predict_entries = None

    def set_dropout_step(self, step):
        """The optimizer step whose dropout masks the next forward pass draws (no-op
        without dropout layers)."""
        key = self.net.dropout_key
        if key is not None:
            key[KEY_STEP] = step

    def set_dropout_key(self, seed, stream):
        """The seed and stream (MPI rank) the dropout masks are drawn for (no-op without
        dropout layers)."""
        key = self.net.dropout_key
        if key is not None:
            key[KEY_SEED] = seed
            key[KEY_STREAM] = stream

    def kernel_threads(self, n_threads):
        """The ``n_threads`` argument for the kernels on these buffers: ``n_threads``, or
        None when every product and elementwise pass would run serially anyway.

        None selects the kernels' serial build, which compiles no ``prange`` driver at all
        (about half of a first fit's compile time); the results are the same bit for bit,
        since with ``n_threads`` the kernels would take the same serial paths.  Which build
        runs depends on the buffers' shapes and on ``n_threads`` only; reproducible mode
        passes its fixed split (:func:`fastmlp.threads.work_split`).

        Raises
        ------
        RuntimeError
            For the parallel build in a child forked after its parent ran GNU OpenMP,
            which only reproducible mode asks for there (a forked child counts 1 thread).
        """
        if n_threads < 2 or not self._parallel_work:
            return None
        if forked_after_openmp():  # only reproducible mode asks for >= 2 threads here
            raise RuntimeError(
                "reproducible mode runs numba's threaded kernels, which GNU OpenMP cannot run "
                "in a child process forked after its parent used them: start the child with "
                "multiprocessing's 'spawn' or 'forkserver' method, or leave reproducible mode "
                "off in the child")
        return n_threads

    @property
    def nbytes(self):
        """Total bytes held (the shared parameter vector excluded)."""
        arrays = [a for name, a in self.net._asdict().items() if name != "params" and a is not None]
        return sum(a.nbytes for a in arrays + [self.x_batch, self.label_batch, self.target_batch,
                                                  self.weight_batch])
