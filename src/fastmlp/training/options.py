"""A fit's arguments, checked and converted before anything in the model changes.

One set of checks for one process and for MPI: :func:`check_fit` raises on the first bad
argument and returns a :class:`FitPlan`; under MPI every rank runs it, and the ranks then
agree on the outcome (:mod:`fastmlp.training.mpi`).
"""

import numbers
import os

import numpy as np

from fastmlp import io
from fastmlp._validation import check_positive_int, class_weight_per_row, sample_weight_per_row
from fastmlp.callbacks import Callback, LearningRateSchedule, ReduceLROnPlateau
from fastmlp.streaming import check_shuffle


class FitPlan:
    """What a fit will do, checked.

    Attributes
    ----------
    epochs, batch_size : int
        ``batch_size`` as given (the loop caps it at the rows available).
    shuffle : bool
        Whether the rows are reordered each epoch.
    chunk_shuffle : ChunkShuffle or None
        How, when it is a chunk shuffle (``shuffle="chunks"``); None for the full shuffle.
    shuffle_key
        What checkpoints record and ranks compare: the bool, or ``(chunk_rows, window)``.
    fresh_order : bool
        Each epoch shuffles ``0 .. n-1`` afresh instead of the previous epoch's order.
    verbose : {0, 1, 2}
    train : Rows
        The training rows, with their loss weights (validation_split's held out).
    validation : Rows or None
        ``validation_data``, or the rows ``validation_split`` held out.
    validation_split : float
    checkpoint : str or None
    checkpoint_every : int or None
    resume : bool
    callbacks : list of Callback
    stateful : list of Callback
        Those whose state a checkpoint keeps (they override ``get_state``).
    class_weight
        As given (MPI compares it between ranks and recomputes ``"balanced"``).
    sample_weight
        As given (MPI's global ``"balanced"`` weights start from it again).
    unsplit : Rows
        Every row given, before ``validation_split`` (for MPI's global class counts).
    metrics : list of str
        The names an epoch's logs and the History hold, in order.
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)


def metric_names(is_classifier, has_validation, clips=False):
    """The names an epoch's logs and the History hold, in order (``grad_norm`` when the
    optimizer clips gradients)."""
    metrics = ["loss"] + (["accuracy"] if is_classifier else [])
    if has_validation:
        metrics += ["val_loss"] + (["val_accuracy"] if is_classifier else [])
    return metrics + ["lr"] + (["grad_norm"] if clips else [])


def check_fit(model, X, y, epochs, batch_size, shuffle, validation_data, validation_split,
              sample_weight, class_weight, callbacks, verbose, checkpoint, checkpoint_every,
              resume, filesystem=True, require_weight=False, fresh_order=False):
    """Every argument of ``fit`` checked and converted, in the order the errors are reported.

    ``filesystem=False`` skips the checks that ask the file system about the checkpoint path
    (for the ranks of an MPI run that never write it); ``require_weight`` refuses training
    rows that all weigh 0 (MPI decides that over every rank's rows).  Returns a
    :class:`FitPlan`; changes nothing.
    """
    checkpoint_every = check_checkpoint_args(checkpoint, checkpoint_every, resume, filesystem)
    if validation_data is not None and not (isinstance(validation_split, numbers.Real)
                                            and validation_split == 0):
        raise ValueError("give validation_data or validation_split, not both")
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    shuffle, chunk_shuffle = check_shuffle(shuffle)
    if not isinstance(fresh_order, (bool, np.bool_)):
        raise ValueError(f"fresh_order must be True or False, got {fresh_order!r}")
    if fresh_order and checkpoint is not None:
        # A checkpoint does not record it, so a resume could not check that it matches.
        raise ValueError("fresh_order does not go with checkpoint")
    if isinstance(verbose, bool) or not isinstance(verbose, numbers.Integral) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    rows = model.rows(X, y)
    validation = None
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise ValueError("validation_data must be a pair (X_val, y_val)")
        try:
            validation = model.rows(*validation_data)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"validation_data: {exc}") from None
    rows = rows.with_weights(row_weights(model, sample_weight, class_weight, rows))
    train, held_out = rows.split(validation_split)
    if held_out is not None:
        validation = held_out
    if require_weight and train.has_weights and not train.weights.any():
        raise ValueError("sample_weight and class_weight give every training row the weight 0: "
                         "nothing would be learned")
    callbacks, stateful = check_callbacks(callbacks)
    model.optimizer.clip_vector()  # clip_norm/clip_value changed since construction: checked now
    shuffle_key = (shuffle if chunk_shuffle is None
                   else (chunk_shuffle.chunk_rows, chunk_shuffle.window))
    plan = FitPlan(epochs=epochs, batch_size=batch_size, shuffle=bool(shuffle),
                   chunk_shuffle=chunk_shuffle, shuffle_key=shuffle_key,
                   fresh_order=bool(fresh_order), verbose=verbose,
                   train=train, validation=validation, validation_split=float(validation_split),
                   checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=bool(resume),
                   callbacks=callbacks, stateful=stateful, class_weight=class_weight,
                   sample_weight=sample_weight, unsplit=rows,
                   metrics=metric_names(model.is_classifier, validation is not None,
                                        model.optimizer.clips))
    return plan


def class_column(model, rows):
    """``(classes, n_classes)``: the class of each row as ``class_weight`` reads it."""
    if model.uses_labels:
        return rows.labels, model.n_outputs
    if model.loss == "binary_cross_entropy" and model.n_outputs == 1:
        return rows.targets[:, 0].astype(np.int64), 2
    raise ValueError(f"class_weight needs class labels: it applies to "
                     f"softmax_cross_entropy, multiclass_hinge and single-output "
                     f"binary_cross_entropy, not to {model.loss!r} with "
                     f"{model.n_outputs} outputs (use sample_weight)")


def row_weights(model, sample_weight, class_weight, rows):
    """Per-row loss weights ``(n,)`` of the model's dtype, or ``rows``' empty stand-in."""
    weights = None
    if sample_weight is not None:
        weights = sample_weight_per_row(sample_weight, rows.n)
    if class_weight is not None:
        classes, n_classes = class_column(model, rows)
        per_class = class_weight_per_row(class_weight, classes, n_classes)
        weights = per_class if weights is None else weights * per_class
    if weights is None:
        return rows.weights[:0] if rows.has_weights else rows.weights
    return weights.astype(model.dtype)


def class_counts(model, rows):
    """Rows per class ``(n_classes,)`` int64, the classes as ``class_weight`` reads them."""
    if model.uses_labels:
        return np.bincount(rows.labels, minlength=model.n_outputs).astype(np.int64)
    return np.bincount(rows.targets[:, 0].astype(np.int64), minlength=2).astype(np.int64)


def check_callbacks(callbacks):
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


def changes_lr(callback):
    """Whether ``callback`` sets the learning rate (then ``lr`` is shown per epoch)."""
    return isinstance(callback, (LearningRateSchedule, ReduceLROnPlateau))


def check_checkpoint_args(checkpoint, checkpoint_every, resume, filesystem=True):
    """``checkpoint_every`` as an int (1 by default), after checking the three together.

    ``filesystem=False`` skips the checks that ask the file system about the path (for the
    ranks of a distributed run that never write it)."""
    if not isinstance(resume, (bool, np.bool_)):
        raise ValueError(f"resume must be True or False, got {resume!r}")
    if checkpoint is None:
        if checkpoint_every is not None or resume:
            raise ValueError("checkpoint_every and resume need a checkpoint path")
        return None
    path = io.check_path(checkpoint, "checkpoint")
    if filesystem:
        if os.path.isdir(path):
            raise ValueError(f"checkpoint {path!r} is a directory; give a file name")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise ValueError(f"checkpoint directory {directory!r} does not exist")
    return 1 if checkpoint_every is None else check_positive_int(checkpoint_every, "checkpoint_every")
