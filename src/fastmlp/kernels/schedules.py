"""Learning-rate schedules: the learning rate for an epoch, as scalar kernels.

Each closed-form schedule is a pure function of the base rate and the number of epochs
already done, so a run resumed from a checkpoint gets the same rates as one that never
stopped.  Reduce-on-plateau depends on the metric's history; its kernel is one transition
of that state machine, and the caller keeps the state.

All arithmetic is in float64 whatever the model's dtype; the optimizer casts the result.
"""

import math

from numba import njit

from fastmlp.config import JIT_OPTIONS

#: A reduction smaller than this is not a reduction (PyTorch's ``ReduceLROnPlateau.eps``).
PLATEAU_MIN_CHANGE = 1e-8


@njit(**JIT_OPTIONS)
def step_decay_lr(base_lr, epochs_done, step_size, gamma):
    """``base_lr * gamma ** (epochs_done // step_size)``: drop by ``gamma`` every
    ``step_size`` epochs (PyTorch's ``StepLR``).

    Parameters
    ----------
    base_lr : float
    epochs_done : int
        Epochs completed before the one the rate is for (0 for the first epoch).
    step_size : int
        >= 1.
    gamma : float

    Returns
    -------
    float
    """
    return base_lr * gamma ** (epochs_done // step_size)


@njit(**JIT_OPTIONS)
def exponential_decay_lr(base_lr, epochs_done, gamma):
    """``base_lr * gamma ** epochs_done`` (PyTorch's ``ExponentialLR``).

    Parameters
    ----------
    base_lr : float
    epochs_done : int
    gamma : float

    Returns
    -------
    float
    """
    return base_lr * gamma ** epochs_done


@njit(**JIT_OPTIONS)
def cosine_annealing_lr(base_lr, min_lr, epochs_done, period):
    """Half a cosine from ``base_lr`` down to ``min_lr`` over ``period`` epochs, then
    ``min_lr`` (SGDR's annealing without restarts; Keras's ``CosineDecay``).

    ``min_lr + (base_lr - min_lr) * (1 + cos(pi * t / period)) / 2`` with
    ``t = min(epochs_done, period)``.

    Parameters
    ----------
    base_lr, min_lr : float
    epochs_done : int
    period : int
        >= 1.

    Returns
    -------
    float
    """
    t = min(epochs_done, period)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t / period))


@njit(**JIT_OPTIONS)
def plateau_update(metric, lr, best, bad_epochs, cooldown_left, minimize, factor, patience,
                   threshold, min_lr, cooldown):
    """One epoch of reduce-on-plateau, with PyTorch's rules (relative threshold).

    An epoch improves when ``metric < best * (1 - threshold)`` (``minimize``) or
    ``metric > best * (1 + threshold)``.  After more than ``patience`` epochs without
    improvement the rate becomes ``max(lr * factor, min_lr)`` and the count restarts;
    during the ``cooldown`` epochs after a reduction, epochs without improvement are not
    counted.

    Parameters
    ----------
    metric : float
        This epoch's value of the monitored quantity.
    lr : float
        The current learning rate.
    best : float
        Best metric so far (``inf`` for minimisation, ``-inf`` otherwise, before any).
    bad_epochs : int
        Consecutive epochs without improvement so far.
    cooldown_left : int
        Epochs of cooldown still to run.
    minimize : bool
    factor : float
        In (0, 1).
    patience, cooldown : int
        >= 0.
    threshold, min_lr : float
        >= 0.

    Returns
    -------
    (float, float, int, int)
        The new ``(lr, best, bad_epochs, cooldown_left)``.
    """
    improved = metric < best * (1.0 - threshold) if minimize else metric > best * (1.0 + threshold)
    if improved:
        best = metric
        bad_epochs = 0
    else:
        bad_epochs += 1
    if cooldown_left > 0:
        cooldown_left -= 1
        bad_epochs = 0
    if bad_epochs > patience:
        reduced = max(lr * factor, min_lr)
        if lr - reduced > PLATEAU_MIN_CHANGE:
            lr = reduced
        cooldown_left = cooldown
        bad_epochs = 0
    return lr, best, bad_epochs, cooldown_left
