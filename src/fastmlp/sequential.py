"""The ``Sequential`` model: layers, parameters, workspaces, the step API and predictions.

The numerics live in :mod:`fastmlp.kernels` (called through :mod:`fastmlp.compiled`); the
epoch loop that ``fit`` runs lives in :mod:`fastmlp.training`.  This module checks what the
user hands in, owns the parameter vector, the optimizer state and the preallocated
workspaces, and implements what the loop needs from a model
(:class:`fastmlp.training.protocol.Trainable`).
"""

import math
import numbers
import threading

import numpy as np

from fastmlp import compiled, io, losses, safetensors_io, streaming, training
from fastmlp._validation import as_features, as_labels, as_targets, sample_weight_per_row
from fastmlp.compiled import count_nonfinite
from fastmlp.kernels.losses import BINARY_CROSS_ENTROPY, HUBER, L1, LOSSES, MSE
from fastmlp.layers import Dense, Dropout, Layer, LayerNorm, Maxout
from fastmlp.optimizers import SGD, Optimizer
from fastmlp.threads import get_reproducible, pin_blas, work_split
from fastmlp.training import DivergenceError, History, Rows
from fastmlp.workspace import Workspace, layer_table

__all__ = ["DivergenceError", "History", "Sequential", "from_torch", "load"]

#: Rows per chunk when predicting or evaluating: bounds the inference workspace.
PREDICT_CHUNK_ROWS = 1024

#: Each thread keeps the inference workspaces of its last few ``predict``-family calls, by
#: capacity, when they are at most this large: building one costs about 25 us of Python, more
#: than a small network's whole forward pass, while a large one costs little next to its work.
KEPT_WORKSPACE_BYTES = 4 << 20
KEPT_WORKSPACES_PER_THREAD = 4


class _ThreadWorkspaces(threading.local):
    """One thread's kept inference workspaces, ``{capacity: Workspace}``, least recently
    used first.  Per thread, so that concurrent predictions never share buffers."""

    def __init__(self):
        self.by_capacity = {}


class Sequential:
    """A stack of layers trained by minibatch gradient descent.

    Parameters
    ----------
    layers : list of Layer
        :class:`~fastmlp.Dense` and :class:`~fastmlp.Maxout` layers, each layer's ``n_in``
        equal to the previous layer's ``n_out``, and :class:`~fastmlp.Dropout` and
        :class:`~fastmlp.LayerNorm` layers anywhere between them (their width is that of
        the layer before them, or for a first layer the next one's ``n_in``).  The last
        layer outputs raw scores: the loss applies softmax or sigmoid itself.
    loss : str or fastmlp.losses.Loss, default "softmax_cross_entropy"
        ``softmax_cross_entropy`` or ``multiclass_hinge`` (integer class labels),
        ``binary_cross_entropy`` (0/1 targets, one column per output), or a regression
        loss: ``mse``, ``huber`` or ``l1``.  A name gives the loss's defaults; an object
        such as ``SoftmaxCrossEntropy(label_smoothing=0.1)`` or ``Huber(delta=0.5)`` sets
        its parameters (:mod:`fastmlp.losses`).  ``model.loss`` is then the name and
        ``model.loss_object`` the object.
    optimizer : Optimizer, optional
        Defaults to ``SGD(lr=0.01)``.  One optimizer object serves one model.
    seed : int or None
        Seeds weight initialisation (He normal for ReLU-family layers, Glorot uniform
        otherwise, zero biases), the per-epoch shuffle and the dropout masks.  Same seed,
        same data, same thread count: same weights.
    dtype : {numpy.float32, numpy.float64}
        Precision of parameters and computation.  Inputs are converted once per call.

    Notes
    -----
    :class:`~fastmlp.Dropout` masks are hashed from ``dropout_seed`` (the seed, or with
    ``seed=None`` 63 bits from the OS; files and checkpoints keep it), the optimizer step,
    ``dropout_stream`` (0; under MPI each rank's rank), the layer, the row and the unit: see
    the user guide's section on dropout.

    Examples
    --------
    >>> import numpy as np
    >>> from fastmlp import Sequential, Dense, SGD
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> y = (X[:, 0] * X[:, 1] > 0).astype(int)
    >>> model = Sequential([Dense(2, 16, activation="tanh"), Dense(16, 2)],
    ...                    optimizer=SGD(lr=0.5, momentum=0.9), seed=0)
    >>> history = model.fit(X, y, epochs=50, batch_size=20)
    >>> model.score(X, y) > 0.9
    True
    """

    def __init__(self, layers, loss="softmax_cross_entropy", optimizer=None, seed=None, dtype=np.float32):
        layers = list(layers)
        widths = _check_layers(layers)
        loss_object = losses.get(loss)
        loss = loss_object.name
        self.loss_code = loss_object.code
        n_out = widths[-1] if layers[-1].takes_width else layers[-1].n_out
        if self.is_classifier and self.loss_code != BINARY_CROSS_ENTROPY and n_out < 2:
            raise ValueError(f"loss {loss!r} needs at least 2 classes, but the last layer has "
                             f"{n_out} output")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        if optimizer is None:
            optimizer = SGD()
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a fastmlp optimizer such as SGD(...), got {optimizer!r}")
        if not (seed is None or (isinstance(seed, numbers.Integral) and seed >= 0)):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")

        for layer, width in zip(layers, widths):
            if layer.takes_width:
                layer.set_width(width)
        pin_blas()
        self.loss = loss
        self.loss_object = loss_object
        self._loss_params = loss_object.kernel_params()  # float64, or None: see losses.Loss
        self.dtype = dtype
        self.layers = layers
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        # The dropout masks' key (kernels/dropout.py): the seed, or without one a fresh
        # 63-bit value from the OS, which save/load and checkpoints keep.  Not drawn from
        # ``_rng``, so a model without dropout layers keeps its streams as they were.
        self.dropout_seed = (int(seed) % (1 << 63) if seed is not None
                             else int(np.random.SeedSequence().entropy) % (1 << 63))
        # Under MPI each rank sets its rank here, so that its rows get masks of their own.
        self.dropout_stream = 0
        self._arch, self._act_params, self._n_weights, n_params = layer_table(layers, dtype)
        optimizer.bind(self, n_params, dtype)  # first: it may refuse, and nothing is attached yet
        self.optimizer = optimizer
        self.params = np.empty(n_params, dtype=dtype)  # all weights, then all biases
        # The last known-finite parameters and optimizer state, to undo an update that
        # overflowed: (n_params,) and (n_slots, n_params).
        self._saved_params = np.empty_like(self.params)
        self._saved_state = np.empty_like(optimizer.state)
        for k, layer in enumerate(layers):
            if layer.takes_width:
                layer.mark_built()
            if not layer.has_parameters:
                continue
            layer.W, layer.b = self._layer_views(self.params, k)
            W, b = layer.init_weights(self._rng, dtype)
            layer.W[...] = W
            layer.b[...] = b
        self._train_workspace = None
        # Stand-ins for the label or target argument that a loss does not read.
        self._no_labels = np.zeros(0, dtype=np.int64)
        self._no_targets = np.zeros((0, n_out), dtype=dtype)
        self._no_weights = np.zeros(0, dtype=dtype)
        self.stop_training = False  # a callback sets it to end fit after the current epoch
        self.history = None  # the History of the last fit
        self._hyper_key = None
        self._hyper = None
        self._clip_key = None
        self._clip = None
        self._no_grad_norms = np.zeros(0)  # stand-in when no gradient is clipped
        # Held while this model trains: one thread at a time may change the parameters
        # (re-entrant: fit's own steps take it again).  Predictions never take it.
        self._training = threading.RLock()
        self._kept_workspaces = _ThreadWorkspaces()

    # ----------------------------------------------------------------- properties
    @property
    def n_features_in(self):
        """Input width of the first layer."""
        return self.layers[0].n_in

    @property
    def n_outputs(self):
        """Output width of the last layer (number of classes for the classification losses)."""
        return self.layers[-1].n_out

    @property
    def is_classifier(self):
        """True for every loss but the regression ones (``mse``, ``huber``, ``l1``)."""
        return self.loss_code not in (MSE, HUBER, L1)

    @property
    def rng(self):
        """The model's random stream (numpy ``Generator``): weight initialisation, then each
        epoch's shuffle.  Checkpoints save and restore its state."""
        return self._rng

    @property
    def uses_labels(self):
        """True when ``y`` is integer class labels (``softmax_cross_entropy``,
        ``multiclass_hinge``); False when it is targets."""
        return self.loss_object.uses_labels

    def __repr__(self):
        inner = ",\n    ".join(repr(layer) for layer in self.layers)
        # The name while the loss has its defaults, else the object with its parameters.
        loss = self.loss if self.loss_object == losses.get(self.loss) else self.loss_object
        return (f"Sequential([\n    {inner}\n], loss={loss!r}, optimizer={self.optimizer!r}, "
                f"dtype={self.dtype.name})")

    def __getstate__(self):
        state = dict(self.__dict__)
        # A lock belongs to this process and this object; kept workspaces are a cache.
        del state["_training"], state["_kept_workspaces"]
        return state

    def __setstate__(self, state):
        # pickle and deepcopy restore each layer's W and b as arrays of their own (numpy
        # copies views): point them back into the parameter vector.
        self.__dict__.update(state)
        self._training = threading.RLock()
        self._kept_workspaces = _ThreadWorkspaces()
        self._own_read_only_arrays()
        for k, layer in enumerate(self.layers):
            if layer.has_parameters:
                layer.W, layer.b = self._layer_views(self.params, k)

    def _own_read_only_arrays(self):
        """Writable copies of the arrays that came back read-only: ``joblib.load(path,
        mmap_mode="r")`` restores them as read-only memory maps.  Training writes to them,
        and numba would compile every kernel a second time for read-only array types."""
        for owner in (self, self.optimizer):
            for name, value in list(vars(owner).items()):
                if isinstance(value, np.ndarray) and not value.flags.writeable:
                    setattr(owner, name, value.copy())
        ws = self._train_workspace
        if ws is not None and ws.net.params is not self.params:  # it held the read-only ones
            fresh = Workspace(self._arch, self._act_params, self.params, ws.capacity,
                              0 if self.uses_labels else self.n_outputs, training=True)
            fresh.net.grads[...] = ws.net.grads  # for get_gradients
            self._train_workspace = fresh

    # ----------------------------------------------------------------- weights
    def _layer_views(self, flat, k):
        layer = self.layers[k]
        w0, b0 = self._arch[k, compiled.W_OFFSET], self._arch[k, compiled.B_OFFSET]
        W = flat[w0:w0 + math.prod(layer.weight_shape)].reshape(layer.weight_shape)
        return W, flat[b0:b0 + math.prod(layer.bias_shape)]

    def get_weights(self):
        """Copies of the parameters: ``[W1, b1, W2, b2, ...]``.

        ``W`` has shape ``(n_in, n_out)`` (the model computes ``x @ W + b``) and ``b`` shape
        ``(n_out,)``; for :class:`~fastmlp.Maxout` see its weight layout.  A
        :class:`~fastmlp.LayerNorm` contributes its ``gain`` then its ``bias``, both
        ``(n,)``, in its place in the layer order; a :class:`~fastmlp.Dropout` nothing.
        """
        weights = []
        for layer in self.layers:
            if layer.has_parameters:
                weights += [layer.W.copy(), layer.b.copy()]
        return weights

    def set_weights(self, weights):
        """Replace every parameter from a list shaped like :meth:`get_weights`'s.

        All arrays are checked (count, shapes, finiteness) before any is written.
        """
        weights = list(weights)
        owners = [(k, layer) for k, layer in enumerate(self.layers) if layer.has_parameters]
        if len(weights) != 2 * len(owners):
            raise ValueError(f"expected {2 * len(owners)} arrays [W1, b1, ...], got {len(weights)}")
        checked = []
        for i, w in enumerate(weights):
            k, layer = owners[i // 2]
            shape = layer.weight_shape if i % 2 == 0 else layer.bias_shape
            name = f"{layer.parameter_names[i % 2]}{k + 1}"
            arr = np.asarray(w)
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
            arr = arr.astype(self.dtype)
            if not np.isfinite(arr).all():
                raise ValueError(f"{name} contains NaN or Inf")
            checked.append(arr)
        for (_, layer), (W, b) in zip(owners, zip(checked[::2], checked[1::2])):
            layer.W[...] = W
            layer.b[...] = b

    def get_gradients(self):
        """Copies of the gradients of the last training step, laid out as :meth:`get_weights`."""
        if self._train_workspace is None:
            raise RuntimeError("no gradients yet: call train_step or fit first")
        grads = []
        for k, layer in enumerate(self.layers):
            if layer.has_parameters:
                grads += [g.copy() for g in self._layer_views(self._train_workspace.net.grads, k)]
        return grads

    def save(self, path):
        """Write the model to ``path`` in fastmlp's file format (``docs/file-format.md``).

        The file holds the weights, architecture, loss, dtype, optimizer (hyperparameters,
        state, step count) and RNG state, and no code: :func:`fastmlp.load` reads it back
        without unpickling anything.  The write is atomic: a crash during it leaves the
        previous file at ``path`` (if any) intact.

        Parameters
        ----------
        path : str or os.PathLike
        """
        io.save(self, path)

    def export(self, path, format, **options):
        """Write the model to ``path`` in another format, for other tools and runtimes
        (Keras 3's ``export``).

        Parameters
        ----------
        path : str or os.PathLike
        format : str
            ``"onnx"``: a standard ONNX graph (opset 18; needs ``pip install
            'fastmlp[onnx]'``) with outputs ``scores``, and for the classification losses
            ``label`` and, where :meth:`predict_proba` is defined, ``probabilities``
            (docs/deployment.md).
            ``"safetensors"``: the weights as tensors ``layers.{k}.weight`` (shape
            ``(n_in, n_out)``; ``(n_in, pieces * n_out)`` for :class:`~fastmlp.Maxout`) and
            ``layers.{k}.bias``, with the architecture, loss, dtype and optimizer
            hyperparameters as JSON in ``__metadata__`` (``docs/file-format.md``).
            :func:`fastmlp.load` reads it back (weights only: the optimizer starts afresh).
        **options
            Options of the format (neither takes any yet).

        Raises
        ------
        ValueError
            For an unknown format (the message lists the valid ones), a layer the format
            cannot express, or weights that are NaN or Inf.
        OSError
            When the file cannot be written; as :meth:`save`, the write is atomic and the
            previous file at ``path`` (if any) is left as it was.
        """
        from fastmlp import exporters

        exporters.export(self, path, format, **options)

    def count_params(self):
        """The number of parameters (weights and biases of every layer), as Keras counts them."""
        return int(self.params.shape[0])

    def summary(self, print_fn=None, line_length=None):
        """Print a table of the layers, their output widths and parameter counts (Keras's
        ``model.summary()``), with the totals at the end.

        Parameters
        ----------
        print_fn : callable, optional
            Called with each line of the table (default: ``print``).  To get the table as
            a string: ``lines = []; model.summary(print_fn=lines.append);
            "\\n".join(lines)``.
        line_length : int, optional
            Total width of the table (default 65, widened to fit long entries).

        Returns
        -------
        None
        """
        from fastmlp.summary import summary_lines

        for line in summary_lines(self, line_length):
            (print if print_fn is None else print_fn)(line)

    def to_torch(self):
        """The model as a PyTorch ``torch.nn.Sequential`` computing :meth:`decision_function`.

        Each :class:`~fastmlp.Dense` layer becomes an ``nn.Linear`` (``weight = W.T``,
        ``bias = b``) followed by its activation's module (none for identity), a
        :class:`~fastmlp.Dropout` an ``nn.Dropout(rate)`` and a :class:`~fastmlp.LayerNorm`
        an ``nn.LayerNorm(n, eps, elementwise_affine=True)`` (``weight = gain``), in the
        model's dtype; :func:`fastmlp.from_torch` goes back.  The network is returned in
        eval mode, so that it computes what :meth:`decision_function` does (call
        ``.train()`` to train it in PyTorch).  Needs torch.

        Raises
        ------
        ValueError
            For a layer PyTorch has no module for (:class:`~fastmlp.Maxout`); nothing is
            built then.
        """
        from fastmlp.torch_interop import to_torch

        return to_torch(self)

    # ----------------------------------------------------------------- input handling
    def rows(self, X, y):
        """``(X, y)`` validated and converted, as :class:`~fastmlp.training.Rows` without
        weights.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like
            As :meth:`fit` takes it.

        Raises
        ------
        ValueError, TypeError
            For anything :meth:`fit` refuses in ``X`` or ``y``.
        """
        return Rows(*self._prepare(X, y, stream=True), self._no_weights)

    def signature(self):
        """What replicas of this model on other MPI ranks must match (a tuple: dtype, loss
        with its parameters, parameter count, architecture, activation parameters, optimizer
        class, hyperparameters with the clipping settings, and state shape)."""
        opt = self.optimizer
        return (self.dtype.name, repr(self.loss_object), self.params.shape[0], self._arch.tobytes(),
                np.asarray(self._act_params).tobytes(), type(opt).__name__,
                tuple(getattr(opt, name) for name in opt.hyperparameter_names + opt.clip_names),
                opt.state.shape)

    def parameter_spans(self):
        """``[(start, size), ...]``: where each array of :meth:`get_weights` (``W1, b1, ...``)
        lies in :attr:`params`."""
        spans = []
        for k, layer in enumerate(self.layers):
            if layer.has_parameters:
                arch = self._arch[k]
                spans += [(int(arch[compiled.W_OFFSET]), math.prod(layer.weight_shape)),
                          (int(arch[compiled.B_OFFSET]), math.prod(layer.bias_shape))]
        return spans

    def _prepare(self, X, y, stream=False):
        """Validated ``(X, labels, targets)``; the unused one of labels/targets is empty.

        With ``stream``, a memory-mapped or large foreign ``X`` is checked as a stream and
        kept as it is, for the gathering loops (:mod:`fastmlp.streaming`)."""
        X = (streaming.features if stream else as_features)(X, self.n_features_in, self.dtype)
        if y is None:
            raise ValueError("y is required")
        if self.uses_labels:
            return X, as_labels(y, X.shape[0], self.n_outputs), self._no_targets
        targets = as_targets(y, X.shape[0], self.n_outputs, self.dtype,
                             binary=self.loss_code == BINARY_CROSS_ENTROPY)
        return X, self._no_labels, targets

    def _training_workspace(self, rows):
        ws = self._train_workspace
        if ws is None or ws.capacity < rows:
            n_targets = 0 if self.uses_labels else self.n_outputs
            ws = Workspace(self._arch, self._act_params, self.params, rows, n_targets, training=True,
                           dropout_key=(self.dropout_seed, self.dropout_stream),
                           loss_params=self._loss_params)
            self._train_workspace = ws
        # A resume or an MPI fit may have changed the key since the workspace was built.
        ws.set_dropout_key(self.dropout_seed, self.dropout_stream)
        return ws

    def inference_workspace(self, rows, training_masks=False):
        """Buffers for a forward pass over ``rows`` rows, in chunks of at most
        ``PREDICT_CHUNK_ROWS``; for :meth:`evaluate_rows`.

        With ``training_masks``, dropout layers apply the masks of the next training step
        (:meth:`set_dropout_step` chooses another) instead of being the identity: what a
        gradient check needs to hold the mask fixed.  Rows count from each chunk's start.
        """
        # A fresh one per call: predictions from several threads never share buffers.
        ws = Workspace(self._arch, self._act_params, self.params, min(rows, PREDICT_CHUNK_ROWS),
                       0, training=False, dropout_key=(self.dropout_seed, self.dropout_stream),
                       masks=training_masks, loss_params=self._loss_params)
        ws.set_dropout_step(self.optimizer.step_count + 1)
        return ws

    @property
    def has_dropout(self):
        """Whether some layer is a :class:`~fastmlp.Dropout`."""
        return any(isinstance(layer, Dropout) for layer in self.layers)

    def _call_workspace(self, rows):
        """An inference workspace for one ``predict``/``evaluate``/``score`` call on ``rows``
        rows: this thread's kept one of the same capacity if there is one, else a new one
        (kept for the next calls when small).  Not for callers that hold on to it across
        calls: those take :meth:`inference_workspace`."""
        capacity = min(rows, PREDICT_CHUNK_ROWS)
        kept = self._kept_workspaces.by_capacity
        ws = kept.pop(capacity, None)
        if ws is None:
            ws = self.inference_workspace(rows)
            if ws.nbytes > KEPT_WORKSPACE_BYTES:
                return ws
            if len(kept) >= KEPT_WORKSPACES_PER_THREAD:
                del kept[next(iter(kept))]
            ws.predict_entries = {}
        kept[capacity] = ws  # (re)inserted last: the most recently used
        return ws

    def _hyperparameters(self):
        # Rebuilt only when a hyperparameter changed (a user may lower lr between calls).
        opt = self.optimizer
        if self._hyper_key is not None:
            # Compared one by one: building a tuple per step would fill Python's tuple free
            # list, which the allocation test would rightly count.
            for name, seen in zip(opt.hyperparameter_names, self._hyper_key):
                if getattr(opt, name) != seen:
                    break
            else:
                return self._hyper
        self._hyper = opt.hyperparameters(self.dtype)
        self._hyper_key = [getattr(opt, name) for name in opt.hyperparameter_names]
        return self._hyper

    def _clip_settings(self):
        # The optimizer's ``clip`` vector for the kernels (None: no clipping), rebuilt only
        # when ``clip_norm`` or ``clip_value`` changed, so that a step allocates nothing.
        opt = self.optimizer
        if self._clip_key is None or self._clip_key[0] != opt.clip_norm \
                or self._clip_key[1] != opt.clip_value:
            self._clip = opt.clip_vector()
            self._clip_key = (opt.clip_norm, opt.clip_value)
        return self._clip

    # ----------------------------------------------------------------- training
    def _claim(self, what):
        """Take the training lock without waiting, or refuse: two threads stepping one
        model would interleave half-applied updates."""
        if not self._training.acquire(blocking=False):
            raise RuntimeError(f"{what}: this model is being trained in another thread; one "
                               "model trains in one thread at a time (predict, evaluate and "
                               "score from other threads are fine). Train a copy "
                               "(copy.deepcopy(model)) in the other thread instead.")

    def compute_gradients(self, X, y, sample_weight=None):
        """Forward and backward pass on one batch without updating the parameters.

        The gradients of the batch's mean data loss are kept for :meth:`apply_gradients`
        (and visible through :meth:`get_gradients`).  Between the two calls is where
        data-parallel training averages gradients across processes.

        Parameters
        ----------
        X, y : array-like
            One batch, as for :meth:`fit`.
        sample_weight : array-like of shape (batch,), optional
            Per-row loss weights, as for :meth:`fit`.

        Returns
        -------
        float
            The batch's mean (weighted) loss.
        """
        self._claim("compute_gradients")
        try:
            X, labels, targets = self._prepare(X, y)
            weights = self._no_weights
            if sample_weight is not None:
                weights = sample_weight_per_row(sample_weight, X.shape[0]).astype(self.dtype)
            ws = self._training_workspace(X.shape[0])
            # The masks of the step these gradients are for (apply_gradients counts it).
            ws.set_dropout_step(self.optimizer.step_count + 1)
            return compiled.compute_gradients(ws.net, self.loss_code, X, labels, targets,
                                              weights, ws.kernel_threads(work_split()))
        finally:
            self._training.release()

    @property
    def flat_gradients(self):
        """The live gradient vector, laid out like :attr:`params` (all weights, then all
        biases): :meth:`compute_gradients` fills it, :meth:`apply_gradients` reads it.

        Data-parallel training overwrites it with the average across processes in between
        (one contiguous buffer: one Allreduce).
        """
        if self._train_workspace is None:
            raise RuntimeError("no gradients yet: call compute_gradients first")
        return self._train_workspace.net.grads

    def save_finite_state(self):
        """Remember the parameters and optimizer state (the fallback should an update
        overflow); returns the optimizer's step count, for :meth:`restore_finite_state`."""
        np.copyto(self._saved_params, self.params)
        np.copyto(self._saved_state, self.optimizer.state)
        return self.optimizer.step_count

    def restore_finite_state(self, step_count):
        """Put back what :meth:`save_finite_state` remembered, and ``step_count``."""
        np.copyto(self.params, self._saved_params)
        np.copyto(self.optimizer.state, self._saved_state)
        self.optimizer.step_count = step_count

    def apply_gradients(self):
        """One optimizer update from the gradients of the last :meth:`compute_gradients`.

        With ``clip_norm`` or ``clip_value`` set on the optimizer, the gradients are clipped
        in place first (:meth:`get_gradients` then shows the clipped ones, as PyTorch's
        ``.grad`` after ``clip_grad_norm_``).

        Returns
        -------
        float or None
            The gradient's global L2 norm before clipping, or None when the optimizer does
            not clip.

        Raises
        ------
        DivergenceError
            If the update made a parameter NaN or Inf; it is then undone.
        """
        self._claim("apply_gradients")
        try:
            grads = self.flat_gradients
            opt = self.optimizer
            hyper = self._hyperparameters()
            clip = self._clip_settings()
            steps_before = self.save_finite_state()
            opt.step_count += 1
            # The update is serial whatever the thread count (kernels/optim.py): None keeps
            # the prange drivers out of its compiled code.
            norm = compiled.optimizer_update(opt.kind, self.params, grads, opt.state, hyper,
                                             self._n_weights, opt.step_count, clip, None)
            if count_nonfinite(self.params):
                self.restore_finite_state(steps_before)
                raise DivergenceError("the update overflowed to NaN or Inf and was undone; "
                                      "try a smaller learning rate")
            return None if clip is None else float(norm)
        finally:
            self._training.release()

    def train_steps(self, rows, order, batch_size, first, stop, batch_losses, batch_correct,
                    step_count, batch_grad_norms=None):
        """Steps ``first .. stop - 1`` of an epoch in one compiled call (``fit``'s loop).

        Parameters
        ----------
        rows : Rows
            The training rows, from :meth:`rows` (with their weights).
        order : ndarray of int64, shape (n,)
            Step ``k`` trains on rows ``order[k * batch_size:(k + 1) * batch_size]``.
        batch_size : int
        first, stop : int
            The steps to run.
        batch_losses : ndarray of float64, shape (n_batches,)
            Overwritten: each step's mean loss.
        batch_correct : ndarray of int64, shape (n_batches,)
            Overwritten: each step's rows predicted right before the step.
        step_count : int
            The optimizer's step count before step 0 of the epoch (the caller adds the
            steps run when the epoch ends).
        batch_grad_norms : ndarray of float64, shape (n_batches,), optional
            When the optimizer clips, overwritten: each step's gradient norm before
            clipping.  Needed then (a ValueError without it).

        Returns
        -------
        int
            The first step not run: ``stop``, or the step whose loss was not finite
            (the parameters are then those before it).
        """
        streaming.check_unchanged(rows.X)
        ws = self._training_workspace(batch_size)
        opt = self.optimizer
        hyper = self._hyperparameters()  # a schedule may have changed lr since the last call
        clip = self._clip_settings()
        if batch_grad_norms is None:
            if clip is not None:
                raise ValueError("the optimizer clips gradients: train_steps needs "
                                 "batch_grad_norms for their norms")
            batch_grad_norms = self._no_grad_norms
        return compiled.train_epoch(
            ws.net, self.loss_code, rows.X, rows.labels, rows.targets, rows.weights, order,
            batch_size, ws.x_batch, ws.label_batch, ws.target_batch, ws.weight_batch, opt.kind,
            opt.state, hyper, self._n_weights, clip, step_count, first, stop, batch_losses,
            batch_correct, batch_grad_norms, ws.kernel_threads(work_split()))

    def count_correct_last_step(self, y):
        """Rows of the last :meth:`compute_gradients` batch predicted right, from the scores
        its forward pass cached; ``y`` is that batch's labels or targets as :meth:`rows`
        converts them."""
        labels, targets = (y, self._no_targets) if self.uses_labels else (self._no_labels, y)
        return int(compiled.count_correct_cached(self._train_workspace.net, self.loss_code,
                                                 labels, targets))

    def train_step(self, X, y, sample_weight=None):
        """One optimizer step on the batch ``(X, y)``; returns the batch's mean loss.

        ``sample_weight`` (optional, ``(batch,)``) weighs each row's loss as in :meth:`fit`.

        For users who write their own loop.  With arrays already of the model's dtype
        (and int64 labels), C-contiguous, a steady-state step allocates nothing.

        Raises
        ------
        DivergenceError
            If the loss is NaN or Inf; the parameters are then left unchanged.
        RuntimeError
            If another thread is training this model at the same time.
        """
        self._claim("train_step")
        try:
            loss = self.compute_gradients(X, y, sample_weight)
            if not math.isfinite(loss):
                raise DivergenceError(f"the loss is {loss} on this batch; the step was not "
                                      "applied")
            self.apply_gradients()
            return loss
        finally:
            self._training.release()

    def fit(self, X, y=None, epochs=1, batch_size=32, shuffle=True, validation_data=None,
            validation_split=0.0, sample_weight=None, class_weight=None, callbacks=None, verbose=0,
            checkpoint=None, checkpoint_every=None, resume=False, comm=None, fresh_order=False):
        """Train by minibatch gradient descent.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a source of chunks
            A ``numpy.memmap`` (``np.load(path, mmap_mode="r")``) or any float array, C- or
            F-ordered, in either float dtype, is used in place: checked in one sequential
            pass, then each batch's rows are gathered and converted inside the compiled
            loop (docs/large-data.md), so a file larger than memory trains.  Or a source of
            ``(X_chunk, y_chunk)`` pairs (a callable returning an iterator, or a re-iterable
            object) with ``y=None``: see docs/large-data.md for its semantics.
        y : array-like
            ``(n_samples,)`` integer class labels for ``softmax_cross_entropy`` and
            ``multiclass_hinge``; ``(n_samples, n_outputs)`` (or ``(n_samples,)`` with one
            output) targets for ``binary_cross_entropy`` (0/1) and ``mse``.  None with a
            source of chunks.
        epochs : int, default 1
        batch_size : int, default 32
            The last batch of an epoch is smaller when it does not divide ``n_samples``.
        shuffle : bool, "chunks" or ChunkShuffle, default True
            Visit the rows in a new order each epoch, drawn from the model's seeded RNG.
            ``"chunks"`` (or :class:`~fastmlp.ChunkShuffle` with its sizes) visits
            contiguous chunks of rows in a random order and shuffles rows within a window
            of chunks, so that reading a memory-mapped file stays sequential.  With a
            source of chunks, True shuffles the rows within each chunk.
        validation_data : tuple (X_val, y_val), optional
            Evaluated after every epoch (``val_loss``, and ``val_accuracy`` for classifiers).
        validation_split : float, default 0.0
            In [0, 1): hold out this fraction of the rows, the *last* ones as given (before
            any shuffling, as Keras does; shuffle sorted data first), as validation data.
            Not together with ``validation_data``.
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative weight of each row's loss.  A batch's loss is
            ``sum(w_i * loss_i) / batch_rows`` (Keras's convention: not divided by the sum
            of the weights, so weights of 2 act like a doubled learning rate on those rows).
            The validation loss is not weighted.
        class_weight : dict or "balanced", optional
            Weight of each class's rows, multiplied into ``sample_weight``: ``{class: weight}``
            (classes left out weigh 1) for the label losses and, with one output, for
            ``binary_cross_entropy`` (classes 0 and 1).  ``"balanced"`` gives class ``c``
            the weight ``n_samples / (n_classes * count_c)`` (scikit-learn's rule).
        callbacks : list of Callback, optional
            Called at the start and end of training and of every epoch
            (:mod:`fastmlp.callbacks`): learning-rate schedules, early stopping, your own.
        verbose : {0, 1, 2}, default 0
            0 is silent; 1 shows a progress bar per epoch with the running loss and
            accuracy (tqdm's when installed, plain text otherwise); 2 prints one line per
            epoch.  Output goes to ``sys.stdout``.
        checkpoint : str or os.PathLike, optional
            Save a checkpoint there (atomically: a crash never leaves a broken file) every
            ``checkpoint_every`` epochs and after the last epoch: the model, optimizer state
            and step count, RNG state, row order and epoch count.
        checkpoint_every : int, optional
            Epochs between checkpoints (default 1); counted from the run's first epoch.
        resume : bool, default False
            With ``checkpoint``: if that file exists, continue the run it belongs to
            instead of starting afresh (without it, start afresh).  Rerunning the same script
            after a crash thus resumes it, and ends bit-identical to a run that never
            stopped (same seed, same thread count).  ``epochs`` counts the whole run, done
            epochs included; the checkpoint must come from the same architecture, loss,
            dtype, optimizer class, row count, batch size and ``shuffle`` (else
            ``ValueError``), and the optimizer's hyperparameters are this model's.
            The checkpoint also holds each callback's state (``Callback.get_state``: the
            schedules' base rate, :class:`~fastmlp.callbacks.ReduceLROnPlateau`'s rate and
            counters, :class:`~fastmlp.callbacks.EarlyStopping`'s best value and weights), so
            the resumed run needs the same such callbacks, in the same order (callbacks that
            keep no state may differ).
        fresh_order : bool, default False
            With ``shuffle``, each epoch's order is a fresh shuffle of the rows as given
            rather than a shuffle of the previous epoch's order.  Then ``fit(epochs=k)``
            trains bit for bit as ``k`` calls of ``fit(epochs=1)`` (which start from the
            rows as given each time), as scikit-learn's ``fit`` and ``partial_fit`` need of
            each other (:mod:`fastmlp.sklearn` uses it).  Not with ``checkpoint``.
        comm : mpi4py.MPI.Comm, optional
            Train data-parallel over the communicator's ranks: ``X`` and ``y`` are this
            rank's shard and ``batch_size`` is per rank (see docs/distributed.md).  Rank 0
            writes the checkpoints, which hold every rank's row order and shuffle stream; a
            resume needs as many ranks, with as many rows each, as the run that wrote it.
            ``validation_split`` holds out the end of each rank's shard, ``sample_weight``
            is per rank, ``class_weight="balanced"`` counts classes over all ranks, and every
            rank runs the callbacks on the same reduced logs; ``verbose`` 1 and 2 print one
            line per epoch on rank 0.

        Returns
        -------
        History
            The epochs run by this call; after a resume their numbers continue the run's
            (``history.epoch == [4, 5, ...]``).  Also kept as ``model.history``.

        Raises
        ------
        DivergenceError
            When a batch's loss is NaN or Inf.  The message gives the epoch and step; the
            parameters are those of the last finite step (or of the start of that epoch if
            the last update already made them non-finite), unless a callback such as
            :class:`~fastmlp.callbacks.EarlyStopping` restores others when training ends.
        RuntimeError
            When another thread is training this model (``fit``, ``train_step``,
            ``compute_gradients`` or ``apply_gradients``); nothing changes.  Predictions
            from other threads stay allowed.
        KeyboardInterrupt
            On Ctrl-C.  An epoch's steps run as one compiled call (in slices with
            ``verbose=1``), so the interrupt takes effect when the call returns: the model
            then holds the parameters, optimizer state and step count of its last
            completed step, every callback's ``on_train_end`` has run, and the last
            checkpoint on disk is intact (``resume=True`` continues bit-identically).
        """
        self._claim("fit")
        try:
            # Under comm= the MPI strategy checks the arguments on every rank at once, so
            # bad input on one rank raises everywhere instead of leaving the others waiting.
            return training.fit(self, X, y, comm=comm, epochs=epochs, batch_size=batch_size,
                                shuffle=shuffle, validation_data=validation_data,
                                validation_split=validation_split, sample_weight=sample_weight,
                                class_weight=class_weight, callbacks=callbacks,
                                verbose=verbose, checkpoint=checkpoint,
                                checkpoint_every=checkpoint_every, resume=resume,
                                fresh_order=fresh_order)
        finally:
            self._training.release()

    # ----------------------------------------------------------------- inference
    def _chunk_buffer(self, X, ws, always=False):
        """Scratch rows for the gather kernels, or None when ``X`` goes to the chain as it is
        (never with ``always``)."""
        if not (always or streaming.needs_gather(X, self.dtype)):
            return None
        streaming.check_unchanged(X)
        return np.empty((ws.capacity, self.n_features_in), dtype=self.dtype)

    def _evaluate_prepared(self, X, labels, targets, ws):
        x_chunk = self._chunk_buffer(X, ws)
        if x_chunk is not None:
            loss, correct = compiled.evaluate_gathered(ws.net, self.loss_code, X, labels, targets,
                                                       x_chunk, ws.kernel_threads(work_split()))
            return float(loss), int(correct)
        loss, correct = compiled.evaluate_chunked(ws.net, self.loss_code, X, labels, targets,
                                                 ws.capacity, ws.kernel_threads(work_split()))
        return float(loss), int(correct)

    def evaluate_rows(self, rows, workspace):
        """``(mean data loss, rows predicted right)`` of ``rows`` (:class:`Rows`) with
        ``workspace`` from :meth:`inference_workspace`."""
        return self._evaluate_prepared(rows.X, rows.labels, rows.targets, workspace)

    def evaluate(self, X, y=None):
        """Mean data loss on ``(X, y)`` and, for the classification losses, the accuracy.

        ``X`` may also be a source of ``(X_chunk, y_chunk)`` pairs, as :meth:`fit` takes
        (with ``y=None``): the loss and accuracy are then over all its rows.

        Returns
        -------
        dict
            ``{"loss": float, "accuracy": float}`` (no ``"accuracy"`` for the regression
            losses ``mse``, ``huber``, ``l1``).
        """
        chunked = training.evaluate_chunks(self, X) if y is None else None
        if chunked is not None:
            loss, correct, n = chunked
            result = {"loss": float(loss)}
            if self.is_classifier:
                result["accuracy"] = correct / n
            return result
        X, labels, targets = self._prepare(X, y, stream=True)
        loss, correct = self._evaluate_prepared(X, labels, targets, self._call_workspace(X.shape[0]))
        result = {"loss": loss}
        if self.is_classifier:
            result["accuracy"] = correct / X.shape[0]
        return result

    def _predict_into(self, X, transform, out, ws, rows_alone=False):
        # ``rows_alone`` (reproducible mode, with a one-row ``ws``): every row is copied into
        # the same one-row buffer and goes through the chain on its own, so each row's
        # result is that of the same calls on the same buffers, whatever else is predicted.
        x_chunk = self._chunk_buffer(X, ws, always=rows_alone)
        n_threads = ws.kernel_threads(work_split())
        if x_chunk is not None:
            compiled.predict_gathered(ws.net, X, transform, x_chunk, out, n_threads)
            return
        # A kept workspace's calls all pass the same types (X as the chain takes it, out from
        # _predict) but for the output dtype and the build: after its first call through
        # numba's dispatcher, the bound driver skips the dispatch, most of a small call's time.
        entries = ws.predict_entries
        key = (out.dtype.char, n_threads is None)
        bound = entries.get(key) if entries is not None else None
        if bound is not None:
            bound(ws.net, X, transform, ws.capacity, out, n_threads)
            return
        compiled.predict_into(ws.net, X, transform, ws.capacity, out, n_threads)
        if entries is not None:
            entries[key] = (compiled.bound_predict_into(ws.net, X, transform, ws.capacity, out,
                                                        n_threads)
                            or compiled.predict_into)

    def _predict(self, X, transform):
        X = streaming.features(X, self.n_features_in, self.dtype)
        rows_alone = get_reproducible()
        ws = self._call_workspace(1 if rows_alone else X.shape[0])
        if transform == compiled.ARGMAX:
            out = np.empty((X.shape[0], 1), dtype=np.int64)
        else:
            out = np.empty((X.shape[0], self.n_outputs), dtype=self.dtype)
        self._predict_into(X, transform, out, ws, rows_alone)
        return out

    def decision_function(self, X):
        """Raw scores of the last layer, shape ``(n_samples, n_outputs)``."""
        return self._predict(X, compiled.RAW)

    def predict(self, X):
        """Predictions for ``X`` of shape ``(n_samples, n_features)``.

        Returns
        -------
        ndarray
            Class labels ``(n_samples,)`` (int64) for ``softmax_cross_entropy`` and
            ``multiclass_hinge``; 0/1 decisions (int64) for ``binary_cross_entropy``,
            ``(n_samples,)`` with one output, else ``(n_samples, n_outputs)``; raw outputs
            for the regression losses, ``(n_samples,)`` with one output, else
            ``(n_samples, n_outputs)``.
        """
        if self.uses_labels:
            return self._predict(X, compiled.ARGMAX)[:, 0]
        if self.loss_code == BINARY_CROSS_ENTROPY:
            out = self._predict(X, compiled.THRESHOLD).astype(np.int64)
        else:
            out = self._predict(X, compiled.RAW)
        return out[:, 0] if self.n_outputs == 1 else out

    def predict_proba(self, X):
        """Probabilities: softmax over classes ``(n_samples, n_classes)`` for
        ``softmax_cross_entropy``; each output's sigmoid ``(n_samples, n_outputs)`` for
        ``binary_cross_entropy``.  Not defined for ``multiclass_hinge`` and ``mse``."""
        if self.loss_code == LOSSES["softmax_cross_entropy"]:
            return self._predict(X, compiled.SOFTMAX)
        if self.loss_code == BINARY_CROSS_ENTROPY:
            return self._predict(X, compiled.SIGMOID)
        raise AttributeError(f"predict_proba is not defined for loss {self.loss!r}: its scores are "
                             "not probabilities (use decision_function)")

    def score(self, X, y):
        """Accuracy for the classification losses (subset accuracy for several binary
        outputs); the coefficient of determination R^2 for the regression losses (averaged
        over outputs)."""
        X, labels, targets = self._prepare(X, y, stream=True)
        ws = self._call_workspace(X.shape[0])
        if self.is_classifier:
            return self._evaluate_prepared(X, labels, targets, ws)[1] / X.shape[0]
        pred = np.empty((X.shape[0], self.n_outputs), dtype=self.dtype)
        self._predict_into(X, compiled.RAW, pred, ws)
        t = targets.astype(np.float64)
        ss_res = ((t - pred) ** 2).sum(axis=0)
        ss_tot = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
        # Constant targets: R^2 is 1 for a perfect fit, else 0 (scikit-learn's convention).
        r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1),
                      np.where(ss_res == 0, 1.0, 0.0))
        return float(r2.mean())


def _check_layers(layers):
    if not layers:
        raise ValueError("a Sequential model needs at least one layer")
    for k, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"layer {k + 1} is {layer!r}, not a fastmlp layer (Dense, Maxout, "
                            "Dropout, LayerNorm)")
        if layer.is_built:
            raise ValueError(f"layer {k + 1} ({layer!r}) already belongs to a model; "
                             "use layer.unbuilt_copy() to reuse its specification")
        if sum(other is layer for other in layers) > 1:
            raise ValueError(f"layer {k + 1} ({layer!r}) appears twice in the list")
    # Dropout and LayerNorm take the width of the layer before them; leading ones take the
    # input width of the first layer that has one.
    widths = [None if layer.takes_width else layer.n_in for layer in layers]
    sized = [k for k, layer in enumerate(layers) if not layer.takes_width]
    if not sized:
        raise ValueError("a Sequential model needs a Dense or Maxout layer: Dropout and "
                         "LayerNorm take their width from the layers around them")
    width = layers[sized[0]].n_in
    for k, layer in enumerate(layers):
        if layer.takes_width:
            widths[k] = width
        else:
            if layer.n_in != width:
                before = next(j for j in range(k - 1, -1, -1) if not layers[j].takes_width)
                raise ValueError(f"layer {k + 1} ({layer!r}) takes {layer.n_in} inputs, but "
                                 f"layer {before + 1} ({layers[before]!r}) outputs {width}")
            width = layer.n_out
    return widths


def load(path):
    """Load a model saved by :meth:`Sequential.save` (or a ``fit`` checkpoint), or a
    safetensors file written by :meth:`Sequential.export` (or by the ``safetensors``
    package, with fastmlp's metadata).  The format is told from the file's first bytes,
    never from its name.

    The file is checked completely (magic, format version, sizes against the real file
    size, SHA-256 checksum, every header field against the architecture) before anything
    is built; nothing in it can run code.  The model comes back with its weights, loss,
    dtype, optimizer (hyperparameters, state, step count) and RNG state, so training goes
    on exactly as it would have without the save.  A safetensors file holds weights only:
    its model comes back with those weights and a fresh optimizer of the class and
    hyperparameters its metadata names (SGD's defaults when it names none).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    Sequential

    Raises
    ------
    FormatError
        When the file is not an intact fastmlp file of a supported version, or a
        safetensors file that breaks the format's rules or lacks fastmlp's metadata; the
        message names the problem.
    """
    path = io.check_path(path)
    if safetensors_io.sniff(path):
        spec, weights = safetensors_io.model_spec(path, safetensors_io.read(path))
        model = model_from_spec(path, spec)
        model.set_weights(weights)
        return model
    contents = io.read(path)
    model = model_from_spec(path, io.model_spec(path, contents))
    io.apply_checkpoint_model(model, contents)
    return model


def model_from_spec(path, spec):
    """The ``Sequential`` that ``spec`` (:class:`fastmlp.io.ModelSpec`) describes."""
    try:
        layers = [Dense(n_in, n_out, activation, **params) if kind == "dense"
                  else Dropout(params["rate"]) if kind == "dropout"
                  else LayerNorm(params["eps"]) if kind == "layer_norm"
                  else Maxout(n_in, n_out, pieces)
                  for kind, n_in, n_out, pieces, activation, params in spec.layers]
        model = Sequential(layers, loss=losses.get(spec.loss, spec.loss_params),
                           optimizer=spec.optimizer_class(**spec.hyperparameters),
                           seed=spec.seed, dtype=np.dtype(spec.dtype))
    except (TypeError, ValueError) as exc:
        raise io.FormatError(f"{path}: the file describes an invalid model: {exc}") from None
    if spec.dropout_seed is not None:  # the masks go on as the file's model drew them
        model.dropout_seed = spec.dropout_seed
    return model


def from_torch(module, loss="softmax_cross_entropy", optimizer=None, seed=None):
    """A fastmlp model computing what a PyTorch ``nn.Sequential`` computes.

    Each ``nn.Linear`` becomes a :class:`~fastmlp.Dense` layer with ``W = weight.T`` and
    ``b = bias``; the activation module right after it (``ReLU``, ``Tanh``, ``Sigmoid``,
    ``LeakyReLU(negative_slope)`` with a slope in ``[0, 1]``, ``ELU(alpha)``, ``GELU()``
    in its exact form, ``SiLU``) becomes that layer's activation, and a ``Linear`` followed
    directly by another ``Linear`` (or by nothing) gets the identity.  ``nn.Dropout(p)``
    becomes ``Dropout(p)`` and ``nn.LayerNorm(n, eps)`` a ``LayerNorm(eps)`` with ``gain =
    weight``, ``bias = bias`` (``normalized_shape`` one int, the width there; without
    ``elementwise_affine`` or without bias, a gain of 1 and a bias of 0, which training
    then updates).  ``nn.Identity`` is skipped anywhere.  A ``Linear`` without bias
    (``bias=False``) becomes a layer whose bias starts at zero, so the outputs agree;
    training then updates that bias like any other (fastmlp layers always have one).

    ``decision_function(X)`` of the result equals ``module(X)`` in eval mode (dropout
    inactive): the loss applies softmax or sigmoid on top, so leave out a final ``Softmax``
    or ``Sigmoid`` that belongs to the loss.

    Parameters
    ----------
    module : torch.nn.Sequential
        On any device; its parameters are copied.  float32 or float64 (all alike), which
        becomes the model's dtype.
    loss : str, default "softmax_cross_entropy"
        As :class:`~fastmlp.Sequential` takes it.
    optimizer : Optimizer, optional
        Defaults to ``SGD(lr=0.01)``.
    seed : int or None
        Seeds the per-epoch shuffle of later training (the weights come from ``module``).

    Returns
    -------
    Sequential

    Raises
    ------
    TypeError
        When ``module`` is not an ``nn.Sequential``.
    ValueError
        For a module fastmlp has no layer for (``Conv2d``, a nested ``nn.Sequential``, ...),
        an activation that does not follow a ``Linear``, ``GELU(approximate='tanh')``,
        ``Dropout(1.0)``, a ``LayerNorm`` over more than one axis, widths that do not
        chain, or parameters that are neither float32 nor float64; the message names the
        module and its position.
    """
    from fastmlp.torch_interop import layers_from_torch

    layers, weights, dtype = layers_from_torch(module)
    model = Sequential(layers, loss=loss, optimizer=optimizer, seed=seed, dtype=dtype)
    model.set_weights(weights)
    return model
