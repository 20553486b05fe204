"""The rows a fit trains (or validates) on, as one object."""

import numbers

import numpy as np


class Rows:
    """Features, labels or targets, and per-row loss weights of one set of rows.

    Built by :meth:`Sequential.rows <fastmlp.Sequential.rows>`, which validates and
    converts what the user gave.  The compiled drivers take labels, targets and weights as
    three arrays whatever the loss; the ones a loss does not read are empty stand-ins (zero
    rows), so one signature serves every loss.

    Attributes
    ----------
    X : ndarray of shape (n, n_features)
        C-contiguous, of the model's dtype.
    labels : ndarray of int64, shape (n,) or (0,)
        Class labels, for the label losses; else the empty stand-in.
    targets : ndarray of shape (n, n_outputs) or (0, n_outputs)
        Targets, for ``binary_cross_entropy`` and ``mse``; else the empty stand-in.
    weights : ndarray of shape (n,) or (0,)
        Per-row loss weights of the model's dtype; ``(0,)`` means every row weighs 1.
    """

    __slots__ = ("X", "labels", "targets", "weights")

    def __init__(self, X, labels, targets, weights):
        self.X, self.labels, self.targets, self.weights = X, labels, targets, weights

    @property
    def n(self):
        """Number of rows."""
        return self.X.shape[0]

    @property
    def y(self):
        """The labels or the targets, whichever the loss reads (``(n,)`` or ``(n, n_outputs)``)."""
        return self.labels if self.labels.shape[0] == self.n else self.targets

    @property
    def has_weights(self):
        return self.weights.shape[0] > 0

    def with_weights(self, weights):
        """The same rows with ``weights`` (``(n,)`` of the model's dtype, or an empty stand-in)."""
        return Rows(self.X, self.labels, self.targets, weights)

    def take(self, start, stop):
        """Rows ``start:stop`` as views (stand-ins stay stand-ins)."""
        def part(a):
            return a[start:stop] if a.shape[0] else a

        return Rows(self.X[start:stop], part(self.labels), part(self.targets), part(self.weights))

    def split(self, fraction):
        """``(train, held_out)``: the last ``fraction`` of the rows held out, as given (before
        any shuffle, as Keras's ``validation_split``).  The held-out rows carry no weights:
        the validation loss is not weighted.

        Raises
        ------
        ValueError
            ``fraction`` not in [0, 1), or a side left without rows.
        """
        if isinstance(fraction, (bool, np.bool_)) or not isinstance(fraction, numbers.Real) \
                or not 0 <= fraction < 1:
            raise ValueError(f"validation_split must be a number in [0, 1), got {fraction!r}")
        if fraction == 0:
            return self, None
        n = self.n
        n_train = int(n * (1 - fraction))
        if n_train < 1 or n_train == n:
            raise ValueError(f"validation_split={fraction} of {n} rows leaves "
                             f"{n_train} for training and {n - n_train} for validation; "
                             "both need at least one")
        held = self.take(n_train, n)
        return self.take(0, n_train), held.with_weights(self.weights[:0])
