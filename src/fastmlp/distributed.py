"""Data-parallel training over MPI (mpi4py): one model replica per rank, gradients averaged.

Every rank holds a shard of the training data and a full copy of the model.  At the start
rank 0's parameters, optimizer state and step count are broadcast to the others.  Each step
every rank runs :meth:`~fastmlp.Sequential.compute_gradients` on its own minibatch, the
gradients are averaged with **one** ``Allreduce`` over the model's single contiguous
gradient vector (:attr:`~fastmlp.Sequential.flat_gradients`, in place), and every rank applies
the same update with :meth:`~fastmlp.Sequential.apply_gradients`.  See ``docs/distributed.md``.

mpi4py is imported here only, and only when :func:`fit_distributed` runs: the rest of fastmlp
never needs it.
"""

import math
import os
import sys
import time
import traceback
import zlib
from collections import namedtuple

import numba
import numpy as np

from fastmlp import io as _io
from fastmlp.kernels.checks import count_nonfinite
from fastmlp.kernels.network import count_correct_cached
from fastmlp.progress import epoch_line
from fastmlp.sequential import (DivergenceError, History, Sequential, _changes_lr,
                                _check_callbacks, _check_checkpoint_args)
from fastmlp.threads import get_num_threads
from fastmlp.threads import threads as threads_context


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("fit_distributed needs mpi4py and an MPI library: "
                          "pip install 'fastmlp[mpi]' (see docs/distributed.md)") from exc
    return MPI


#: Exception classes an agreed error keeps on every rank (others become RuntimeError).
_AGREED_KINDS = {cls.__name__: cls for cls in (TypeError, ValueError, _io.FormatError, OSError,
                                               PermissionError, FileNotFoundError)}


def _agree(comm, error):
    """Collective: raise the same error on every rank if any rank has one.

    ``error`` is this rank's exception or None.  Every rank takes part in exactly one
    allgather, so a refusal on one rank never leaves the others waiting in a later
    collective: they all raise, with the first failing rank's message.
    """
    mine = None if error is None else (type(error).__name__, str(error))
    _raise_first(comm, comm.allgather(mine), error)


def _raise_first(comm, everyone, error):
    """Raise the first rank's error of ``everyone`` (allgathered ``(name, message)`` or None)."""
    for rank, found in enumerate(everyone):
        if found is not None:
            name, message = found
            kind = _AGREED_KINDS.get(name, RuntimeError)
            others = sum(f is not None for f in everyone) - 1
            more = f" (and {others} other rank(s) refused too)" if others else ""
            raise kind(f"fit_distributed: rank {rank} of {len(everyone)}: {message}{more}") from (
                error if error is not None and rank == comm.Get_rank() else None)


def _model_signature(model):
    opt = model.optimizer
    return (
        model.dtype.name,
        model.loss,
        model.params.shape[0],
        model._arch.tobytes(),
        np.asarray(model._act_params).tobytes(),
        type(opt).__name__,
        tuple(getattr(opt, name) for name in opt.hyperparameter_names),
        opt.state.shape,
    )


def default_num_threads(comm):
    """Collective: the numba thread count :func:`fit_distributed` gives each rank by default,
    ``max(1, cores // ranks on this node)`` (capped by ``NUMBA_NUM_THREADS``).

    Call it on every rank of ``comm``; ``fastmlp.set_num_threads(default_num_threads(comm))``
    keeps predictions after training from oversubscribing the cores too.
    """
    MPI = _mpi()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        local_ranks = node.Get_size()
    finally:
        node.Free()
    cores = os.cpu_count() or 1
    try:
        # A launcher that binds each rank to some cores has already divided them.
        cores = min(cores, len(os.sched_getaffinity(0)) * local_ranks)
    except AttributeError:  # pragma: no cover - not on Linux
        pass
    return max(1, min(numba.config.NUMBA_NUM_THREADS, cores // local_ranks))


def _user_chose_threads():
    """True when the thread count was chosen: ``NUMBA_NUM_THREADS`` in the environment, or a
    count below numba's maximum set in this thread (``fastmlp.set_num_threads``)."""
    return ("NUMBA_NUM_THREADS" in os.environ
            or numba.get_num_threads() != numba.config.NUMBA_NUM_THREADS)


#: What :func:`_validate` hands on: this rank's checked and converted arguments.
_Checked = namedtuple("_Checked", [
    "epochs", "batch_size", "shuffle",
    "X", "labels", "targets",  # the training rows (validation_split's held out)
    "weights",  # (n_train,) per-row loss weights of the model's dtype, or empty for none
    "validation",  # None or (X_val, labels_val, targets_val, workspace)
    "validation_split",  # float
    "checkpoint_every",
    "callbacks", "stateful",  # every callback; those whose state a checkpoint keeps
    "class_key",  # class_weight in a form the ranks can compare
    "balanced",  # None, or what "balanced" needs once the global class counts are known
    "hooks",  # some rank has callbacks: every rank takes part in the hooks' collectives
])


def _validate(model, X, y, epochs, batch_size, shuffle, validation_data, validation_split,
              sample_weight, class_weight, callbacks, verbose, checkpoint, checkpoint_every,
              resume, rank):
    """This rank's arguments, checked and converted as :meth:`Sequential.fit` checks them
    (raises on the first bad one; changes nothing)."""
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a fastmlp Sequential, got {type(model).__name__}")
    # Only rank 0 touches the checkpoint file, so only its file system is asked about the
    # path: the other ranks' nodes need not see rank 0's directory.
    checkpoint_every = _check_checkpoint_args(checkpoint, checkpoint_every, resume,
                                              filesystem=rank == 0)
    epochs, batch_size, shuffle, X, labels, targets, validation = model._check_fit_arguments(
        X, y, epochs, batch_size, shuffle, validation_data, verbose, validation_split)
    # With "balanced" these are this shard's weights; they are recomputed from the global
    # class counts once every rank has passed its checks.
    weights = model._row_weights(sample_weight, class_weight, X, labels, targets)
    balanced = None
    if isinstance(class_weight, str):  # "balanced": _row_weights refused any other string
        balanced = (sample_weight, X, labels, targets, _class_counts(model, labels, targets))
    X, labels, targets, weights, validation = model._split_validation(
        validation_split, X, labels, targets, weights, validation)
    callbacks, stateful = _check_callbacks(callbacks)
    if class_weight is None or balanced is not None:
        class_key = class_weight
    else:
        class_key = tuple(sorted((int(k), float(v)) for k, v in class_weight.items()))
    return _Checked(epochs, batch_size, shuffle, X, labels, targets, weights, validation,
                    float(validation_split), checkpoint_every, callbacks, stateful, class_key,
                    balanced, bool(callbacks))


def _class_counts(model, labels, targets):
    """Rows per class ``(n_classes,)`` int64, the classes as ``class_weight`` reads them."""
    if model._uses_labels:
        return np.bincount(labels, minlength=model.n_outputs).astype(np.int64)
    return np.bincount(targets[:, 0].astype(np.int64), minlength=2).astype(np.int64)


def _global_balanced_weights(model, balanced, counts, n_rows, n_train):
    """This shard's training-row weights under ``class_weight="balanced"`` with every rank's
    class ``counts`` and ``n_rows`` (validation rows included, as ``fit`` counts them).

    The global table goes through ``fit``'s own path as a ``{class: weight}`` dict, so the
    weights are bit-identical to a single-process fit on the concatenated rows.
    """
    sample_weight, X, labels, targets, _ = balanced
    table = n_rows / (counts.shape[0] * np.maximum(counts, 1))
    per_class = {c: float(table[c]) for c in range(counts.shape[0])}
    return model._row_weights(sample_weight, per_class, X, labels, targets)[:n_train]


def fit_distributed(model, X, y, comm, epochs=1, batch_size=32, shuffle=True, validation_data=None,
                    validation_split=0.0, sample_weight=None, class_weight=None, callbacks=None,
                    verbose=0, checkpoint=None, checkpoint_every=None, resume=False):
    """Data-parallel :meth:`~fastmlp.Sequential.fit` over the ranks of an MPI communicator.

    Call it on every rank of ``comm`` at the same time, each rank with its own shard
    ``(X, y)`` and its own copy of the same architecture.

    Parameters
    ----------
    model : Sequential
        This rank's replica.  Rank 0's parameters, optimizer state and step count are
        broadcast to every rank first; architecture, dtype, loss and optimizer
        hyperparameters must agree on all ranks.
    X : array-like of shape (n_rank_samples, n_features)
    y : array-like
        This rank's shard, as :meth:`Sequential.fit` takes it.  Shards may differ in length
        (see Notes); each needs at least one training row.
    comm : mpi4py.MPI.Comm
        Usually ``MPI.COMM_WORLD``.
    epochs : int, default 1
    batch_size : int, default 32
        Rows **per rank** per step: one step sees up to ``batch_size * comm.size`` rows.
    shuffle : bool, default True
        Each rank visits its own shard in a new order each epoch, from a per-rank random
        stream: ``SeedSequence(entropy=d, spawn_key=(rank,))``, where ``d`` is drawn from rank
        0's model RNG (so a seeded model gives reproducible runs).  Rows never move
        between ranks.
    validation_data : tuple (X_val, y_val), optional
        Given on every rank or on none.  Each rank evaluates what it was given; the
        reported figures are the row-weighted means over the ranks (pass a shard per rank
        to split the work, or the same set everywhere).
    validation_split : float, default 0.0
        The same on every rank: each rank holds out the last fraction of **its own** shard
        (as :meth:`Sequential.fit` holds out the last rows), so the validation set is the
        union of the ranks' tails and ``val_loss``/``val_accuracy`` are reduced as for
        ``validation_data``.  Each rank needs a row left on each side.
    sample_weight : array-like of shape (n_rank_samples,), optional
        This rank's rows' weights (a rank may leave it out: its rows weigh 1).  A step's
        loss is ``sum over ranks of sum(w * loss) / rows of the step``, the single-process
        loss of the concatenated batch; refused only if every training row of **every**
        rank weighs 0.
    class_weight : dict or "balanced", optional
        The same on every rank.  ``"balanced"`` counts the classes over every rank's rows
        (one ``Allreduce``; validation rows included, as ``fit`` counts them), so a class
        weighs the same everywhere: ``n_total / (n_classes * count_c)``.
    callbacks : list of Callback, optional
        Run on every rank, with the same (reduced) logs on every rank.  The stateful ones
        (schedules, :class:`~fastmlp.callbacks.ReduceLROnPlateau`,
        :class:`~fastmlp.callbacks.EarlyStopping`, any overriding ``get_state``) must be
        the same classes in the same order on every rank; others (a logger on rank 0) may
        differ.  After each ``on_epoch_begin`` and ``on_epoch_end`` the ranks compare the
        optimizer's hyperparameters (a difference raises ``ValueError`` on every rank) and
        share ``model.stop_training``: a stop on any rank stops every rank after that epoch.
    verbose : {0, 1, 2}, default 0
        Rank 0 prints one line per epoch for 1 and 2 (the per-step progress bar of
        ``verbose=1`` does not fit a loop that meets the other ranks every step).
    checkpoint : str or os.PathLike, optional
        Rank 0 saves a checkpoint there (atomically) every ``checkpoint_every`` epochs and
        after the last epoch: the model, optimizer state and step count (the same on every
        rank), the stateful callbacks' state (rank 0's, the same on every rank), the epoch
        count and every rank's row order and random streams, gathered to rank 0.  Give the
        same settings on every rank; only rank 0's path is used.
    checkpoint_every : int, optional
        Epochs between checkpoints (default 1), counted from the run's first epoch.
    resume : bool, default False
        With ``checkpoint``: if rank 0 finds that file, every rank continues the run it
        belongs to, ending bit-identical to a run that never stopped; without it, the run
        starts afresh.  The checkpoint must come from as many ranks, each with as many
        training rows, as this job (and the same model, batch size, ``shuffle`` and stateful
        callbacks, as for :meth:`Sequential.fit`); otherwise every rank raises the same
        ``ValueError``.  The callbacks' saved state is restored on every rank.

    Returns
    -------
    History
        The same on every rank, with the metrics of :meth:`Sequential.fit`: ``loss`` (the
        row-weighted mean over all ranks' rows, as :meth:`Sequential.fit` would report on
        the concatenated data), ``accuracy`` (classifiers: rows predicted right before
        their step, counted on each rank from the step's own forward pass and summed),
        ``val_loss`` and ``val_accuracy`` with validation data, and ``lr``.

    Raises
    ------
    ValueError, TypeError
        Bad arguments or callbacks on **any** rank, or settings (``epochs``,
        ``batch_size``, ``shuffle``, ``validation_split``, ``class_weight``, the stateful
        callbacks, checkpointing) that differ between ranks: every rank raises the same
        error, naming the rank, before anything in the model changes (so no rank is left
        waiting).  So does a checkpoint that rank 0 cannot resume
        (:class:`~fastmlp.FormatError` when it is damaged), and so does a callback that
        raises an ``Exception`` on one rank during training (it becomes a ``RuntimeError``
        unless it is a ``ValueError``, ``TypeError`` or ``OSError``).
    DivergenceError
        When the averaged gradient or the update is NaN or Inf.  The averaged gradient is
        the same on every rank, so every rank raises it at the same step.

    Notes
    -----
    - **One step** on ``R`` ranks equals a single-process step on the concatenation of the
      ranks' minibatches (with ``shuffle=False``: rank 0's rows, then rank 1's, ...): each
      rank's gradient is the mean over its ``b_r`` rows of ``w * loss``, and the sum over
      ranks of ``(b_r / sum b) * g_r`` is that mean over all rows.  When every rank has the
      same number of rows the weights are ``1/R``, applied after the sum.
    - **Uneven shards.** Every rank runs ``max_r ceil(n_r / batch_size)`` steps per epoch
      (shard lengths are exchanged once, with an allgather, so all ranks agree).  A rank
      whose shard is exhausted takes part with zero rows and weight 0 in that step.
    - **Callbacks** see the epoch's reduced figures, identical on every rank, so the
      built-in ones decide the same everywhere; ``on_train_end`` runs on every rank however
      the run ends (``DivergenceError`` included), after which the ranks compare their
      parameters (an :class:`~fastmlp.callbacks.EarlyStopping` restore included) and
      resynchronise from rank 0 if they differ.
    - **Threads.** Unless you chose a count (``NUMBA_NUM_THREADS`` in the environment, or
      :func:`fastmlp.set_num_threads` with a count below numba's maximum), each rank trains
      on :func:`default_num_threads` threads, ``max(1, cores // ranks on this node)``; the
      previous count is restored when the call returns.
    - **Errors inside the training loop** that are not the same on every rank (a bug, an
      interrupted rank, memory) would leave the other ranks waiting in the ``Allreduce``
      forever: this rank then prints the traceback to stderr and calls ``comm.Abort(1)``,
      which ends the whole job with a non-zero exit status.
    """
    MPI = _mpi()
    rank = comm.Get_rank()

    # -------- 1. every check, then one collective agreement (nothing changed yet)
    error, checked = None, None
    try:
        checked = _validate(model, X, y, epochs, batch_size, shuffle, validation_data,
                            validation_split, sample_weight, class_weight, callbacks, verbose,
                            checkpoint, checkpoint_every, resume, rank)
    except (TypeError, ValueError) as exc:
        error = exc
    _agree(comm, error)
    epochs, batch_size, shuffle, X = checked.epochs, checked.batch_size, checked.shuffle, checked.X
    callbacks, stateful = checked.callbacks, checked.stateful

    # Each check below is decided from allgathered values, the same on every rank: every
    # rank raises, or none does.
    signatures = comm.allgather(_model_signature(model))
    names = ("dtype", "loss", "parameter count", "architecture", "activation parameters",
             "optimizer", "optimizer hyperparameters", "optimizer state shape")
    for other, signature in enumerate(signatures):
        if signature != signatures[0]:
            what = next(n for n, a, b in zip(names, signature, signatures[0]) if a != b)
            raise ValueError(f"fit_distributed: rank {other}'s model differs from rank 0's in "
                             f"its {what}; build the same model on every rank")
    # Settings that shape the schedule and the collectives: a rank that ran another number
    # of epochs or steps, or saved when the others did not, would leave them waiting.
    settings = comm.allgather((epochs, batch_size, shuffle, checkpoint is not None,
                               checkpoint_every, bool(resume), checked.validation_split,
                               checked.class_key, [type(c).__name__ for c in stateful]))
    setting_names = ("epochs", "batch_size", "shuffle", "checkpoint (given or not)",
                     "checkpoint_every", "resume", "validation_split", "class_weight",
                     "list of stateful callbacks (their classes, in order)")
    for other, setting in enumerate(settings):
        if setting != settings[0]:
            what = next(n for n, a, b in zip(setting_names, setting, settings[0]) if a != b)
            raise ValueError(f"fit_distributed: rank {other}'s {what} differs from rank 0's; "
                             "pass the same training settings on every rank")
    # Per rank: training rows, validation given, some training weight above 0, callbacks
    # given, and (for "balanced") all rows and the class counts.
    weights = checked.weights
    facts = comm.allgather((X.shape[0], checked.validation is not None,
                            weights.shape[0] == 0 or bool(weights.any()), checked.hooks,
                            None if checked.balanced is None else
                            (checked.balanced[1].shape[0], checked.balanced[4])))
    # A rank without callbacks (a logger may be on rank 0 only) still meets the others in
    # the hooks' collectives.
    hooks = any(f[3] for f in facts)
    lengths = np.array([f[0] for f in facts], dtype=np.int64)  # training rows per rank
    has_validation = [f[1] for f in facts]
    if any(has_validation) and not all(has_validation):
        missing = [r for r, v in enumerate(has_validation) if not v]
        raise ValueError(f"fit_distributed: validation_data was given on some ranks but not on "
                         f"rank(s) {missing}; give it on every rank or on none")
    if not any(f[2] for f in facts):
        raise ValueError("fit_distributed: sample_weight and class_weight give every training "
                         "row of every rank the weight 0: nothing would be learned")
    if checked.balanced is not None:
        counts = np.sum([f[4][1] for f in facts], axis=0)
        weights = _global_balanced_weights(model, checked.balanced, counts,
                                           sum(f[4][0] for f in facts), X.shape[0])

    # A batch larger than every shard gives the same one-step schedule as the largest
    # shard's length: that effective size is what a checkpoint records and compares.
    batch_size = min(batch_size, int(lengths.max()))

    # -------- 2. resume: rank 0 decides (file there or not), reads and checks; all agree
    resumed, states, found = None, [], False
    if resume:
        error = None
        if rank == 0 and os.path.exists(checkpoint):
            try:
                contents, done = _io.read_checkpoint(model, checkpoint, epochs, batch_size,
                                                     shuffle, int(lengths.sum()),
                                                     lengths=lengths.tolist(), callbacks=stateful)
                resumed = (contents, done)
                states = _io.callback_states(contents)
            except (ValueError, OSError) as exc:  # FormatError is a ValueError
                error = exc
        _agree(comm, error)
        found = comm.bcast(resumed is not None, root=0)
        if found and stateful:
            states = comm.bcast(states, root=0)

    # -------- 3. the callbacks' setup, on every rank; any refusal is every rank's
    model.stop_training = False
    if hooks:
        error = None
        try:
            metrics = model._metric_names(checked.validation is not None)
            for callback in callbacks:
                callback.set_model(model)
            for callback in callbacks:  # may refuse the setup: nothing has changed yet
                callback.on_train_begin({"metrics": list(metrics), "epochs": epochs})
            for callback, (fields, arrays) in zip(stateful, states):
                try:
                    callback.check_state(fields, arrays)
                except ValueError as exc:
                    raise ValueError(f"checkpoint {checkpoint}: {exc}") from None
        except Exception as exc:
            error = exc
        _agree(comm, error)

    if found:
        resumed = _scatter_checkpoint(comm, model, resumed)
        for callback, (fields, arrays) in zip(stateful, states):
            callback.set_state(fields, arrays)

    # Collective on every rank, whatever each rank decides next.
    threads = default_num_threads(comm)
    if _user_chose_threads():
        threads = get_num_threads()
    with threads_context(threads):
        history = _train(model, comm, MPI, checked._replace(weights=weights, batch_size=batch_size,
                                                            hooks=hooks),
                         lengths, verbose, checkpoint, resumed)
    model.history = history
    return history


def _scatter_checkpoint(comm, model, resumed):
    """Collective, after every rank agreed that rank 0's checkpoint resumes this run: put
    rank 0's parameters, optimizer state and step count into rank 0's model (``_train``
    broadcasts them), and hand each rank its own row order and random streams.

    Returns this rank's ``(epochs_done, order, shuffle_rng_state)``.
    """
    states = None
    if comm.Get_rank() == 0:
        contents, done = resumed
        _io.apply_checkpoint_model(model, contents)
        states = [(done, order, shuffle_rng, rng)
                  for order, shuffle_rng, rng in _io.rank_states(contents)]
    done, order, shuffle_rng, rng = comm.scatter(states, root=0)
    model._rng.bit_generator.state = rng
    return done, order, shuffle_rng


def _train(model, comm, MPI, checked, lengths, verbose, checkpoint, resumed):
    """Steps 4 and on, with the callbacks' ``on_train_end`` on every rank however it ends."""
    error = None
    try:
        return _train_epochs(model, comm, MPI, checked, lengths, verbose, checkpoint, resumed)
    except BaseException as exc:  # only errors every rank raises get here (others abort)
        error = exc
        raise
    finally:
        if checked.hooks:
            _end_training(comm, model, checked.callbacks, error)


def _train_epochs(model, comm, MPI, checked, lengths, verbose, checkpoint, resumed):
    try:
        return _epochs(model, comm, MPI, checked, lengths, verbose, checkpoint, resumed)
    except DivergenceError:
        raise  # decided from reduced values: the same on every rank
    except _Agreed as agreed:
        _raise_first(comm, agreed.errors, agreed.error)
    except BaseException:
        _abort(comm)
        raise  # pragma: no cover - Abort does not return


class _Agreed(Exception):
    """Carries an error that every rank found at the same collective out of the loop, to be
    raised as its own kind there (every other exception in the loop aborts the job)."""

    def __init__(self, errors, error):
        super().__init__()
        self.errors, self.error = errors, error


def _epochs(model, comm, MPI, checked, lengths, verbose, checkpoint, resumed):
    rank, size = comm.Get_rank(), comm.Get_size()
    X, weights, validation = checked.X, checked.weights, checked.validation
    epochs, batch_size, shuffle = checked.epochs, checked.batch_size, checked.shuffle
    callbacks, stateful = checked.callbacks, checked.stateful

    # -------- 4. identical start: rank 0's parameters, optimizer state and RNG draw
    opt = model.optimizer
    comm.Bcast(model.params, root=0)
    if opt.state.size:
        comm.Bcast(opt.state, root=0)
    opt.step_count = comm.bcast(opt.step_count, root=0)
    n = X.shape[0]
    order = np.arange(n, dtype=np.int64)
    if resumed is None:
        epochs_done = 0
        # Every rank draws (keeping the replicas' RNGs in step); rank 0's draw is used.
        entropy = comm.bcast(int(model._rng.integers(2 ** 63)), root=0)
        rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(rank,)))
    else:
        # The checkpoint's streams are already past that draw: restore, draw nothing.
        epochs_done, saved_order, shuffle_rng = resumed
        np.copyto(order, saved_order)
        rng = np.random.default_rng()
        rng.bit_generator.state = shuffle_rng

    # -------- 5. the schedule: the same on every rank, computed from the shard lengths
    n_steps = int(max(-(-lengths // batch_size)))
    # rows[k, r]: rank r's rows in step k (0 once its shard is used up)
    starts = np.arange(n_steps, dtype=np.int64)[:, None] * batch_size
    rows = np.clip(lengths[None, :] - starts, 0, batch_size)
    step_rows = rows.sum(axis=1)
    uniform = (rows == rows[:, :1]).all(axis=1)
    total_rows = int(lengths.sum())

    local_batch = min(batch_size, n)
    x_batch = np.empty((local_batch, X.shape[1]), dtype=model.dtype)
    uses_labels = model._uses_labels
    y_source = checked.labels if uses_labels else checked.targets
    y_batch = np.empty((local_batch,) + y_source.shape[1:], dtype=y_source.dtype)
    w_batch = np.empty(local_batch if weights.shape[0] else 0, dtype=model.dtype)
    counts_correct = model.is_classifier
    # loss * rows, rows predicted right, then validation: loss * rows, right, rows
    sums = np.zeros(5)
    metrics = model._metric_names(validation is not None)
    shown = [m for m in metrics if m != "lr" or any(_changes_lr(c) for c in callbacks)]
    history = History()
    model.history = history
    for epoch in range(epochs_done + 1, epochs + 1):
        if checked.hooks:
            _run_hooks(comm, model, callbacks, "on_epoch_begin", epoch, {})
        started = time.perf_counter()
        if shuffle:
            rng.shuffle(order)
        loss_sum, correct = 0.0, 0
        for step in range(n_steps):
            b = int(rows[step, rank])
            if b:
                lo = step * batch_size
                if shuffle:
                    idx = order[lo:lo + b]
                    xb, yb = x_batch[:b], y_batch[:b]
                    np.take(X, idx, axis=0, out=xb)
                    np.take(y_source, idx, axis=0, out=yb)
                    wb = np.take(weights, idx, out=w_batch[:b]) if w_batch.shape[0] else None
                else:  # contiguous rows: views, no copy
                    xb, yb = X[lo:lo + b], y_source[lo:lo + b]
                    wb = weights[lo:lo + b] if weights.shape[0] else None
                loss = model.compute_gradients(xb, yb, wb)
                loss_sum += loss * b
                if counts_correct:
                    # From the scores this step's forward pass cached, as fit's epoch counts.
                    lab, tgt = (yb, model._no_targets) if uses_labels else (model._no_labels, yb)
                    correct += int(count_correct_cached(model._train_workspace.net,
                                                        model.loss_code, lab, tgt))
            grads = model.flat_gradients
            if not b:
                grads.fill(0)
            elif not uniform[step]:
                grads *= grads.dtype.type(b / step_rows[step])
            # The one collective per step: the whole network's gradient, in place.
            comm.Allreduce(MPI.IN_PLACE, grads, op=MPI.SUM)
            if uniform[step] and size > 1:
                grads /= grads.dtype.type(size)
            # The reduced vector is the same on every rank: all raise here, or none.
            if count_nonfinite(grads):
                raise DivergenceError(
                    f"the averaged gradient became NaN or Inf at epoch {epoch}, step "
                    f"{step + 1} of {n_steps}; training stopped on every rank and the "
                    "model keeps the parameters of the last finite step. Try a smaller "
                    "learning rate.")
            try:
                model.apply_gradients()
            except DivergenceError:  # the same update on every rank: all raise, or none
                raise DivergenceError(
                    f"the update of epoch {epoch}, step {step + 1} of {n_steps} overflowed to "
                    "NaN or Inf and was undone on every rank: the model keeps the parameters "
                    "of the last finite step. Try a smaller learning rate.") from None

        sums[:2] = (loss_sum, correct)
        if validation is not None:
            val_loss, val_correct = model._evaluate_prepared(*validation)
            val_rows = validation[0].shape[0]
            sums[2:] = (val_loss * val_rows, val_correct, val_rows)
        # The epoch's figures, summed over the ranks: one small collective.
        comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
        epoch_loss = sums[0] / total_rows
        if not math.isfinite(epoch_loss):
            raise DivergenceError(f"the training loss of epoch {epoch} is {epoch_loss} "
                                  "(averaged over all ranks); try a smaller learning rate.")
        _check_replicas(comm, model, epoch)
        logs = {"loss": float(epoch_loss)}
        if counts_correct:
            logs["accuracy"] = float(sums[1] / total_rows)
        if validation is not None:
            logs["val_loss"] = float(sums[2] / sums[4])
            if counts_correct:
                logs["val_accuracy"] = float(sums[3] / sums[4])
        logs["lr"] = float(opt.lr)  # the same on every rank: _run_hooks checked it
        history.epoch.append(epoch)
        for name in metrics:
            history.history.setdefault(name, []).append(logs[name])
        if verbose and rank == 0:
            print(epoch_line(epoch, epochs, {name: logs[name] for name in shown},
                             time.perf_counter() - started), flush=True)
        if checked.hooks:
            _run_hooks(comm, model, callbacks, "on_epoch_end", epoch, logs)
        last = epoch == epochs or model.stop_training
        if checkpoint is not None and (epoch % checked.checkpoint_every == 0 or last):
            _save_checkpoint(comm, model, checkpoint, order, rng, epoch, epochs, batch_size,
                             shuffle, stateful)
        if model.stop_training:
            break
    return history


def _abort(comm):
    """Only this rank failed; the others wait in a collective that will never complete.
    Show why, then end the whole job rather than hang it."""
    rank, size = comm.Get_rank(), comm.Get_size()
    sys.stderr.write(f"fit_distributed: rank {rank} of {size} failed; aborting all ranks\n")
    traceback.print_exc()
    sys.stderr.flush()
    sys.stdout.flush()
    comm.Abort(1)


def _hyperparameters(opt):
    return {name: getattr(opt, name) for name in opt.hyperparameter_names}


def _run_hooks(comm, model, callbacks, hook, epoch, logs):
    """Collective: every callback's ``hook(epoch, logs)`` on this rank, then one allgather.

    Returns when every rank got through and the optimizer's hyperparameters (what
    schedules change) agree; ``model.stop_training`` is then True on every rank if a
    callback set it on any.  Otherwise raises :class:`_Agreed` on every rank: a callback
    raised (on any rank), or the hyperparameters differ (callbacks that are not the same
    on every rank).
    """
    error = None
    try:
        for callback in callbacks:
            getattr(callback, hook)(epoch, dict(logs))
    except Exception as exc:
        error = exc
    mine = None if error is None else (type(error).__name__, f"{hook} of epoch {epoch}: {error}")
    everyone = comm.allgather((mine, bool(model.stop_training), _hyperparameters(model.optimizer)))
    errors = [e for e, _, _ in everyone]
    if any(e is not None for e in errors):
        raise _Agreed(errors, error)
    first = everyone[0][2]
    for other, (_, _, hyper) in enumerate(everyone):
        if hyper != first:
            what = ", ".join(f"{name}={hyper[name]!r} (rank 0: {first[name]!r})"
                             for name in first if hyper[name] != first[name])
            errors[other] = ("ValueError", (f"after the callbacks' {hook} of epoch {epoch} the "
                                            f"optimizer has {what}; give every rank the same "
                                            "callbacks"))
            raise _Agreed(errors, None)
    model.stop_training = any(stop for _, stop, _ in everyone)


def _end_training(comm, model, callbacks, error):
    """Collective, however training ended (but by an abort): ``on_train_end`` on every rank
    (through ``Sequential._end_training``, which also notes a restore in a
    ``DivergenceError``), then one allgather: a callback's exception there is raised on every
    rank, and replicas that no longer match are resynchronised from rank 0."""
    hook_error = None
    try:
        model._end_training(callbacks, error)
    except Exception as exc:
        hook_error = exc
    except BaseException:
        _abort(comm)
        raise  # pragma: no cover - Abort does not return
    mine = None if hook_error is None else (type(hook_error).__name__,
                                            f"on_train_end: {hook_error}")
    everyone = comm.allgather((mine, zlib.crc32(model.params.view(np.uint8))))
    _raise_first(comm, [e for e, _ in everyone], hook_error)
    _resync_if_different(comm, model, [c for _, c in everyone], "as training ended")


def _save_checkpoint(comm, model, path, order, rng, epoch, epochs, batch_size, shuffle, stateful):
    """Collective: gather every rank's row order and streams to rank 0, which writes the
    checkpoint (with its stateful callbacks' state, the same on every rank).  Rank 0's write
    error is broadcast and raised as :class:`_Agreed` on every rank, so that a full disk
    raises the same ``OSError`` everywhere instead of leaving the other ranks in the next
    step's Allreduce."""
    states = comm.gather(_io.rank_state(model, order, rng), root=0)
    error = None
    if comm.Get_rank() == 0:
        try:
            _io.save_distributed_checkpoint(model, path, states, epoch, epochs, batch_size, shuffle,
                                            stateful)
        except (OSError, ValueError) as exc:
            error = (type(exc).__name__, f"could not write checkpoint {path}: {exc}")
    error = comm.bcast(error, root=0)
    if error is not None:
        raise _Agreed([error] + [None] * (comm.Get_size() - 1), None)


def _check_replicas(comm, model, epoch):
    """Collective: every rank should hold bit-identical parameters (the reduced gradient is
    the same everywhere)."""
    checksums = comm.allgather(zlib.crc32(model.params.view(np.uint8)))
    _resync_if_different(comm, model, checksums, f"after epoch {epoch}")


def _resync_if_different(comm, model, checksums, when):
    """If an MPI library's Allreduce ever returns results that differ in the last bit
    between ranks (or a callback changed one rank's parameters), resynchronise from rank 0
    and say so."""
    if len(set(checksums)) > 1:
        if comm.Get_rank() == 0:
            import warnings

            warnings.warn(f"fit_distributed: the ranks' parameters differed {when} (the MPI "
                          "library's Allreduce is not bitwise reproducible across ranks, or a "
                          "callback changed them on some ranks only); resynchronised from "
                          "rank 0", RuntimeWarning, stacklevel=4)
        comm.Bcast(model.params, root=0)
        if model.optimizer.state.size:
            comm.Bcast(model.optimizer.state, root=0)
