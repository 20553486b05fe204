"""Loss objects: a loss with its parameters, accepted wherever a loss name is.

``Sequential(loss=...)``, the scikit-learn estimators and ``fastmlp train --loss`` take either
a name (``"huber"`` means ``Huber()``) or one of these objects.  The numerics are kernels
(:mod:`fastmlp.kernels.losses`); an object carries the kernel code and its parameters.

Every loss is a mean: over rows for the classification losses that read class labels
(:class:`SoftmaxCrossEntropy`, :class:`MulticlassHinge`), over all ``rows * outputs``
elements for the others (:class:`BinaryCrossEntropy`, :class:`MSE`, :class:`Huber`,
:class:`L1`), as PyTorch's ``reduction="mean"``.  Sample weights multiply each row's loss
and the result keeps that divisor (Keras's convention, see :meth:`Sequential.fit
<fastmlp.Sequential.fit>`).
"""

import math
import numbers

import numpy as np

from fastmlp.kernels import losses as _kernels

__all__ = ["Loss", "SoftmaxCrossEntropy", "MulticlassHinge", "BinaryCrossEntropy", "MSE",
           "Huber", "L1", "get"]


def _check_param(value, name, low, high, high_inclusive):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not (value >= low and (value <= high if high_inclusive else value < high)):
        hi = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{hi}, got {value!r}")
    return float(value)


class Loss:
    """Base class: ``name`` (the loss's name, as in ``LOSSES``), ``code`` (the kernel's),
    ``uses_labels`` (integer class labels, not targets) and :meth:`params`."""

    name = None
    code = -1
    uses_labels = False

    def params(self):
        """The loss's parameters as a dict (what the file format saves); ``{}`` for none."""
        return {}

    def kernel_params(self):
        """The parameters as the kernels read them: a float64 vector, or None when the loss
        runs the default kernels (the four first losses at their defaults compile nothing
        more than they did before loss objects existed)."""
        return None

    def __eq__(self, other):
        return type(other) is type(self) and other.params() == self.params()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self.params().items()))))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


class SoftmaxCrossEntropy(Loss):
    """Softmax cross-entropy on integer class labels, as ``torch.nn.CrossEntropyLoss``.

    Parameters
    ----------
    label_smoothing : float, default 0.0
        In ``[0, 1)``.  The target becomes ``(1 - e) one_hot(y) + e / n_classes``, so the
        per-row loss is ``(1 - e) (logsumexp(s) - s_y) + e (logsumexp(s) - mean_j s_j)``,
        PyTorch's ``label_smoothing`` exactly.
    """

    name = "softmax_cross_entropy"
    code = _kernels.SOFTMAX_CROSS_ENTROPY
    uses_labels = True

    def __init__(self, label_smoothing=0.0):
        self.label_smoothing = _check_param(label_smoothing, "label_smoothing", 0.0, 1.0, False)

    def params(self):
        return {"label_smoothing": self.label_smoothing}

    def kernel_params(self):
        if self.label_smoothing == 0.0:
            return None
        values = np.zeros(1)
        values[_kernels.LABEL_SMOOTHING] = self.label_smoothing
        return values


class MulticlassHinge(Loss):
    """Multiclass hinge (Weston-Watkins SVM) on integer class labels:
    ``sum_{j != y} max(0, s_j - s_y + 1)`` per row, mean over rows."""

    name = "multiclass_hinge"
    code = _kernels.MULTICLASS_HINGE
    uses_labels = True


class BinaryCrossEntropy(Loss):
    """Sigmoid plus binary cross-entropy on 0/1 targets, one per output, as
    ``torch.nn.BCEWithLogitsLoss`` (mean over elements)."""

    name = "binary_cross_entropy"
    code = _kernels.BINARY_CROSS_ENTROPY


class MSE(Loss):
    """Mean squared error ``(s - t)**2``, mean over elements, as ``torch.nn.MSELoss``."""

    name = "mse"
    code = _kernels.MSE


class Huber(Loss):
    """Huber loss, as ``torch.nn.HuberLoss(delta=delta)`` (mean over elements).

    Per element, with ``d = s - t``: ``d**2 / 2`` where ``|d| <= delta``, else
    ``delta * (|d| - delta / 2)``; its gradient is ``d`` clipped to ``[-delta, delta]``.

    Parameters
    ----------
    delta : float, default 1.0
        Where the loss turns from quadratic to linear; finite and > 0.
    """

    name = "huber"
    code = _kernels.HUBER

    def __init__(self, delta=1.0):
        delta = _check_param(delta, "delta", 0.0, math.inf, False)
        if delta == 0.0:
            raise ValueError("delta must be > 0, got 0.0 (PyTorch's HuberLoss needs delta > 0)")
        self.delta = delta

    def params(self):
        return {"delta": self.delta}

    def kernel_params(self):
        values = np.zeros(1)
        values[_kernels.HUBER_DELTA] = self.delta
        return values


class L1(Loss):
    """Mean absolute error ``|s - t|``, mean over elements, as ``torch.nn.L1Loss``; the
    gradient at ``s == t`` is 0 (PyTorch's ``sign``)."""

    name = "l1"
    code = _kernels.L1

    def kernel_params(self):
        return np.zeros(0)


#: name -> class; the name alone gives the defaults.
_BY_NAME = {cls.name: cls for cls in (SoftmaxCrossEntropy, MulticlassHinge, BinaryCrossEntropy,
                                      MSE, Huber, L1)}
assert set(_BY_NAME) == set(_kernels.LOSSES)


def get(loss, params=None):
    """The :class:`Loss` that ``loss`` names (a name, or a :class:`Loss` returned as is).

    Parameters
    ----------
    loss : str or Loss
    params : dict, optional
        Keyword arguments for the class a name gives (the file format's ``loss_params``).

    Raises
    ------
    ValueError
        For an unknown name or a bad parameter value.
    TypeError
        For anything else, or parameters the loss does not take.
    """
    if isinstance(loss, Loss):
        if params:
            raise TypeError("params go with a loss name, not with a Loss object")
        if type(loss) not in _BY_NAME.values():
            raise TypeError(f"unknown loss class {type(loss).__name__}; use one of "
                            f"{', '.join(c.__name__ for c in _BY_NAME.values())}")
        return loss
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a name or a fastmlp.losses object, got {loss!r}")
    if loss not in _BY_NAME:
        raise ValueError(f"unknown loss {loss!r}; valid names: {', '.join(_BY_NAME)}")
    cls = _BY_NAME[loss]
    try:
        return cls(**(params or {}))
    except TypeError:
        raise TypeError(f"loss {loss!r} got unexpected parameters {sorted(params)}") from None
