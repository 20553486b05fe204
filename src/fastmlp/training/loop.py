"""The one epoch loop, for one process and for MPI alike.

Every epoch runs the same ten steps in the same order::

    begin hooks -> shuffle -> train -> validate -> rate -> history -> report
    -> end hooks -> checkpoint -> stop

:func:`run_epochs` writes them once (:func:`fastmlp.training.fit` picks the strategy).  What differs between one process and an MPI job is asked of
a *strategy* (:class:`Strategy`), which has two implementations side by side:
:class:`~fastmlp.training.local.Local` (one compiled call per epoch, plain callbacks, a
checkpoint written directly) and :class:`~fastmlp.training.mpi.MPI` (a step at a time with
one ``Allreduce`` of the gradient, hooks checked across ranks, logs summed over ranks,
checkpoints gathered to rank 0, and every decision agreed so that no rank waits alone).

A new ``fit`` option goes into :func:`~fastmlp.training.options.check_fit` (checked once,
for both), and into this loop if it acts per epoch; only what must happen differently on
several ranks goes into the two strategies.
"""

import time

import numpy as np

from fastmlp.progress import epoch_line
from fastmlp.training.history import DivergenceError, History
from fastmlp.training.options import changes_lr


class Strategy:
    """What differs between training in one process and over MPI ranks.

    Attributes
    ----------
    prints : bool
        Whether this process prints the ``verbose`` lines (MPI: rank 0 only).
    rng : numpy.random.Generator
        The stream the epochs' shuffles draw from (after :meth:`start`).
    order : ndarray of int64, shape (n_train,)
        The row order, shuffled in place each epoch (after :meth:`start`).
    """

    prints = True

    def prepare(self, X, y, **arguments):
        """Check ``fit``'s arguments (and, under MPI, agree on them); return a FitPlan.
        Raises before anything in the model changes."""
        raise NotImplementedError

    def start(self, plan):
        """Resume from a checkpoint or start afresh, set up the callbacks; return the
        number of epochs already done."""
        raise NotImplementedError

    def threads(self):
        """Context manager: the thread count the epochs run on."""
        raise NotImplementedError

    def guard(self):
        """Context manager around the epochs: how an error inside them is raised."""
        raise NotImplementedError

    def begin(self):
        """Make every replica start from the same state (nothing to do on one process)."""

    def hooks(self, name, epoch, logs):
        """Run every callback's ``name`` hook (under MPI: and agree on its outcome)."""
        raise NotImplementedError

    def progress(self, epoch):
        """The epoch's progress bar, or None."""
        return None

    def run_steps(self, epoch, progress):
        """Run one epoch's steps over ``order``; return what :meth:`epoch_logs` reduces."""
        raise NotImplementedError

    def epoch_logs(self, epoch, trained):
        """The epoch's ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy`` (as apply)."""
        raise NotImplementedError

    def save_checkpoint(self, epoch):
        raise NotImplementedError

    def end(self, error):
        """``on_train_end`` on every callback, however the epochs ended (``error`` or None)."""
        raise NotImplementedError


def run_epochs(model, plan, strategy, epochs_done):
    """Epochs ``epochs_done + 1 .. plan.epochs``: the ten steps, then ``on_train_end``."""
    shown = [m for m in plan.metrics if m != "lr" or any(changes_lr(c) for c in plan.callbacks)]
    history = History()
    model.history = history
    error = None
    try:
        with strategy.guard():
            strategy.begin()
            for epoch in range(epochs_done + 1, plan.epochs + 1):
                strategy.hooks("on_epoch_begin", epoch, {})
                started = time.perf_counter()
                if plan.chunk_shuffle is not None:
                    plan.chunk_shuffle.fill_order(strategy.rng, strategy.order)
                elif plan.shuffle:
                    if plan.fresh_order:
                        strategy.order[:] = np.arange(strategy.order.shape[0])
                    strategy.rng.shuffle(strategy.order)
                progress = strategy.progress(epoch)
                logs = strategy.epoch_logs(epoch, strategy.run_steps(epoch, progress))
                logs["lr"] = float(model.optimizer.lr)  # MPI: the hooks checked it agrees
                history.epoch.append(epoch)
                for name in plan.metrics:
                    history.history.setdefault(name, []).append(logs[name])
                shown_logs = {name: logs[name] for name in shown}
                if progress is not None:
                    progress.close(shown_logs)
                elif plan.verbose and strategy.prints:
                    print(epoch_line(epoch, plan.epochs, shown_logs, time.perf_counter() - started),
                          flush=True)
                strategy.hooks("on_epoch_end", epoch, logs)
                last = epoch == plan.epochs or model.stop_training
                if plan.checkpoint is not None and (epoch % plan.checkpoint_every == 0 or last):
                    strategy.save_checkpoint(epoch)
                if model.stop_training:
                    break
    except BaseException as exc:
        error = exc
        raise
    finally:
        strategy.end(error)
    return history


def begin_callbacks(model, plan, states, epochs_done=0):
    """``set_model`` and ``on_train_begin`` on every callback, then each stateful one checks
    the state a checkpoint saved for it (``states``: ``(fields, arrays)`` per stateful
    callback, or empty).  ``epochs_done``: the epochs a resumed checkpoint completed.  A
    refusal raises before anything in the model has changed."""
    model.stop_training = False
    for callback in plan.callbacks:
        callback.set_model(model)
    for callback in plan.callbacks:  # may refuse the setup: nothing has changed yet
        callback.on_train_begin({"metrics": list(plan.metrics), "epochs": plan.epochs,
                                 "initial_epoch": epochs_done, "resume": plan.resume})
    for callback, (fields, arrays) in zip(plan.stateful, states):
        try:
            callback.check_state(fields, arrays)
        except ValueError as exc:
            raise ValueError(f"checkpoint {plan.checkpoint}: {exc}") from None


def restore_callbacks(plan, states):
    """Give each stateful callback the state the checkpoint saved for it."""
    for callback, (fields, arrays) in zip(plan.stateful, states):
        callback.set_state(fields, arrays)


def end_callbacks(model, callbacks, error):
    """``on_train_end`` on every callback; a ``DivergenceError``'s message then says whether
    a callback changed the parameters (EarlyStopping restoring its best epoch)."""
    before = model.params.copy() if isinstance(error, DivergenceError) else None
    for callback in callbacks:
        callback.on_train_end({"error": error})
    if before is not None and not np.array_equal(before, model.params):
        error.args = (error.args[0] + " Then a callback changed the parameters as training "
                      "ended (EarlyStopping restores those of its best epoch).",)
