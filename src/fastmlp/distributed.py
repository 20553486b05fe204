"""Data-parallel training over MPI (mpi4py): one model replica per rank, gradients averaged.

Every rank holds a shard of the training data and a full copy of the model.  At the start
rank 0's parameters, optimizer state and step count are broadcast to the others.  Each step
every rank runs :meth:`~fastmlp.Sequential.compute_gradients` on its own minibatch, the
gradients are averaged with **one** ``Allreduce`` over the model's single contiguous
gradient vector (:attr:`~fastmlp.Sequential.flat_gradients`, in place), and every rank applies
the same update with :meth:`~fastmlp.Sequential.apply_gradients`.  See ``docs/distributed.md``.

The epochs run in the same loop as a single-process fit (:mod:`fastmlp.training.loop`);
what MPI does differently lives in :mod:`fastmlp.training.mpi`.  mpi4py is imported only
when :func:`fit_distributed` runs: the rest of fastmlp never needs it.
"""

from fastmlp import training
from fastmlp.training import mpi


def default_num_threads(comm):
    """Collective: the numba thread count :func:`fit_distributed` gives each rank by default,
    ``max(1, cores // ranks on this node)`` (capped by ``NUMBA_NUM_THREADS``).

    Call it on every rank of ``comm``; ``fastmlp.set_num_threads(default_num_threads(comm))``
    keeps predictions after training from oversubscribing the cores too.
    """
    return mpi.default_num_threads(comm)


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
    mpi.mpi4py_MPI()  # first: without mpi4py this says how to install it
    if comm is None:
        raise TypeError("fit_distributed needs an mpi4py communicator, such as MPI.COMM_WORLD")
    return training.fit(model, X, y, comm=comm, epochs=epochs, batch_size=batch_size,
                        shuffle=shuffle, validation_data=validation_data,
                        validation_split=validation_split, sample_weight=sample_weight,
                        class_weight=class_weight, callbacks=callbacks, verbose=verbose,
                        checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)
