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
import traceback
import zlib

import numba
import numpy as np

from fastmlp import io as _io
from fastmlp.kernels.checks import count_nonfinite
from fastmlp.sequential import DivergenceError, History, Sequential, _check_checkpoint_args
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


def _validate(model, X, y, epochs, batch_size, shuffle, validation_data, verbose, checkpoint,
              checkpoint_every, resume, rank):
    """This rank's arguments, checked and converted (raises on the first bad one)."""
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a fastmlp Sequential, got {type(model).__name__}")
    # Only rank 0 touches the checkpoint file, so only its file system is asked about the
    # path: the other ranks' nodes need not see rank 0's directory.
    checkpoint_every = _check_checkpoint_args(checkpoint, checkpoint_every, resume,
                                              filesystem=rank == 0)
    return model._check_fit_arguments(X, y, epochs, batch_size, shuffle, validation_data,
                                      verbose) + (checkpoint_every,)


def fit_distributed(model, X, y, comm, epochs=1, batch_size=32, shuffle=True, validation_data=None,
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
        (see Notes); each needs at least one row.
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
    verbose : int, default 0
        1 or more: rank 0 prints one line per epoch.
    checkpoint : str or os.PathLike, optional
        Rank 0 saves a checkpoint there (atomically) every ``checkpoint_every`` epochs and
        after the last epoch: the model, optimizer state and step count (the same on every
        rank), the epoch count and every rank's row order and random streams, gathered to
        rank 0.  Give the same settings on every rank; only rank 0's path is used.
    checkpoint_every : int, optional
        Epochs between checkpoints (default 1), counted from the run's first epoch.
    resume : bool, default False
        With ``checkpoint``: if rank 0 finds that file, every rank continues the run it
        belongs to, ending bit-identical to a run that never stopped; without it, the run
        starts afresh.  The checkpoint must come from as many ranks, each with as many rows,
        as this job (and the same model, batch size and ``shuffle``, as for
        :meth:`Sequential.fit`); otherwise every rank raises the same ``ValueError``.

    Returns
    -------
    History
        The same on every rank: the epoch loss is the row-weighted mean over all ranks'
        rows, as :meth:`Sequential.fit` would report on the concatenated data.

    Raises
    ------
    ValueError, TypeError
        Bad arguments on **any** rank, or settings (``epochs``, ``batch_size``, ``shuffle``,
        checkpointing) that differ between ranks: every rank raises the same error, naming
        the rank, before anything in the model changes (so no rank is left waiting).  So
        does a checkpoint that rank 0 cannot resume (:class:`~fastmlp.FormatError` when it
        is damaged).
    DivergenceError
        When the averaged gradient or the update is NaN or Inf.  The averaged gradient is
        the same on every rank, so every rank raises it at the same step.

    Notes
    -----
    - **One step** on ``R`` ranks equals a single-process step on the concatenation of the
      ranks' minibatches (with ``shuffle=False``: rank 0's rows, then rank 1's, ...): each
      rank's gradient is the mean over its ``b_r`` rows, and the sum over ranks of
      ``(b_r / sum b) * g_r`` is the mean over all rows.  When every rank has the same
      number of rows the weights are ``1/R``, applied after the sum.
    - **Uneven shards.** Every rank runs ``max_r ceil(n_r / batch_size)`` steps per epoch
      (shard lengths are exchanged once, with an allgather, so all ranks agree).  A rank
      whose shard is exhausted takes part with zero rows and weight 0 in that step.
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
        checked = _validate(model, X, y, epochs, batch_size, shuffle, validation_data, verbose,
                            checkpoint, checkpoint_every, resume, rank)
    except (TypeError, ValueError) as exc:
        error = exc
    _agree(comm, error)
    epochs, batch_size, shuffle, X, labels, targets, validation, checkpoint_every = checked

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
                               checkpoint_every, bool(resume)))
    setting_names = ("epochs", "batch_size", "shuffle", "checkpoint (given or not)",
                     "checkpoint_every", "resume")
    for other, setting in enumerate(settings):
        if setting != settings[0]:
            what = next(n for n, a, b in zip(setting_names, setting, settings[0]) if a != b)
            raise ValueError(f"fit_distributed: rank {other}'s {what} differs from rank 0's; "
                             "pass the same training settings on every rank")
    lengths = np.array(comm.allgather(X.shape[0]), dtype=np.int64)  # rows per rank
    has_validation = comm.allgather(validation is not None)
    if any(has_validation) and not all(has_validation):
        missing = [r for r, v in enumerate(has_validation) if not v]
        raise ValueError(f"fit_distributed: validation_data was given on some ranks but not on "
                         f"rank(s) {missing}; give it on every rank or on none")

    # A batch larger than every shard gives the same one-step schedule as the largest
    # shard's length: that effective size is what a checkpoint records and compares.
    batch_size = min(batch_size, int(lengths.max()))

    # -------- 2. resume: rank 0 decides (file there or not), reads and checks; all agree
    resumed = None
    if resume:
        error = None
        if rank == 0 and os.path.exists(checkpoint):
            try:
                contents, done = _io.read_checkpoint(model, checkpoint, epochs, batch_size,
                                                     shuffle, int(lengths.sum()),
                                                     lengths=lengths.tolist())
                resumed = (contents, done)
            except (ValueError, OSError) as exc:  # FormatError is a ValueError
                error = exc
        _agree(comm, error)
        found = comm.bcast(resumed is not None, root=0)
        if found:
            resumed = _scatter_checkpoint(comm, model, resumed)

    # Collective on every rank, whatever each rank decides next.
    threads = default_num_threads(comm)
    if _user_chose_threads():
        threads = get_num_threads()
    with threads_context(threads):
        history = _train(model, comm, MPI, X, labels, targets, validation, lengths, epochs,
                         batch_size, shuffle, verbose, checkpoint, checkpoint_every, resumed)
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


def _train(model, comm, MPI, X, labels, targets, validation, lengths, epochs, batch_size, shuffle,
           verbose, checkpoint, checkpoint_every, resumed):
    rank, size = comm.Get_rank(), comm.Get_size()

    # -------- 3. identical start: rank 0's parameters, optimizer state and RNG draw
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

    # -------- 4. the schedule: the same on every rank, computed from the shard lengths
    n_steps = int(max(-(-lengths // batch_size)))
    # rows[k, r]: rank r's rows in step k (0 once its shard is used up)
    starts = np.arange(n_steps, dtype=np.int64)[:, None] * batch_size
    rows = np.clip(lengths[None, :] - starts, 0, batch_size)
    step_rows = rows.sum(axis=1)
    uniform = (rows == rows[:, :1]).all(axis=1)
    total_rows = int(lengths.sum())

    local_batch = min(batch_size, n)
    x_batch = np.empty((local_batch, X.shape[1]), dtype=model.dtype)
    y_source = labels if model._uses_labels else targets
    y_batch = np.empty((local_batch,) + y_source.shape[1:], dtype=y_source.dtype)
    sums = np.zeros(3)  # loss * rows, then validation: loss * rows, correct, rows
    history = History()
    failure = None  # an error every rank agreed on inside the loop, raised after it

    try:
        for epoch in range(epochs_done + 1, epochs + 1):
            if shuffle:
                rng.shuffle(order)
            loss_sum = 0.0
            for step in range(n_steps):
                b = int(rows[step, rank])
                if b:
                    idx = order[step * batch_size:step * batch_size + b]
                    if shuffle:
                        xb, yb = x_batch[:b], y_batch[:b]
                        np.take(X, idx, axis=0, out=xb)
                        np.take(y_source, idx, axis=0, out=yb)
                    else:  # contiguous rows: views, no copy
                        lo = step * batch_size
                        xb, yb = X[lo:lo + b], y_source[lo:lo + b]
                    loss = model.compute_gradients(xb, yb)
                    loss_sum += loss * b
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
                model.apply_gradients()

            sums[0] = loss_sum
            comm.Allreduce(MPI.IN_PLACE, sums[:1], op=MPI.SUM)
            epoch_loss = sums[0] / total_rows
            if not math.isfinite(epoch_loss):
                raise DivergenceError(f"the training loss of epoch {epoch} is {epoch_loss} "
                                      "(averaged over all ranks); try a smaller learning rate")
            _check_replicas(comm, model, epoch)
            history.epoch.append(epoch)
            history.history["loss"].append(float(epoch_loss))
            line = f"epoch {epoch}/{epochs}  loss {epoch_loss:.4f}  ({size} ranks)"
            if validation is not None:
                val_loss, correct = model._evaluate_prepared(*validation)
                val_rows = validation[0].shape[0]
                sums[:] = (val_loss * val_rows, correct, val_rows)
                comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
                val_loss = float(sums[0] / sums[2])
                history.history.setdefault("val_loss", []).append(val_loss)
                line += f"  val_loss {val_loss:.4f}"
                if model.is_classifier:
                    accuracy = float(sums[1] / sums[2])
                    history.history.setdefault("val_accuracy", []).append(accuracy)
                    line += f"  val_accuracy {accuracy:.4f}"
            if checkpoint is not None and (epoch % checkpoint_every == 0 or epoch == epochs):
                failure = _save_checkpoint(comm, model, checkpoint, order, rng, epoch, epochs,
                                           batch_size, shuffle)
                if failure is not None:
                    break
            if verbose and rank == 0:
                print(line, flush=True)
    except DivergenceError:
        raise  # decided from reduced values: the same on every rank
    except BaseException:
        # Only this rank failed; the others wait in a collective that will never complete.
        # Show why, then end the whole job rather than hang it.
        sys.stderr.write(f"fit_distributed: rank {rank} of {size} failed; aborting all ranks\n")
        traceback.print_exc()
        sys.stderr.flush()
        sys.stdout.flush()
        comm.Abort(1)
        raise  # pragma: no cover - Abort does not return
    if failure is not None:
        _raise_first(comm, failure, None)
    return history


def _save_checkpoint(comm, model, path, order, rng, epoch, epochs, batch_size, shuffle):
    """Collective: gather every rank's row order and streams to rank 0, which writes the
    checkpoint.  Returns None, or (on every rank) the allgather-shaped record of rank 0's
    write error, so that a full disk raises the same ``OSError`` everywhere instead of
    leaving the other ranks in the next step's Allreduce."""
    states = comm.gather(_io.rank_state(model, order, rng), root=0)
    error = None
    if comm.Get_rank() == 0:
        try:
            _io.save_distributed_checkpoint(model, path, states, epoch, epochs, batch_size, shuffle)
        except (OSError, ValueError) as exc:
            error = (type(exc).__name__, f"could not write checkpoint {path}: {exc}")
    error = comm.bcast(error, root=0)
    if error is None:
        return None
    return [error] + [None] * (comm.Get_size() - 1)


def _check_replicas(comm, model, epoch):
    """Collective: every rank should hold bit-identical parameters (the reduced gradient is
    the same everywhere).  If an MPI library's Allreduce ever returns results that differ in
    the last bit between ranks, resynchronise from rank 0 and say so once."""
    checksum = zlib.crc32(model.params.view(np.uint8))
    checksums = comm.allgather(checksum)
    if len(set(checksums)) > 1:
        if comm.Get_rank() == 0:
            import warnings

            warnings.warn(f"fit_distributed: the ranks' parameters differed after epoch {epoch} "
                          "(the MPI library's Allreduce is not bitwise reproducible across "
                          "ranks); resynchronised from rank 0", RuntimeWarning, stacklevel=3)
        comm.Bcast(model.params, root=0)
        if model.optimizer.state.size:
            comm.Bcast(model.optimizer.state, root=0)
