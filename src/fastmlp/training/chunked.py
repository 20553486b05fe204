"""Training on a source of ``(X_chunk, y_chunk)`` pairs: data that never is in memory whole.

A *chunk source* is anything that yields the pairs anew each epoch: a callable returning an
iterator (``lambda: read_row_groups(path)``), or a re-iterable object (a list of pairs, an
object whose ``__iter__`` opens the file again).  A one-shot iterator (a generator object)
serves a single epoch only.

Semantics (docs/large-data.md):

* Each chunk is checked in full (shapes, finite values, labels) before any step on it.  A
  bad chunk raises with the chunk's number and its first row's position in the epoch; the
  model is then as after the last completed step (the steps of earlier chunks stay).
* A chunk's rows are trained in batches of ``batch_size``; batches do not span chunks (a
  chunk's last batch may be smaller).  ``shuffle=True`` shuffles rows within each chunk
  (the source decides the chunk order), from the model's RNG.
* The epoch's ``loss`` and ``accuracy`` are over all rows of the epoch, as for arrays.
* ``validation_data`` (arrays or a chunk source) is evaluated after every epoch.
  ``validation_split``, ``sample_weight``, ``class_weight``, checkpoints (a source cannot be
  rewound to the middle of an epoch) and ``comm`` are refused with a clear error.
"""

import contextlib
import numbers

import numpy as np

from fastmlp.compiled import count_nonfinite
from fastmlp.streaming import check_shuffle, first_nonfinite
from fastmlp.training.history import DivergenceError
from fastmlp.training.local import HeldInterrupt, Local
from fastmlp.training.loop import begin_callbacks
from fastmlp.training.options import FitPlan, check_callbacks, metric_names
from fastmlp._validation import check_positive_int


def is_chunk_source(X, y=None):
    """Whether ``X`` (with ``y``) is a chunk source rather than an array-like.

    A list is one only without ``y`` and when it holds ``(X_chunk, y_chunk)`` pairs of
    arrays: ``[(0, 1), (1, 0)]`` with labels is two rows of data, as it always was."""
    if isinstance(X, (np.ndarray, str, bytes, tuple, dict)) or hasattr(X, "__array__"):
        return False
    if callable(X):
        return True
    if isinstance(X, list):
        return y is None and bool(X) and all(
            isinstance(p, tuple) and len(p) == 2 and not np.isscalar(p[0]) for p in X)
    return hasattr(X, "__iter__")


class ChunkSource:
    """One epoch's chunks at a time from what the user gave (see the module docstring)."""

    def __init__(self, source, name="X"):
        self.source, self.name, self.used = source, name, False
        self.one_shot = not callable(source) and iter(source) is source

    def epoch(self):
        if self.one_shot and self.used:
            raise ValueError(f"{self.name} is an iterator, used up by the first epoch; pass a "
                             "callable that returns a new iterator (or a re-iterable object) "
                             "to train on it for several epochs")
        self.used = True
        chunks = self.source() if callable(self.source) else self.source
        try:
            return iter(chunks)
        except TypeError:
            raise TypeError(f"{self.name}() returned {type(chunks).__name__}, not an iterable "
                            "of (X_chunk, y_chunk) pairs") from None

    def rows(self, model, epoch_what="the epoch"):
        """``(k, first_row, Rows)`` per chunk, each checked before it is handed out."""
        first_row = 0
        for k, pair in enumerate(self.epoch()):
            yield k, first_row, checked_chunk(model, pair, k, first_row, epoch_what)
            first_row += len(pair[0])


def checked_chunk(model, pair, k, first_row, epoch_what):
    """Chunk ``k`` as :class:`~fastmlp.training.Rows`, or an error naming it and the row."""
    where = f"chunk {k} of {epoch_what} (from row {first_row})"
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise TypeError(f"{where}: expected a pair (X_chunk, y_chunk), got {type(pair).__name__}")
    X, y = pair
    if isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind == "f" and X.shape[0] \
            and X.shape[1] == model.n_features_in:
        bad = first_nonfinite(X, model.dtype)
        if bad is not None:
            raise ValueError(f"{where}: X has a NaN or infinite value in row {first_row + bad[0]} "
                             f"of the epoch (row {bad[0]} of the chunk, column {bad[1]})")
    try:
        return model.rows(X, y)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc}") from None


class Chunked(Local):
    """:class:`~fastmlp.training.loop.Strategy` for a chunk source in this process."""

    def prepare(self, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None,
                validation_split=0.0, sample_weight=None, class_weight=None, callbacks=None,
                verbose=0, checkpoint=None, checkpoint_every=None, resume=False,
                fresh_order=False):
        model = self.model
        refused = [(y is not None, "y (each chunk brings its own labels: pass y=None)"),
                   (not (isinstance(validation_split, numbers.Real) and validation_split == 0),
                    "validation_split (pass validation_data)"),
                   (sample_weight is not None, "sample_weight"),
                   (class_weight is not None, "class_weight"),
                   (checkpoint is not None or checkpoint_every is not None or resume,
                    "checkpoint/resume (a chunk source cannot be rewound into an epoch)")]
        for bad, what in refused:
            if bad:
                raise ValueError(f"fit on a source of (X, y) chunks does not take {what}")
        epochs = check_positive_int(epochs, "epochs")
        batch_size = check_positive_int(batch_size, "batch_size")
        shuffle, chunk_shuffle = check_shuffle(shuffle)
        if chunk_shuffle is not None:
            raise ValueError("shuffle='chunks' is for arrays; with a chunk source, the source "
                             "decides the order of the chunks (shuffle=True shuffles the rows "
                             "within each chunk)")
        if isinstance(verbose, bool) or not isinstance(verbose, numbers.Integral) \
                or verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        source = ChunkSource(X)
        if source.one_shot and epochs > 1:
            raise ValueError(f"X is an iterator, good for one epoch, and epochs={epochs}; pass "
                             "a callable that returns a new iterator each epoch")
        validation = None
        if validation_data is not None:
            if is_chunk_source(validation_data):
                validation = ChunkSource(validation_data, "validation_data")
            elif not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data must be a pair (X_val, y_val) or a source of "
                                 "such chunks")
            else:
                try:
                    validation = model.rows(*validation_data)
                except (TypeError, ValueError) as exc:
                    raise type(exc)(f"validation_data: {exc}") from None
        callbacks, stateful = check_callbacks(callbacks)
        return FitPlan(epochs=epochs, batch_size=batch_size, shuffle=False, chunk_shuffle=None,
                       shuffle_rows=bool(shuffle), shuffle_key=bool(shuffle),
                       fresh_order=False, verbose=verbose, train=None, source=source,
                       validation=validation, validation_split=0.0, checkpoint=None,
                       checkpoint_every=None, resume=False, callbacks=callbacks,
                       stateful=stateful, class_weight=None, sample_weight=None, unsplit=None,
                       metrics=metric_names(model.is_classifier, validation is not None,
                                            model.optimizer.clips))

    def start(self, plan):
        self.plan = plan
        begin_callbacks(self.model, plan, [])
        self.rng = self.model.rng
        self.order = np.zeros(0, dtype=np.int64)  # the loop's shuffle is off: rows shuffle per chunk
        return 0

    def progress(self, epoch):
        return None  # the number of steps is not known ahead: verbose=1 prints a line per epoch

    def run_steps(self, epoch, progress):
        model, plan = self.model, self.plan
        loss_sum, correct, rows_seen = 0.0, 0, 0
        norm_sum, steps = 0.0, 0  # the gradient norms, when the optimizer clips
        for k, first_row, rows in plan.source.rows(model, f"epoch {epoch}"):
            n = rows.n
            batch_size = min(plan.batch_size, n)
            n_batches = -(-n // batch_size)
            order = np.arange(n, dtype=np.int64)
            if plan.shuffle_rows:
                self.rng.shuffle(order)
            batch_losses = np.zeros(n_batches)
            batch_correct = np.zeros(n_batches, dtype=np.int64)
            batch_grad_norms = np.zeros(n_batches)
            steps_before = model.save_finite_state()
            with HeldInterrupt():
                reached = model.train_steps(rows, order, batch_size, 0, n_batches, batch_losses,
                                            batch_correct, steps_before, batch_grad_norms)
                model.optimizer.step_count = steps_before + reached
            params_finite = count_nonfinite(model.params) == 0
            if reached < n_batches or not params_finite:
                kept = "the parameters of the last finite step"
                if not params_finite:
                    model.restore_finite_state(steps_before)
                    kept = f"the parameters from the start of chunk {k}"
                where = (f"the training loss became {batch_losses[reached]} at epoch {epoch}, "
                         f"chunk {k}, step {reached + 1} of {n_batches}" if reached < n_batches
                         else f"the last update of chunk {k} of epoch {epoch} overflowed")
                raise DivergenceError(f"{where}; training stopped and the model keeps {kept}. "
                                      "Try a smaller learning rate.")
            last_rows = n - (n_batches - 1) * batch_size
            loss_sum += (batch_losses[:-1].sum() * batch_size + batch_losses[-1] * last_rows)
            correct += int(batch_correct.sum())
            norm_sum += float(batch_grad_norms.sum())
            steps += n_batches
            rows_seen += n
        if rows_seen == 0:
            raise ValueError(f"the chunk source yielded no chunks in epoch {epoch}")
        logs = {"loss": float(loss_sum / rows_seen)}
        if model.is_classifier:
            logs["accuracy"] = correct / rows_seen
        if "grad_norm" in plan.metrics:  # the mean over the epoch's steps, as fit records it
            logs["grad_norm"] = norm_sum / steps
        return logs

    def epoch_logs(self, epoch, trained):
        logs, validation = trained, self.plan.validation
        if validation is not None:
            if isinstance(validation, ChunkSource):
                val_loss, right, n = evaluate_source(self.model, validation, f"epoch {epoch}'s validation")
            else:
                val_loss, right = self.model.evaluate_rows(
                    validation, self.model.inference_workspace(validation.n))
                n = validation.n
            logs["val_loss"] = val_loss
            if self.model.is_classifier:
                logs["val_accuracy"] = right / n
        return logs

    def save_checkpoint(self, epoch):  # refused in prepare: never called
        raise AssertionError("no checkpoints for chunk sources")

    def guard(self):
        return contextlib.nullcontext()


def evaluate_source(model, source, what="the source"):
    """``(mean loss, rows predicted right, rows)`` over every chunk of ``source``
    (:class:`ChunkSource`); each chunk is checked before it is evaluated."""
    loss_sum, right, rows_seen = 0.0, 0, 0
    for _, _, rows in source.rows(model, what):
        loss, correct = model.evaluate_rows(rows, model.inference_workspace(rows.n))
        loss_sum += loss * rows.n
        right += correct
        rows_seen += rows.n
    if rows_seen == 0:
        raise ValueError(f"{source.name} yielded no chunks")
    return loss_sum / rows_seen, right, rows_seen
