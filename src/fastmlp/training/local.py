"""One process: each epoch's steps run as one compiled call (in slices under a progress bar)."""

import contextlib
import math
import os
import signal
import threading
import time

import numpy as np

from fastmlp import io
from fastmlp.compiled import count_nonfinite
from fastmlp.progress import REDRAW_SECONDS, EpochProgress
from fastmlp.training.history import DivergenceError
from fastmlp.training.loop import Strategy, begin_callbacks, end_callbacks, restore_callbacks
from fastmlp.training.options import check_fit


class HeldInterrupt:
    """Context manager: a SIGINT (Ctrl-C) that arrives inside the block is acted on when it
    ends, so that the ``KeyboardInterrupt`` never lands between a compiled call that
    changed the parameters and the step count that goes with them.

    Only in the main thread (the one Python delivers signals to), and only over a Python
    handler (the default one raises ``KeyboardInterrupt``); an ignored SIGINT stays ignored.
    A compiled epoch cannot be interrupted anyway: this only moves the interrupt to the
    next point where the model is consistent.
    """

    def __enter__(self):
        self.previous, self.caught = None, None
        if threading.current_thread() is threading.main_thread():
            handler = signal.getsignal(signal.SIGINT)
            if callable(handler):
                self.previous = signal.signal(signal.SIGINT, self._hold)
        return self

    def _hold(self, signum, frame):
        self.caught = (signum, frame)

    def __exit__(self, *exc_info):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            if self.caught is not None:
                self.previous(*self.caught)  # the default handler raises KeyboardInterrupt
        return False


class Local(Strategy):
    """:class:`~fastmlp.training.loop.Strategy` for training in this process alone."""

    def __init__(self, model):
        self.model = model

    def prepare(self, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None,
                validation_split=0.0, sample_weight=None, class_weight=None, callbacks=None,
                verbose=0, checkpoint=None, checkpoint_every=None, resume=False,
                fresh_order=False):
        return check_fit(self.model, X, y, epochs, batch_size, shuffle, validation_data,
                         validation_split, sample_weight, class_weight, callbacks, verbose,
                         checkpoint, checkpoint_every, resume, require_weight=True,
                         fresh_order=fresh_order)

    def start(self, plan):
        model, n = self.model, plan.train.n
        self.plan = plan
        self.batch_size = batch_size = min(plan.batch_size, n)
        n_batches = -(-n // batch_size)
        resumed, epochs_done = None, 0
        if plan.resume and os.path.exists(plan.checkpoint):
            # Read and checked in full before the model changes.
            resumed, epochs_done = io.read_checkpoint(model, plan.checkpoint, plan.epochs,
                                                      batch_size, plan.shuffle_key, n,
                                                      callbacks=plan.stateful)
        states = io.callback_states(resumed) if resumed is not None else []
        begin_callbacks(model, plan, states, epochs_done)
        self.order = np.arange(n, dtype=np.int64)  # shuffled in place: each epoch's order depends on it
        if resumed is not None:
            io.apply_checkpoint(model, resumed, self.order)
            restore_callbacks(plan, states)
        self.rng = model.rng
        self.batch_losses = np.zeros(n_batches)
        self.batch_correct = np.zeros(n_batches, dtype=np.int64)
        self.batch_grad_norms = np.zeros(n_batches)  # each step's norm, when clipping
        self.validation_workspace = (None if plan.validation is None else
                                     model.inference_workspace(plan.validation.n))
        return epochs_done

    def threads(self):
        return contextlib.nullcontext()

    def guard(self):
        return contextlib.nullcontext()

    def hooks(self, name, epoch, logs):
        for callback in self.plan.callbacks:
            getattr(callback, name)(epoch, dict(logs))

    def progress(self, epoch):
        if self.plan.verbose != 1:
            return None
        return EpochProgress(epoch, self.plan.epochs, self.batch_losses.shape[0])

    def run_steps(self, epoch, progress):
        """Run one epoch's steps (in slices when a progress bar is shown); return its logs.

        Raises DivergenceError, after restoring the last finite parameters, when a loss or
        the epoch's last update is not finite.
        """
        model, rows, order, batch_size = self.model, self.plan.train, self.order, self.batch_size
        batch_losses, batch_correct = self.batch_losses, self.batch_correct
        n_batches = batch_losses.shape[0]
        # The epoch's start is the fallback should an update overflow: the loss of the
        # next step shows that, but after the epoch's last step only this check does.
        steps_before = model.save_finite_state()

        def run(first, stop):
            # The step count moves with the parameters, in one uninterruptible piece: after
            # Ctrl-C the model is exactly that of its last completed step.
            with HeldInterrupt():
                reached = model.train_steps(rows, order, batch_size, first, stop, batch_losses,
                                            batch_correct, steps_before, self.batch_grad_norms)
                model.optimizer.step_count = steps_before + reached
            return reached

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
                progress.update(done, self._running_logs(done))
                # About one redraw per REDRAW_SECONDS: a live bar, and so few returns to
                # Python that they cost nothing next to the steps.
                chunk = max(1, min(n_batches, int(chunk * REDRAW_SECONDS / max(elapsed, 1e-9))))
        params_finite = count_nonfinite(model.params) == 0
        if done < n_batches or not params_finite:
            if progress is not None:
                progress.close(self._running_logs(done) if done else {}, finished=False)
            where = (f"the training loss became {batch_losses[done]} at epoch {epoch}, step "
                     f"{done + 1} of {n_batches}" if done < n_batches else
                     f"the last update of epoch {epoch} overflowed to NaN or Inf")
            kept = "the parameters of the last finite step"
            if not params_finite:
                model.restore_finite_state(steps_before)
                kept = f"the parameters from the start of epoch {epoch}"
            raise DivergenceError(f"{where}; training stopped and the model keeps {kept}. "
                                  "Try a smaller learning rate.")
        return self._running_logs(n_batches)

    def _running_logs(self, batches_done):
        """Loss (and accuracy) over the first ``batches_done`` batches of the epoch, per row."""
        batch_size, batch_losses = self.batch_size, self.batch_losses
        rows = min(self.plan.train.n, batches_done * batch_size)
        last_rows = rows - (batches_done - 1) * batch_size
        loss_sum = batch_losses[:batches_done - 1].sum() * batch_size + batch_losses[batches_done - 1] * last_rows
        logs = {"loss": float(loss_sum / rows)}
        if self.model.is_classifier:
            logs["accuracy"] = int(self.batch_correct[:batches_done].sum()) / rows
        if "grad_norm" in self.plan.metrics:
            logs["grad_norm"] = (float(self.batch_grad_norms[:batches_done].mean())
                                 if self.model.optimizer.clips else math.nan)
        return logs

    def epoch_logs(self, epoch, trained):
        logs, validation = trained, self.plan.validation
        if validation is not None:
            val_loss, correct = self.model.evaluate_rows(validation, self.validation_workspace)
            logs["val_loss"] = val_loss
            if self.model.is_classifier:
                logs["val_accuracy"] = correct / validation.n
        return logs

    def save_checkpoint(self, epoch):
        plan = self.plan
        io.save_checkpoint(self.model, plan.checkpoint, self.order, epoch, plan.epochs,
                           self.batch_size, plan.shuffle_key, plan.stateful)

    def end(self, error):
        end_callbacks(self.model, self.plan.callbacks, error)
