"""Callbacks: code that runs at the boundaries of :meth:`fastmlp.Sequential.fit`.

A callback subclasses :class:`Callback` and overrides any of its hooks.  ``fit`` calls them
in this order::

    on_train_begin(logs)
    for each epoch:
        on_epoch_begin(epoch, logs)
        ... the epoch's batches run compiled, with no Python in between ...
        on_epoch_end(epoch, logs)      # logs: loss, accuracy, val_loss, val_accuracy, lr
    on_train_end(logs)                 # also when fit ends by an exception

Epochs are numbered from 1, continuing across a resume.  A callback stops training by
setting ``self.model.stop_training = True``; the current epoch finishes first.

There is no per-batch hook: an epoch is one compiled loop, and calling back into Python
after every step would cost more than a small network's step.

The learning-rate schedules (:class:`StepDecay`, :class:`ExponentialDecay`,
:class:`CosineAnnealing`, :class:`ReduceLROnPlateau`), :class:`EarlyStopping` and
:class:`ToleranceStopping` (scikit-learn's ``tol`` rule) are callbacks; the rates themselves
come from :mod:`fastmlp.kernels.schedules`.  :class:`CSVLogger` writes each epoch's metrics
to a CSV file.
"""

import math
import numbers
import os

import numpy as np

from fastmlp._validation import check_real
from fastmlp.kernels import schedules


class Callback:
    """Base class: every hook does nothing.

    Attributes
    ----------
    model : Sequential or None
        The model being trained, set by ``fit`` before :meth:`on_train_begin`.
    """

    model = None

    def set_model(self, model):
        """Called by ``fit`` before training; stores ``model``."""
        self.model = model

    def on_train_begin(self, logs):
        """Before the first epoch.

        Parameters
        ----------
        logs : dict
            ``"metrics"``: the names the epoch logs will hold (e.g. ``["loss", "accuracy",
            "val_loss", "val_accuracy", "lr"]``); ``"epochs"``: the last epoch number;
            ``"initial_epoch"``: the epochs already done (those of the checkpoint a resumed
            run continues, else 0: the first epoch will be ``initial_epoch + 1``);
            ``"resume"``: whether ``fit`` was called with ``resume=True``.
            Raising here (e.g. ``ValueError`` for a metric that will not exist) stops
            ``fit`` before any parameter changes.
        """

    def on_epoch_begin(self, epoch, logs):
        """Before epoch ``epoch`` (1-based) runs.  A schedule sets the learning rate here."""

    def on_epoch_end(self, epoch, logs):
        """After epoch ``epoch``; ``logs`` maps each metric name to this epoch's value.

        Metrics: ``loss`` (mean training loss during the epoch, sample-weighted),
        ``accuracy`` (classifiers: fraction of training rows predicted right just before
        their step), ``val_loss`` and ``val_accuracy`` (with validation data), ``lr`` (the
        learning rate the epoch used).
        """

    def on_train_end(self, logs):
        """After the last epoch, or when ``fit`` ends by an exception (``logs["error"]`` then
        holds it; it is ``None`` after a normal end)."""

    def get_state(self):
        """What a ``fit`` checkpoint keeps of this callback, so that a resumed run goes on as
        if it had never stopped.

        Returns
        -------
        (dict, dict) or None
            ``(fields, arrays)``: ``fields`` maps names to numbers, booleans or None (it is
            stored as JSON), ``arrays`` maps at most 4 short names to arrays shaped and typed
            like ``model.params``.  None (the default) keeps nothing.
        """
        return None

    def check_state(self, fields, arrays):
        """Raise ``ValueError`` unless :meth:`set_state` can take ``(fields, arrays)``, as read
        from a checkpoint (``fields`` may be None).  Runs before anything is restored, so a
        refused checkpoint changes nothing.  The default accepts only an empty state."""
        if fields is not None or arrays:
            raise ValueError(f"{type(self).__name__} keeps no state, but the checkpoint holds some")

    def set_state(self, fields, arrays):
        """Restore what :meth:`get_state` returned (called on resume, after
        :meth:`on_train_begin` and :meth:`check_state`)."""


def _check_count(value, name, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_monitor(monitor, mode):
    if not isinstance(monitor, str):
        raise ValueError(f"monitor must be a metric name such as 'val_loss', got {monitor!r}")
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        mode = "max" if "accuracy" in monitor else "min"
    return monitor, mode == "min"


def _require_metric(monitor, logs, who):
    if monitor not in logs["metrics"]:
        raise ValueError(f"{who} monitors {monitor!r}, but fit will report only "
                         f"{', '.join(logs['metrics'])}"
                         + (" (pass validation_data or validation_split)" if monitor.startswith("val_") else ""))


def _check_fields(who, fields, spec):
    """``fields`` must have exactly the keys of ``spec`` (name -> "int", "float" or
    "float-or-none"), with finite values of those kinds."""
    if not isinstance(fields, dict) or set(fields) != set(spec):
        raise ValueError(f"{who}: the checkpoint's state has fields "
                         f"{sorted(fields) if isinstance(fields, dict) else fields!r}, "
                         f"expected {sorted(spec)}")
    for name, kind in spec.items():
        value = fields[name]
        if value is None and kind == "float-or-none":
            continue
        is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        ok = is_int and value >= 0 if kind == "int" else (
            isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value))
        if not ok:
            raise ValueError(f"{who}: the checkpoint's state field {name} = {value!r} is not a "
                             f"valid {kind}")


def _finite_or_none(value):
    return float(value) if math.isfinite(value) else None


def _set_learning_rate(model, lr, epoch, who):
    # The finite check of the schedules: a rate that is NaN, infinite or negative never
    # reaches the optimizer (an exponential growth would get there in a few hundred epochs).
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"{who} gave the learning rate {lr!r} for epoch {epoch}; "
                         "it must be finite and >= 0")
    model.optimizer.lr = lr


class LearningRateSchedule(Callback):
    """Base class of the closed-form schedules: before each epoch, the optimizer's ``lr``
    becomes ``rate(base_lr, epochs_done)``.

    ``base_lr`` is the optimizer's ``lr`` when the first ``fit`` using the schedule starts
    (or the ``base_lr`` given).  The rate depends only on the epoch number, so a resumed run
    gets the rates of an uninterrupted one.
    """

    def __init__(self, base_lr=None):
        if base_lr is not None:
            base_lr = check_real(base_lr, "base_lr", 0, low_inclusive=False)
        self.base_lr = base_lr

    def rate(self, base_lr, epochs_done):
        """The learning rate for the epoch after ``epochs_done`` completed ones."""
        raise NotImplementedError

    def on_train_begin(self, logs):
        if self.base_lr is None:
            self.base_lr = float(self.model.optimizer.lr)

    def on_epoch_begin(self, epoch, logs):
        _set_learning_rate(self.model, float(self.rate(self.base_lr, epoch - 1)), epoch,
                           type(self).__name__)

    def get_state(self):
        return {"base_lr": self.base_lr}, {}

    def check_state(self, fields, arrays):
        _check_fields(type(self).__name__, fields, {"base_lr": "float"})
        if fields["base_lr"] <= 0 or arrays:
            raise ValueError(f"{type(self).__name__}: the checkpoint's state is not valid")

    def set_state(self, fields, arrays):
        self.base_lr = float(fields["base_lr"])


class StepDecay(LearningRateSchedule):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs (PyTorch's
    ``StepLR``): ``lr = base_lr * gamma ** ((epoch - 1) // step_size)``.

    Parameters
    ----------
    step_size : int
        Epochs between drops, >= 1.
    gamma : float, default 0.1
        In (0, 1].
    base_lr : float, optional
        Defaults to the optimizer's ``lr`` when training starts.

    Examples
    --------
    >>> from fastmlp.callbacks import StepDecay
    >>> [round(StepDecay(step_size=2, gamma=0.5).rate(0.1, done), 4) for done in range(5)]
    [0.1, 0.1, 0.05, 0.05, 0.025]
    """

    def __init__(self, step_size, gamma=0.1, base_lr=None):
        super().__init__(base_lr)
        self.step_size = _check_count(step_size, "step_size", 1)
        self.gamma = check_real(gamma, "gamma", 0, 1, low_inclusive=False, high_inclusive=True)

    def rate(self, base_lr, epochs_done):
        return schedules.step_decay_lr(base_lr, epochs_done, self.step_size, self.gamma)


class ExponentialDecay(LearningRateSchedule):
    """Multiply the learning rate by ``gamma`` every epoch (PyTorch's ``ExponentialLR``):
    ``lr = base_lr * gamma ** (epoch - 1)``.

    Parameters
    ----------
    gamma : float
        In (0, 1].
    base_lr : float, optional
    """

    def __init__(self, gamma, base_lr=None):
        super().__init__(base_lr)
        self.gamma = check_real(gamma, "gamma", 0, 1, low_inclusive=False, high_inclusive=True)

    def rate(self, base_lr, epochs_done):
        return schedules.exponential_decay_lr(base_lr, epochs_done, self.gamma)


class CosineAnnealing(LearningRateSchedule):
    """Half a cosine from ``base_lr`` to ``min_lr`` over ``period`` epochs, then ``min_lr``:
    ``lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * t / period)) / 2``,
    ``t = min(epoch - 1, period)``.

    Parameters
    ----------
    period : int
        Epochs to reach ``min_lr``, >= 1 (usually the number of epochs).
    min_lr : float, default 0.0
        >= 0 and below ``base_lr``.
    base_lr : float, optional
    """

    def __init__(self, period, min_lr=0.0, base_lr=None):
        super().__init__(base_lr)
        self.period = _check_count(period, "period", 1)
        self.min_lr = check_real(min_lr, "min_lr", 0)

    def on_train_begin(self, logs):
        super().on_train_begin(logs)
        if self.min_lr > self.base_lr:
            raise ValueError(f"CosineAnnealing: min_lr={self.min_lr} is above the base learning "
                             f"rate {self.base_lr}")

    def rate(self, base_lr, epochs_done):
        return schedules.cosine_annealing_lr(base_lr, self.min_lr, epochs_done, self.period)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when a metric stops improving (PyTorch's
    ``ReduceLROnPlateau`` with a relative threshold).

    Parameters
    ----------
    monitor : str, default "val_loss"
        A metric of the epoch logs (``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``).
    factor : float, default 0.1
        In (0, 1).
    patience : int, default 10
        Epochs without improvement tolerated; the rate drops on the next one.
    threshold : float, default 1e-4
        Relative improvement that counts: ``metric < best * (1 - threshold)`` when
        minimising.
    min_lr : float, default 0.0
        The rate never goes below it.
    cooldown : int, default 0
        Epochs after a drop during which no bad epochs are counted.
    mode : {"auto", "min", "max"}, default "auto"
        ``auto`` maximises metrics whose name contains ``accuracy`` and minimises the rest.

    Attributes
    ----------
    best : float
        Best value of the metric so far.
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, threshold=1e-4, min_lr=0.0,
                 cooldown=0, mode="auto"):
        self.monitor, self.minimize = _check_monitor(monitor, mode)
        self.factor = check_real(factor, "factor", 0, 1, low_inclusive=False)
        self.patience = _check_count(patience, "patience", 0)
        self.threshold = check_real(threshold, "threshold", 0)
        self.min_lr = check_real(min_lr, "min_lr", 0)
        self.cooldown = _check_count(cooldown, "cooldown", 0)
        self.reset()

    def reset(self):
        """Forget the metric's history (done at the start of every ``fit``)."""
        self.best = math.inf if self.minimize else -math.inf
        self.bad_epochs = 0
        self.cooldown_left = 0

    def on_train_begin(self, logs):
        _require_metric(self.monitor, logs, "ReduceLROnPlateau")
        self.reset()

    _STATE = {"lr": "float", "best": "float-or-none", "bad_epochs": "int", "cooldown_left": "int"}

    def get_state(self):
        return {"lr": float(self.model.optimizer.lr), "best": _finite_or_none(self.best),
                "bad_epochs": self.bad_epochs, "cooldown_left": self.cooldown_left}, {}

    def check_state(self, fields, arrays):
        _check_fields("ReduceLROnPlateau", fields, self._STATE)
        if fields["lr"] < 0 or arrays:
            raise ValueError("ReduceLROnPlateau: the checkpoint's state is not valid")

    def set_state(self, fields, arrays):
        # The rate it had lowered comes back too: the optimizer's own lr is the script's.
        self.model.optimizer.lr = float(fields["lr"])
        self.best = fields["best"] if fields["best"] is not None else (
            math.inf if self.minimize else -math.inf)
        self.bad_epochs = fields["bad_epochs"]
        self.cooldown_left = fields["cooldown_left"]

    def on_epoch_end(self, epoch, logs):
        lr, self.best, self.bad_epochs, self.cooldown_left = schedules.plateau_update(
            float(logs[self.monitor]), float(self.model.optimizer.lr), self.best, self.bad_epochs,
            self.cooldown_left, self.minimize, self.factor, self.patience, self.threshold,
            self.min_lr, self.cooldown)
        _set_learning_rate(self.model, lr, epoch, "ReduceLROnPlateau")


class _RestoresBestParams(Callback):
    """What EarlyStopping and ToleranceStopping share: put back the parameters of the best
    epoch (kept in ``_best_params``) however training ends."""

    def on_train_end(self, logs):
        if self._best_params is not None and self.best_epoch is not None:
            np.copyto(self.model.params, self._best_params)
            self.restored_epoch = self.best_epoch
        self._best_params = None


class EarlyStopping(_RestoresBestParams):
    """Stop training when a metric has stopped improving, and keep the best weights.

    Parameters
    ----------
    monitor : str, default "val_loss"
    min_delta : float, default 0.0
        An epoch improves when it beats the best so far by more than ``min_delta``.
    patience : int, default 0
        Stop after this many consecutive epochs without improvement (at the first one
        when 0, as in Keras).
    mode : {"auto", "min", "max"}, default "auto"
        ``auto`` maximises metrics whose name contains ``accuracy``.
    restore_best_weights : bool, default True
        When training ends, for whatever reason (this callback stopped it, the epochs ran
        out, another callback stopped it, or an exception such as
        :class:`~fastmlp.DivergenceError` ended it), put back the parameters of the best
        epoch.  Unlike Keras, whose default is False and which restores only when it
        stopped the run.  Only the parameters are restored, not the optimizer's state.

    Attributes
    ----------
    best : float
        Best value of the metric.
    best_epoch : int or None
        Epoch that reached it.
    stopped_epoch : int or None
        Epoch after which this callback stopped training (None if it did not).
    restored_epoch : int or None
        Epoch whose weights were restored at the end (None if none were).
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto",
                 restore_best_weights=True):
        self.monitor, self.minimize = _check_monitor(monitor, mode)
        self.min_delta = check_real(min_delta, "min_delta", 0)
        self.patience = _check_count(patience, "patience", 0)
        if not isinstance(restore_best_weights, (bool, np.bool_)):
            raise ValueError(f"restore_best_weights must be True or False, got {restore_best_weights!r}")
        self.restore_best_weights = bool(restore_best_weights)
        self._best_params = None

    def on_train_begin(self, logs):
        _require_metric(self.monitor, logs, "EarlyStopping")
        self.best = math.inf if self.minimize else -math.inf
        self.best_epoch = None
        self.stopped_epoch = None
        self.restored_epoch = None
        self._wait = 0
        if self.restore_best_weights:
            # One copy of the parameters, allocated once per fit.
            self._best_params = np.empty_like(self.model.params)

    def on_epoch_end(self, epoch, logs):
        value = float(logs[self.monitor])
        improved = (value < self.best - self.min_delta if self.minimize
                    else value > self.best + self.min_delta)
        if improved:
            self.best = value
            self.best_epoch = epoch
            self._wait = 0
            if self._best_params is not None:
                np.copyto(self._best_params, self.model.params)
            return
        self._wait += 1
        if self._wait >= max(self.patience, 1):
            self.stopped_epoch = epoch
            self.model.stop_training = True

    _STATE = {"best": "float-or-none", "best_epoch": "int", "wait": "int", "stopped_epoch": "int"}

    def get_state(self):
        arrays = {}
        if self._best_params is not None and self.best_epoch is not None:
            arrays["best_params"] = self._best_params
        return {"best": _finite_or_none(self.best), "best_epoch": self.best_epoch or 0,
                "wait": self._wait, "stopped_epoch": self.stopped_epoch or 0}, arrays

    def check_state(self, fields, arrays):
        _check_fields("EarlyStopping", fields, self._STATE)
        has_best = fields["best_epoch"] > 0
        wanted = {"best_params"} if has_best and self.restore_best_weights else set()
        if set(arrays) != wanted or (has_best and fields["best"] is None):
            raise ValueError("EarlyStopping: the checkpoint's state does not match this "
                             f"EarlyStopping(restore_best_weights={self.restore_best_weights})")

    def set_state(self, fields, arrays):
        if fields["best_epoch"]:
            self.best = fields["best"]
            self.best_epoch = fields["best_epoch"]
        self._wait = fields["wait"]
        self.stopped_epoch = fields["stopped_epoch"] or None
        if "best_params" in arrays:
            np.copyto(self._best_params, arrays["best_params"])



class ToleranceStopping(_RestoresBestParams):
    """scikit-learn's MLP stopping rule (its ``tol`` and ``n_iter_no_change``): stop when a
    metric has not improved by ``tol`` for more than ``n_iter_no_change`` epochs in a row.

    It differs from :class:`EarlyStopping` as scikit-learn's rule differs from Keras's: an
    epoch improves when it comes within ``tol`` of beating the best value
    (``value <= best - tol`` when minimising, ``value >= best + tol`` when maximising;
    a NaN never improves), ``best`` follows every new best value whether or not it
    improved by ``tol``, training stops once the count of epochs in a row without
    improvement *exceeds* ``n_iter_no_change``, and ``best`` and that count carry over from
    one ``fit`` to the next (as across scikit-learn's ``partial_fit`` calls) instead of
    starting afresh.

    Parameters
    ----------
    monitor : str or callable, default "loss"
        A metric of the epoch logs, or a function called with no arguments after every
        epoch that returns the value to watch (a score the loop does not compute, on rows
        of the caller's own); then ``mode`` must be ``"min"`` or ``"max"``.
    tol : float, default 1e-4
        >= 0 (``inf`` allowed, as in scikit-learn).
    n_iter_no_change : int, default 10
        >= 1.
    mode : {"auto", "min", "max"}, default "auto"
        ``auto`` maximises metrics whose name contains ``accuracy``.
    restore_best_weights : bool, default False
        When training ends, for whatever reason (as :class:`EarlyStopping`'s), put back
        the parameters of the epoch of this ``fit`` that set ``best``, if any did.
    best : float, optional
        The best value before the first epoch (default: none yet, ``inf`` when minimising,
        ``-inf`` when maximising).  Not NaN, nor the other infinity.
    no_improvement_count : int, default 0
        Epochs in a row without improvement before the first epoch.

    Attributes
    ----------
    best, no_improvement_count
        As the last epoch left them.
    best_epoch : int or None
        The epoch of the current ``fit`` that set ``best``.
    stopped_epoch : int or None
        The epoch after which this callback stopped training (None if it did not).
    restored_epoch : int or None
        The epoch whose parameters were restored at the end (None if none were).
    """

    def __init__(self, monitor="loss", tol=1e-4, n_iter_no_change=10, mode="auto",
                 restore_best_weights=False, best=None, no_improvement_count=0):
        if callable(monitor):
            if mode not in ("min", "max"):
                raise ValueError(f"mode must be 'min' or 'max' with a callable monitor, got {mode!r}")
            self.monitor, self.minimize = monitor, mode == "min"
        else:
            self.monitor, self.minimize = _check_monitor(monitor, mode)
        if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, numbers.Real) or not tol >= 0:
            raise ValueError(f"tol must be a number >= 0, got {tol!r}")  # inf too, as there
        self.tol = float(tol)
        self.n_iter_no_change = _check_count(n_iter_no_change, "n_iter_no_change", 1)
        if not isinstance(restore_best_weights, (bool, np.bool_)):
            raise ValueError(f"restore_best_weights must be True or False, got {restore_best_weights!r}")
        self.restore_best_weights = bool(restore_best_weights)
        none_yet = math.inf if self.minimize else -math.inf
        # A NaN, or the infinity no value can beat, would make a rule that a checkpoint
        # cannot keep (it stores a finite best or none), so a resumed run would differ.
        if best is not None and (isinstance(best, (bool, np.bool_))
                                 or not isinstance(best, numbers.Real)
                                 or math.isnan(best) or best == -none_yet):
            raise ValueError(f"best must be a number, or {none_yet} for none yet, when "
                             f"{'minimising' if self.minimize else 'maximising'}; got {best!r}")
        self.best = none_yet if best is None else float(best)
        self.no_improvement_count = _check_count(no_improvement_count, "no_improvement_count", 0)
        self.best_epoch = self.stopped_epoch = self.restored_epoch = None
        self._best_params = None

    def on_train_begin(self, logs):
        if not callable(self.monitor):
            _require_metric(self.monitor, logs, "ToleranceStopping")
        self.best_epoch = self.stopped_epoch = self.restored_epoch = None
        if self.restore_best_weights:
            self._best_params = np.empty_like(self.model.params)  # one copy per fit

    def on_epoch_end(self, epoch, logs):
        value = float(self.monitor() if callable(self.monitor) else logs[self.monitor])
        # Written as scikit-learn writes the two rules (`loss > best - tol` and
        # `score < best + tol` count against), negated, and so that a NaN never improves;
        # tol=inf (best -/+ tol is NaN at first, which both comparisons call False, so the
        # first epoch improves) then runs as it does there.  `value >= best + tol` would
        # count that first epoch against when maximising.
        if self.minimize:
            improved, better = not value > self.best - self.tol and value == value, value < self.best
        else:
            improved, better = not value < self.best + self.tol and value == value, value > self.best
        self.no_improvement_count = 0 if improved else self.no_improvement_count + 1
        if better:
            self.best, self.best_epoch = value, epoch
            if self._best_params is not None:
                np.copyto(self._best_params, self.model.params)
        if self.no_improvement_count > self.n_iter_no_change:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    _STATE = {"best": "float-or-none", "best_epoch": "int", "no_improvement_count": "int",
              "stopped_epoch": "int"}

    def get_state(self):
        arrays = {}
        if self._best_params is not None and self.best_epoch is not None:
            arrays["best_params"] = self._best_params
        return {"best": _finite_or_none(self.best), "best_epoch": self.best_epoch or 0,
                "no_improvement_count": self.no_improvement_count,
                "stopped_epoch": self.stopped_epoch or 0}, arrays

    def check_state(self, fields, arrays):
        _check_fields("ToleranceStopping", fields, self._STATE)
        wanted = ({"best_params"} if fields["best_epoch"] > 0 and self.restore_best_weights
                  else set())
        if set(arrays) != wanted:
            raise ValueError("ToleranceStopping: the checkpoint's state does not match this "
                             f"ToleranceStopping(restore_best_weights={self.restore_best_weights})")

    def set_state(self, fields, arrays):
        self.best = fields["best"] if fields["best"] is not None else (
            math.inf if self.minimize else -math.inf)
        self.best_epoch = fields["best_epoch"] or None
        self.no_improvement_count = fields["no_improvement_count"]
        self.stopped_epoch = fields["stopped_epoch"] or None
        if "best_params" in arrays:
            np.copyto(self._best_params, arrays["best_params"])



class CSVLogger(Callback):
    """Write one row per epoch to a CSV file: the epoch number and every metric of the
    History (Keras's ``CSVLogger``).

    The first row is the header, ``epoch`` then the metric names in alphabetical order
    (``accuracy, loss, lr, val_accuracy, val_loss``, as Keras orders them); epochs are
    numbered from 1, as in :attr:`History.epoch <fastmlp.History.epoch>`.  Each row is
    flushed and fsynced when its epoch ends, so a process killed later loses no row
    already written; a row cut short by a kill is dropped by the next run that appends.

    Parameters
    ----------
    filename : str or os.PathLike
    separator : str, default ","
        A single character between the fields.
    append : bool, default False
        False: the file is overwritten when the first epoch begins (a fit refused before
        that, by bad arguments or another callback, leaves it as it was; a file that does
        not exist is created when training begins).  True: rows are added to what
        the file holds (a header is written only if it is empty); its header must then
        name the same columns.  With ``fit(..., checkpoint=..., resume=True)`` the rows of
        epochs past the checkpoint's (those a killed run logged after its last checkpoint,
        or all of them when there was no checkpoint yet and the run starts afresh) are
        removed first, so that after any number of kills and resumes the file holds each
        epoch exactly once.

    Notes
    -----
    It keeps no state in checkpoints, so it may be added to or left out of a resumed run.
    Under ``fit(comm=...)`` give it on one rank only (rank 0): every rank sees the same logs.

    Raises
    ------
    OSError
        From :meth:`on_train_begin` (before any parameter changes) when the file cannot be
        opened, and from :meth:`on_epoch_end` when a row cannot be written (a full disk):
        the message names the file, and the half-written row is removed.
    ValueError
        From :meth:`on_train_begin`, when ``append=True`` and the file's header names other
        columns, or a row's epoch is not a number (then the file is left as it was).

    Examples
    --------
    >>> from fastmlp.callbacks import CSVLogger
    >>> logger = CSVLogger("training.csv", append=True)
    """

    def __init__(self, filename, separator=",", append=False):
        from fastmlp.io import check_path

        self.filename = check_path(filename, "filename")
        if not isinstance(separator, str) or len(separator) != 1 or separator in "\r\n\"":
            raise ValueError(f"separator must be one character other than a quote or a line "
                             f"break, got {separator!r}")
        if not isinstance(append, (bool, np.bool_)):
            raise ValueError(f"append must be True or False, got {append!r}")
        self.separator = separator
        self.append = bool(append)
        self.columns = None
        self._kept = None
        self._fd = None

    def _line(self, fields):
        import csv
        import io as text_io

        buffer = text_io.StringIO()
        csv.writer(buffer, delimiter=self.separator, lineterminator="\n").writerow(fields)
        return buffer.getvalue().encode("utf-8")

    def _kept_bytes(self, data, resume, initial_epoch):
        """How many leading bytes of the existing file to keep: whole lines only, and with
        ``resume`` only rows of epochs up to ``initial_epoch``; None when nothing is kept."""
        import csv

        lines = data.split(b"\n")
        # The last piece is empty after a final newline, else a row cut short by a kill.
        complete = lines[:-1]
        if not complete:
            return None
        header = self._line(self.columns)[:-1]
        if complete[0].rstrip(b"\r") != header:
            raise ValueError(f"CSVLogger: {self.filename} has the header "
                             f"{complete[0][:200].decode('utf-8', 'replace')!r}, but this fit "
                             f"logs {header.decode()!r}; log to another file, or pass "
                             "append=False to overwrite it")
        kept = len(complete[0]) + 1
        for number, line in enumerate(complete[1:], start=2):
            if not line.strip():
                kept += len(line) + 1
                continue
            try:
                first = next(csv.reader([line.decode("utf-8")], delimiter=self.separator))[0]
                epoch = int(first)
            except (UnicodeDecodeError, ValueError, IndexError, StopIteration):
                raise ValueError(f"CSVLogger: line {number} of {self.filename} does not start "
                                 "with an epoch number; it was not written by CSVLogger (pass "
                                 "append=False to overwrite it)") from None
            if resume and epoch > initial_epoch:
                break
            kept += len(line) + 1
        return kept

    def _open(self, action):
        from fastmlp.atomicfile import describe_os_error

        try:
            # Never O_TRUNC here: what is cut, and when, is decided below.
            return os.open(self.filename, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0),
                           0o666)
        except OSError as exc:
            raise describe_os_error(exc, os.path.abspath(self.filename), action) from exc

    def on_train_begin(self, logs):
        # Only checks: a later callback may still refuse the fit (and then no on_train_end
        # follows), so the file is neither cut nor held open until the first epoch begins.
        self.columns = ["epoch"] + sorted(logs["metrics"])
        self._kept = None  # bytes of the file to keep; None: rewrite it from the header on
        fd = self._open("open the CSV log")
        try:
            if self.append:
                with open(fd, "rb", closefd=False) as f:
                    data = f.read()
                self._kept = self._kept_bytes(data, logs.get("resume", False),
                                              logs.get("initial_epoch", 0))
        finally:
            os.close(fd)

    def on_epoch_begin(self, epoch, logs):
        if self._fd is not None:
            return
        fd = self._open("open the CSV log")
        try:
            if os.fstat(fd).st_size != (self._kept or 0):
                os.ftruncate(fd, self._kept or 0)
            os.lseek(fd, 0, os.SEEK_END)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if self._kept is None:
            self._write(self._line(self.columns))

    def _write(self, data):
        from fastmlp.atomicfile import RawWriter, describe_os_error

        fd = self._fd
        before = os.lseek(fd, 0, os.SEEK_END)
        try:
            RawWriter(fd).write(data)
            os.fsync(fd)
        except OSError as exc:
            try:  # no half-written row: the file keeps the rows before this one
                os.ftruncate(fd, before)
            except OSError:
                pass
            raise describe_os_error(exc, os.path.abspath(self.filename),
                                    "write the CSV log") from exc

    def on_epoch_end(self, epoch, logs):
        if self._fd is None:  # hooks called by hand, without on_epoch_begin
            self.on_epoch_begin(epoch, logs)
        self._write(self._line([epoch] + [logs.get(name, "") for name in self.columns[1:]]))

    def on_train_end(self, logs):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
