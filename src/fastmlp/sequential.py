"""The ``Sequential`` model: validation, state, the training loop and predictions.

The numerics live in :mod:`fastmlp.kernels`; this module checks what the user hands in,
owns the parameter vector, the optimizer state and the preallocated workspaces, and calls
the compiled drivers.
"""

import math
import numbers
import os
import time

import numpy as np

from fastmlp import io as _io
from fastmlp._validation import (as_features, as_labels, as_targets, check_positive_int,
                                 class_weight_per_row, sample_weight_per_row)
from fastmlp.callbacks import Callback, LearningRateSchedule, ReduceLROnPlateau
from fastmlp.kernels import network
from fastmlp.kernels.checks import count_nonfinite
from fastmlp.kernels.losses import BINARY_CROSS_ENTROPY, LOSSES, MSE, MULTICLASS_HINGE
from fastmlp.layers import Layer
from fastmlp.optimizers import SGD, Optimizer
from fastmlp.progress import REDRAW_SECONDS, EpochProgress, epoch_line
from fastmlp.threads import get_num_threads, pin_blas
from fastmlp.workspace import Workspace, layer_table

#: Rows per chunk when predicting or evaluating: bounds the inference workspace.
PREDICT_CHUNK_ROWS = 1024


class DivergenceError(FloatingPointError):
    """Training produced a NaN or infinite loss; the model keeps finite weights."""


class History:
    """What :meth:`Sequential.fit` returns: per-epoch metrics.

    Attributes
    ----------
    history : dict of str -> list of float
        One value per epoch of each metric: ``"loss"`` (mean training loss of the epoch,
        measured during it), ``"accuracy"`` (classifiers: training rows predicted right
        just before their step), ``"lr"`` (learning rate used) and, with validation data,
        ``"val_loss"`` and ``"val_accuracy"`` (classifiers).
    epoch : list of int
        The 1-based epoch numbers of this ``fit`` call.
    """

    def __init__(self):
        self.history = {"loss": []}
        self.epoch = []

    def __getitem__(self, key):
        return self.history[key]

    def __repr__(self):
        last = {k: round(v[-1], 6) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"

    def plot(self, path=None, metrics=None):
        """Draw the training and validation curves (needs matplotlib).

        One panel per metric family: ``loss`` with ``val_loss``, ``accuracy`` with
        ``val_accuracy``, over the epoch numbers.

        Parameters
        ----------
        path : str or os.PathLike, optional
            Save the figure there (format from the extension: ``.png``, ``.pdf``, ``.svg``).
        metrics : list of str, optional
            Training metrics to draw, each with its ``val_`` twin when present; default
            ``loss`` and, for classifiers, ``accuracy``.

        Returns
        -------
        matplotlib.figure.Figure
            Made without pyplot, so no window opens and no GUI backend is needed.
        """
        try:
            from matplotlib.figure import Figure
            from matplotlib.ticker import MaxNLocator
        except ImportError:
            raise ImportError("History.plot needs matplotlib: pip install matplotlib "
                              "(or fastmlp[plot])") from None
        if not self.epoch:
            raise ValueError("this History has no epochs to plot")
        if metrics is None:
            metrics = [m for m in ("loss", "accuracy") if m in self.history]
        for name in metrics:
            if name not in self.history:
                raise ValueError(f"no metric {name!r} in this History; it has "
                                 f"{', '.join(self.history)}")
        figure = Figure(figsize=(5.5 * len(metrics), 4), layout="constrained")
        for axes, name in zip(figure.subplots(1, len(metrics), squeeze=False)[0], metrics):
            axes.plot(self.epoch, self.history[name], marker=".", label=f"training {name}")
            if f"val_{name}" in self.history:
                axes.plot(self.epoch, self.history[f"val_{name}"], marker=".",
                          label=f"validation {name}")
            axes.set_xlabel("epoch")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.set_ylabel(name)
            axes.grid(alpha=0.3)
            axes.legend()
        if path is not None:
            figure.savefig(path, dpi=100)
        return figure


class Sequential:
    """A stack of layers trained by minibatch gradient descent.

    Parameters
    ----------
    layers : list of Layer
        :class:`~fastmlp.Dense` and :class:`~fastmlp.Maxout` layers; each layer's
        ``n_in`` must equal the previous layer's ``n_out``.  The last layer outputs raw
        scores: the loss applies softmax or sigmoid itself.
    loss : str, default "softmax_cross_entropy"
        ``softmax_cross_entropy`` or ``multiclass_hinge`` (integer class labels),
        ``binary_cross_entropy`` (0/1 targets, one column per output) or ``mse``.
    optimizer : Optimizer, optional
        Defaults to ``SGD(lr=0.01)``.  One optimizer object serves one model.
    seed : int or None
        Seeds weight initialisation (He normal for ReLU-family layers, Glorot uniform
        otherwise, zero biases) and the per-epoch shuffle.  Same seed, same data, same
        thread count: same weights.
    dtype : {numpy.float32, numpy.float64}
        Precision of parameters and computation.  Inputs are converted once per call.

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
        _check_layers(layers)
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; valid names: {', '.join(LOSSES)}")
        self.loss_code = LOSSES[loss]
        n_out = layers[-1].n_out
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

        pin_blas()
        self.loss = loss
        self.dtype = dtype
        self.layers = layers
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._arch, self._act_params, self._n_weights, n_params = layer_table(layers, dtype)
        optimizer.bind(self, n_params, dtype)  # first: it may refuse, and nothing is attached yet
        self.optimizer = optimizer
        self.params = np.empty(n_params, dtype=dtype)  # all weights, then all biases
        # The last known-finite parameters and optimizer state, to undo an update that
        # overflowed: (n_params,) and (n_slots, n_params).
        self._saved_params = np.empty_like(self.params)
        self._saved_state = np.empty_like(optimizer.state)
        for k, layer in enumerate(layers):
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
        """True for every loss but ``mse``."""
        return self.loss_code != MSE

    @property
    def _uses_labels(self):
        return self.loss_code in (LOSSES["softmax_cross_entropy"], MULTICLASS_HINGE)

    def __repr__(self):
        inner = ",\n    ".join(repr(layer) for layer in self.layers)
        return (f"Sequential([\n    {inner}\n], loss={self.loss!r}, optimizer={self.optimizer!r}, "
                f"dtype={self.dtype.name})")

    def __setstate__(self, state):
        # pickle and deepcopy restore each layer's W and b as arrays of their own (numpy
        # copies views): point them back into the parameter vector.
        self.__dict__.update(state)
        for k, layer in enumerate(self.layers):
            layer.W, layer.b = self._layer_views(self.params, k)

    # ----------------------------------------------------------------- weights
    def _layer_views(self, flat, k):
        layer = self.layers[k]
        w0, b0 = self._arch[k, network.W_OFFSET], self._arch[k, network.B_OFFSET]
        W = flat[w0:w0 + layer.n_in * layer.pieces * layer.n_out].reshape(layer.weight_shape)
        return W, flat[b0:b0 + layer.pieces * layer.n_out]

    def get_weights(self):
        """Copies of the parameters: ``[W1, b1, W2, b2, ...]``.

        ``W`` has shape ``(n_in, n_out)`` (the model computes ``x @ W + b``) and ``b`` shape
        ``(n_out,)``; for :class:`~fastmlp.Maxout` see its weight layout.
        """
        weights = []
        for layer in self.layers:
            weights += [layer.W.copy(), layer.b.copy()]
        return weights

    def set_weights(self, weights):
        """Replace every parameter from a list shaped like :meth:`get_weights`'s.

        All arrays are checked (count, shapes, finiteness) before any is written.
        """
        weights = list(weights)
        if len(weights) != 2 * len(self.layers):
            raise ValueError(f"expected {2 * len(self.layers)} arrays [W1, b1, ...], got {len(weights)}")
        checked = []
        for i, w in enumerate(weights):
            layer = self.layers[i // 2]
            shape = layer.weight_shape if i % 2 == 0 else layer.bias_shape
            name = f"{'W' if i % 2 == 0 else 'b'}{i // 2 + 1}"
            arr = np.asarray(w)
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
            if arr.dtype.kind not in "biuf":
                raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
            arr = arr.astype(self.dtype)
            if not np.isfinite(arr).all():
                raise ValueError(f"{name} contains NaN or Inf")
            checked.append(arr)
        for layer, (W, b) in zip(self.layers, zip(checked[::2], checked[1::2])):
            layer.W[...] = W
            layer.b[...] = b

    def get_gradients(self):
        """Copies of the gradients of the last training step, laid out as :meth:`get_weights`."""
        if self._train_workspace is None:
            raise RuntimeError("no gradients yet: call train_step or fit first")
        grads = []
        for k in range(len(self.layers)):
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
        _io.save(self, path)

    # ----------------------------------------------------------------- input handling
    def _prepare(self, X, y):
        """Validated ``(X, labels, targets)``; the unused one of labels/targets is empty."""
        X = as_features(X, self.n_features_in, self.dtype)
        if y is None:
            raise ValueError("y is required")
        if self._uses_labels:
            return X, as_labels(y, X.shape[0], self.n_outputs), self._no_targets
        targets = as_targets(y, X.shape[0], self.n_outputs, self.dtype,
                             binary=self.loss_code == BINARY_CROSS_ENTROPY)
        return X, self._no_labels, targets

    def _training_workspace(self, rows):
        ws = self._train_workspace
        if ws is None or ws.capacity < rows:
            n_targets = 0 if self._uses_labels else self.n_outputs
            ws = Workspace(self._arch, self._act_params, self.params, rows, n_targets, training=True)
            self._train_workspace = ws
        return ws

    def _inference_workspace(self, rows):
        # A fresh one per call: predictions from several threads never share buffers.
        return Workspace(self._arch, self._act_params, self.params, min(rows, PREDICT_CHUNK_ROWS),
                         0, training=False)

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

    # ----------------------------------------------------------------- training
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
        X, labels, targets = self._prepare(X, y)
        weights = self._no_weights
        if sample_weight is not None:
            weights = sample_weight_per_row(sample_weight, X.shape[0]).astype(self.dtype)
        ws = self._training_workspace(X.shape[0])
        return network.compute_gradients(ws.net, self.loss_code, X, labels, targets, weights,
                                         ws.kernel_threads(get_num_threads()))

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

    def _save_finite_state(self):
        np.copyto(self._saved_params, self.params)
        np.copyto(self._saved_state, self.optimizer.state)
        return self.optimizer.step_count

    def _restore_finite_state(self, step_count):
        np.copyto(self.params, self._saved_params)
        np.copyto(self.optimizer.state, self._saved_state)
        self.optimizer.step_count = step_count

    def apply_gradients(self):
        """One optimizer update from the gradients of the last :meth:`compute_gradients`.

        Raises
        ------
        DivergenceError
            If the update made a parameter NaN or Inf; it is then undone.
        """
        grads = self.flat_gradients
        opt = self.optimizer
        hyper = self._hyperparameters()
        steps_before = self._save_finite_state()
        opt.step_count += 1
        # The update is serial whatever the thread count (kernels/optim.py): None keeps the
        # prange drivers out of its compiled code.
        network.optimizer_update(opt.kind, self.params, grads, opt.state, hyper, self._n_weights,
                                 opt.step_count, None)
        if count_nonfinite(self.params):
            self._restore_finite_state(steps_before)
            raise DivergenceError("the update overflowed to NaN or Inf and was undone; "
                                  "try a smaller learning rate")

    def train_step(self, X, y, sample_weight=None):
        """One optimizer step on the batch ``(X, y)``; returns the batch's mean loss.

        ``sample_weight`` (optional, ``(batch,)``) weighs each row's loss as in :meth:`fit`.

        For users who write their own loop.  With arrays already of the model's dtype
        (and int64 labels), C-contiguous, a steady-state step allocates nothing.

        Raises
        ------
        DivergenceError
            If the loss is NaN or Inf; the parameters are then left unchanged.
        """
        loss = self.compute_gradients(X, y, sample_weight)
        if not math.isfinite(loss):
            raise DivergenceError(f"the loss is {loss} on this batch; the step was not applied")
        self.apply_gradients()
        return loss

    def fit(self, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None,
            validation_split=0.0, sample_weight=None, class_weight=None, callbacks=None, verbose=0,
            checkpoint=None, checkpoint_every=None, resume=False, comm=None):
        """Train by minibatch gradient descent.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like
            ``(n_samples,)`` integer class labels for ``softmax_cross_entropy`` and
            ``multiclass_hinge``; ``(n_samples, n_outputs)`` (or ``(n_samples,)`` with one
            output) targets for ``binary_cross_entropy`` (0/1) and ``mse``.
        epochs : int, default 1
        batch_size : int, default 32
            The last batch of an epoch is smaller when it does not divide ``n_samples``.
        shuffle : bool, default True
            Visit the rows in a new order each epoch, drawn from the model's seeded RNG.
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
        """
        if comm is not None:
            # Before any local check: fit_distributed validates on every rank at once, so
            # bad input on one rank raises everywhere instead of leaving the others waiting.
            from fastmlp.distributed import fit_distributed

            return fit_distributed(self, X, y, comm, epochs=epochs, batch_size=batch_size,
                                   shuffle=shuffle, validation_data=validation_data,
                                   validation_split=validation_split, sample_weight=sample_weight,
                                   class_weight=class_weight, callbacks=callbacks,
                                   verbose=verbose, checkpoint=checkpoint,
                                   checkpoint_every=checkpoint_every, resume=resume)
        checkpoint_every = _check_checkpoint_args(checkpoint, checkpoint_every, resume)
        epochs, batch_size, shuffle, X, labels, targets, validation = self._check_fit_arguments(
            X, y, epochs, batch_size, shuffle, validation_data, verbose, validation_split)
        weights = self._row_weights(sample_weight, class_weight, X, labels, targets)
        X, labels, targets, weights, validation = self._split_validation(
            validation_split, X, labels, targets, weights, validation)
        if weights.shape[0] and not weights.any():
            raise ValueError("sample_weight and class_weight give every training row the weight 0: "
                             "nothing would be learned")
        callbacks, stateful = _check_callbacks(callbacks)

        n = X.shape[0]
        batch_size = min(batch_size, n)
        n_batches = -(-n // batch_size)
        resumed, epochs_done = None, 0
        if resume and os.path.exists(checkpoint):
            # Read and checked in full before the model changes.
            resumed, epochs_done = _io.read_checkpoint(self, checkpoint, epochs, batch_size,
                                                       bool(shuffle), n, callbacks=stateful)
        metrics = self._metric_names(validation is not None)
        self.stop_training = False
        for callback in callbacks:
            callback.set_model(self)
        for callback in callbacks:  # may refuse the setup: nothing has changed yet
            callback.on_train_begin({"metrics": list(metrics), "epochs": epochs})
        saved_states = _io.callback_states(resumed) if resumed is not None else []
        for callback, (fields, arrays) in zip(stateful, saved_states):
            try:
                callback.check_state(fields, arrays)
            except ValueError as exc:
                raise ValueError(f"checkpoint {checkpoint}: {exc}") from None

        ws = self._training_workspace(batch_size)
        order = np.arange(n, dtype=np.int64)  # shuffled in place: each epoch's order depends on it
        if resumed is not None:
            _io.apply_checkpoint(self, resumed, order)
            for callback, (fields, arrays) in zip(stateful, saved_states):
                callback.set_state(fields, arrays)
        batch_losses = np.zeros(n_batches)
        batch_correct = np.zeros(n_batches, dtype=np.int64)
        shown = [m for m in metrics if m != "lr" or any(_changes_lr(c) for c in callbacks)]
        history = History()
        self.history = history
        error = None
        try:
            for epoch in range(epochs_done + 1, epochs + 1):
                for callback in callbacks:
                    callback.on_epoch_begin(epoch, {})
                started = time.perf_counter()
                if shuffle:
                    self._rng.shuffle(order)
                progress = EpochProgress(epoch, epochs, n_batches) if verbose == 1 else None
                logs = self._train_one_epoch(ws, epoch, X, labels, targets, weights, order,
                                             batch_size, batch_losses, batch_correct, progress)
                if validation is not None:
                    val_loss, correct = self._evaluate_prepared(*validation)
                    logs["val_loss"] = val_loss
                    if self.is_classifier:
                        logs["val_accuracy"] = correct / validation[0].shape[0]
                logs["lr"] = float(self.optimizer.lr)
                history.epoch.append(epoch)
                for name in metrics:
                    history.history.setdefault(name, []).append(logs[name])
                shown_logs = {name: logs[name] for name in shown}
                if progress is not None:
                    progress.close(shown_logs)
                elif verbose == 2:
                    print(epoch_line(epoch, epochs, shown_logs, time.perf_counter() - started),
                          flush=True)
                for callback in callbacks:
                    callback.on_epoch_end(epoch, dict(logs))
                last = epoch == epochs or self.stop_training
                if checkpoint is not None and (epoch % checkpoint_every == 0 or last):
                    _io.save_checkpoint(self, checkpoint, order, epoch, epochs, batch_size,
                                        bool(shuffle), stateful)
                if self.stop_training:
                    break
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end_training(callbacks, error)
        return history

    def _metric_names(self, has_validation):
        """The names an epoch's logs and the History hold, in order (shared with
        ``fit_distributed``)."""
        metrics = ["loss"] + (["accuracy"] if self.is_classifier else [])
        if has_validation:
            metrics += ["val_loss"] + (["val_accuracy"] if self.is_classifier else [])
        return metrics + ["lr"]

    def _train_one_epoch(self, ws, epoch, X, labels, targets, weights, order, batch_size,
                         batch_losses, batch_correct, progress):
        """Run one epoch's steps (in slices when a progress bar is shown); return its logs.

        Raises DivergenceError, after restoring the last finite parameters, when a loss or
        the epoch's last update is not finite.
        """
        opt = self.optimizer
        hyper = self._hyperparameters()  # a schedule may have changed lr since the last epoch
        n = order.shape[0]
        n_batches = batch_losses.shape[0]
        # The epoch's start is the fallback should an update overflow: the loss of the
        # next step shows that, but after the epoch's last step only this check does.
        steps_before = self._save_finite_state()

        def run(first, stop):
            return network.train_epoch(
                ws.net, self.loss_code, X, labels, targets, weights, order, batch_size,
                ws.x_batch, ws.label_batch, ws.target_batch, ws.weight_batch,
                opt.kind, opt.state, hyper, self._n_weights, steps_before, first, stop,
                batch_losses, batch_correct, ws.kernel_threads(get_num_threads()))

        if progress is None:
            done = run(0, n_batches)
        else:
            done, chunk = 0, 1
            while done < n_batches:
                stop = min(n_batches, done + chunk)
                started = time.perf_counter()
                reached = run(done, stop)
                elapsed = time.perf_counter() - started
                if reached < stop:
                    done = reached
                    break
                done = stop
                progress.update(done, self._running_logs(done, batch_size, n, batch_losses, batch_correct))
                # About one redraw per REDRAW_SECONDS: a live bar, and so few returns to
                # Python that they cost nothing next to the steps.
                chunk = max(1, min(n_batches, int(chunk * REDRAW_SECONDS / max(elapsed, 1e-9))))
        opt.step_count += done
        params_finite = count_nonfinite(self.params) == 0
        if done < n_batches or not params_finite:
            if progress is not None:
                progress.close(self._running_logs(done, batch_size, n, batch_losses, batch_correct)
                               if done else {}, finished=False)
            where = (f"the training loss became {batch_losses[done]} at epoch {epoch}, step "
                     f"{done + 1} of {n_batches}" if done < n_batches else
                     f"the last update of epoch {epoch} overflowed to NaN or Inf")
            kept = "the parameters of the last finite step"
            if not params_finite:
                self._restore_finite_state(steps_before)
                kept = f"the parameters from the start of epoch {epoch}"
            raise DivergenceError(f"{where}; training stopped and the model keeps {kept}. "
                                  "Try a smaller learning rate.")
        return self._running_logs(n_batches, batch_size, n, batch_losses, batch_correct)

    def _running_logs(self, batches_done, batch_size, n, batch_losses, batch_correct):
        """Loss (and accuracy) over the first ``batches_done`` batches of the epoch, per row."""
        rows = min(n, batches_done * batch_size)
        last_rows = rows - (batches_done - 1) * batch_size
        loss_sum = batch_losses[:batches_done - 1].sum() * batch_size + batch_losses[batches_done - 1] * last_rows
        logs = {"loss": float(loss_sum / rows)}
        if self.is_classifier:
            logs["accuracy"] = int(batch_correct[:batches_done].sum()) / rows
        return logs

    def _end_training(self, callbacks, error):
        before = self.params.copy() if isinstance(error, DivergenceError) else None
        for callback in callbacks:
            callback.on_train_end({"error": error})
        if before is not None and not np.array_equal(before, self.params):
            error.args = (error.args[0] + " Then a callback changed the parameters as training "
                          "ended (EarlyStopping restores those of its best epoch).",)

    def _check_fit_arguments(self, X, y, epochs, batch_size, shuffle, validation_data, verbose,
                             validation_split=0.0):
        """``fit``'s arguments checked and converted (shared with ``fit_distributed``).

        Returns
        -------
        epochs, batch_size, shuffle, X, labels, targets, validation
            ``validation`` is None or ``(X_val, labels_val, targets_val, workspace)``.
        """
        if validation_data is not None and not (isinstance(validation_split, numbers.Real)
                                                and validation_split == 0):
            raise ValueError("give validation_data or validation_split, not both")
        epochs = check_positive_int(epochs, "epochs")
        batch_size = check_positive_int(batch_size, "batch_size")
        if not isinstance(shuffle, (bool, np.bool_)):
            raise ValueError(f"shuffle must be True or False, got {shuffle!r}")
        if isinstance(verbose, bool) or not isinstance(verbose, numbers.Integral) or verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        X, labels, targets = self._prepare(X, y)
        validation = None
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            try:
                X_val, labels_val, targets_val = self._prepare(*validation_data)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"validation_data: {exc}") from None
            validation = (X_val, labels_val, targets_val, self._inference_workspace(X_val.shape[0]))
        return epochs, batch_size, bool(shuffle), X, labels, targets, validation

    def _row_weights(self, sample_weight, class_weight, X, labels, targets):
        """Per-row loss weights ``(n,)`` of the model's dtype, or the empty stand-in."""
        n = X.shape[0]
        weights = None
        if sample_weight is not None:
            weights = sample_weight_per_row(sample_weight, n)
        if class_weight is not None:
            if self._uses_labels:
                classes, n_classes = labels, self.n_outputs
            elif self.loss_code == BINARY_CROSS_ENTROPY and self.n_outputs == 1:
                classes, n_classes = targets[:, 0].astype(np.int64), 2
            else:
                raise ValueError(f"class_weight needs class labels: it applies to "
                                 f"softmax_cross_entropy, multiclass_hinge and single-output "
                                 f"binary_cross_entropy, not to {self.loss!r} with "
                                 f"{self.n_outputs} outputs (use sample_weight)")
            per_class = class_weight_per_row(class_weight, classes, n_classes)
            weights = per_class if weights is None else weights * per_class
        if weights is None:
            return self._no_weights
        return weights.astype(self.dtype)

    def _split_validation(self, validation_split, X, labels, targets, weights, validation):
        """Hold out the last ``validation_split`` fraction of the rows."""
        if isinstance(validation_split, (bool, np.bool_)) or not isinstance(validation_split, numbers.Real) \
                or not 0 <= validation_split < 1:
            raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
        if validation_split == 0:
            return X, labels, targets, weights, validation
        n = X.shape[0]
        n_train = int(n * (1 - validation_split))
        if n_train < 1 or n_train == n:
            raise ValueError(f"validation_split={validation_split} of {n} rows leaves "
                             f"{n_train} for training and {n - n_train} for validation; "
                             "both need at least one")

        def head(a):
            return a[:n_train] if a.shape[0] else a

        def tail(a):
            return a[n_train:] if a.shape[0] else a

        validation = (X[n_train:], tail(labels), tail(targets), self._inference_workspace(n - n_train))
        return X[:n_train], head(labels), head(targets), head(weights), validation

    # ----------------------------------------------------------------- inference
    def _evaluate_prepared(self, X, labels, targets, ws):
        loss, correct = network.evaluate_chunked(ws.net, self.loss_code, X, labels, targets,
                                                 ws.capacity, ws.kernel_threads(get_num_threads()))
        return float(loss), int(correct)

    def evaluate(self, X, y):
        """Mean data loss on ``(X, y)`` and, for the classification losses, the accuracy.

        Returns
        -------
        dict
            ``{"loss": float, "accuracy": float}`` (no ``"accuracy"`` for ``mse``).
        """
        X, labels, targets = self._prepare(X, y)
        loss, correct = self._evaluate_prepared(X, labels, targets, self._inference_workspace(X.shape[0]))
        result = {"loss": loss}
        if self.is_classifier:
            result["accuracy"] = correct / X.shape[0]
        return result

    def _predict(self, X, transform):
        X = as_features(X, self.n_features_in, self.dtype)
        ws = self._inference_workspace(X.shape[0])
        if transform == network.ARGMAX:
            out = np.empty((X.shape[0], 1), dtype=np.int64)
        else:
            out = np.empty((X.shape[0], self.n_outputs), dtype=self.dtype)
        network.predict_into(ws.net, X, transform, ws.capacity, out, ws.kernel_threads(get_num_threads()))
        return out

    def decision_function(self, X):
        """Raw scores of the last layer, shape ``(n_samples, n_outputs)``."""
        return self._predict(X, network.RAW)

    def predict(self, X):
        """Predictions for ``X`` of shape ``(n_samples, n_features)``.

        Returns
        -------
        ndarray
            Class labels ``(n_samples,)`` (int64) for ``softmax_cross_entropy`` and
            ``multiclass_hinge``; 0/1 decisions (int64) for ``binary_cross_entropy``,
            ``(n_samples,)`` with one output, else ``(n_samples, n_outputs)``; raw outputs
            for ``mse``, ``(n_samples,)`` with one output, else ``(n_samples, n_outputs)``.
        """
        if self._uses_labels:
            return self._predict(X, network.ARGMAX)[:, 0]
        if self.loss_code == BINARY_CROSS_ENTROPY:
            out = self._predict(X, network.THRESHOLD).astype(np.int64)
        else:
            out = self._predict(X, network.RAW)
        return out[:, 0] if self.n_outputs == 1 else out

    def predict_proba(self, X):
        """Probabilities: softmax over classes ``(n_samples, n_classes)`` for
        ``softmax_cross_entropy``; each output's sigmoid ``(n_samples, n_outputs)`` for
        ``binary_cross_entropy``.  Not defined for ``multiclass_hinge`` and ``mse``."""
        if self.loss_code == LOSSES["softmax_cross_entropy"]:
            return self._predict(X, network.SOFTMAX)
        if self.loss_code == BINARY_CROSS_ENTROPY:
            return self._predict(X, network.SIGMOID)
        raise AttributeError(f"predict_proba is not defined for loss {self.loss!r}: its scores are "
                             "not probabilities (use decision_function)")

    def score(self, X, y):
        """Accuracy for the classification losses (subset accuracy for several binary
        outputs); the coefficient of determination R^2 for ``mse`` (averaged over outputs)."""
        X, labels, targets = self._prepare(X, y)
        ws = self._inference_workspace(X.shape[0])
        if self.is_classifier:
            return self._evaluate_prepared(X, labels, targets, ws)[1] / X.shape[0]
        pred = np.empty((X.shape[0], self.n_outputs), dtype=self.dtype)
        network.predict_into(ws.net, X, network.RAW, ws.capacity, pred,
                             ws.kernel_threads(get_num_threads()))
        t = targets.astype(np.float64)
        ss_res = ((t - pred) ** 2).sum(axis=0)
        ss_tot = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
        # Constant targets: R^2 is 1 for a perfect fit, else 0 (scikit-learn's convention).
        r2 = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1),
                      np.where(ss_res == 0, 1.0, 0.0))
        return float(r2.mean())


def _check_callbacks(callbacks):
    """``(callbacks, stateful)``: the callbacks as a list, and those of them whose state a
    checkpoint keeps (they override ``get_state``; the others, a logger say, may come and
    go between a run and its resume)."""
    if callbacks is None:
        return [], []
    callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
    for k, callback in enumerate(callbacks):
        if not isinstance(callback, Callback):
            raise TypeError(f"callbacks[{k}] is {callback!r}, not a fastmlp.callbacks.Callback")
    return callbacks, [c for c in callbacks if type(c).get_state is not Callback.get_state]


def _changes_lr(callback):
    return isinstance(callback, (LearningRateSchedule, ReduceLROnPlateau))


def _check_checkpoint_args(checkpoint, checkpoint_every, resume, filesystem=True):
    """``checkpoint_every`` as an int (1 by default), after checking the three together.

    ``filesystem=False`` skips the checks that ask the file system about the path (for the
    ranks of a distributed run that never write it)."""
    if not isinstance(resume, (bool, np.bool_)):
        raise ValueError(f"resume must be True or False, got {resume!r}")
    if checkpoint is None:
        if checkpoint_every is not None or resume:
            raise ValueError("checkpoint_every and resume need a checkpoint path")
        return None
    path = _io._check_path(checkpoint, "checkpoint")
    if filesystem:
        if os.path.isdir(path):
            raise ValueError(f"checkpoint {path!r} is a directory; give a file name")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise ValueError(f"checkpoint directory {directory!r} does not exist")
    return 1 if checkpoint_every is None else check_positive_int(checkpoint_every, "checkpoint_every")


def _check_layers(layers):
    if not layers:
        raise ValueError("a Sequential model needs at least one layer")
    for k, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"layer {k + 1} is {layer!r}, not a fastmlp layer (Dense, Maxout)")
        if layer.W is not None:
            raise ValueError(f"layer {k + 1} ({layer!r}) already belongs to a model; "
                             "use layer.unbuilt_copy() to reuse its specification")
        if sum(other is layer for other in layers) > 1:
            raise ValueError(f"layer {k + 1} ({layer!r}) appears twice in the list")
    for k in range(1, len(layers)):
        if layers[k].n_in != layers[k - 1].n_out:
            raise ValueError(f"layer {k + 1} ({layers[k]!r}) takes {layers[k].n_in} inputs, but "
                             f"layer {k} ({layers[k - 1]!r}) outputs {layers[k - 1].n_out}")
