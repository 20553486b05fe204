"""Optimizer objects: hyperparameters and state.  The update itself is a kernel
(:mod:`fastmlp.kernels.optim`); a model hands its flat parameter and gradient vectors to it."""

import math

import numpy as np

from fastmlp._validation import check_real
from fastmlp.kernels import optim


def _cast_checked(values, dtype, names):
    """``values`` as a ``dtype`` vector; a value too large for ``dtype`` is an error, not Inf."""
    with np.errstate(over="ignore"):
        cast = np.array(values, dtype=dtype)
    for name, value, got in zip(names, values, cast):
        if not np.isfinite(got):
            raise ValueError(f"{name}={value!r} overflows {np.dtype(dtype).name}")
    return cast


def _check_clip(value, name):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be None or a positive finite number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be None or a positive finite number, got {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be None or a positive finite number, got {value!r}")
    return number


class Optimizer:
    """Base class.  Subclasses define ``kind`` (the kernel code), ``n_slots`` (state buffers
    per parameter) and ``hyperparameters()`` (the float vector the kernel reads).

    Every optimizer clips gradients when asked, before its update sees them (and after the
    all-reduce under MPI), as PyTorch's utilities do:

    ``clip_norm`` : float or None
        The whole network's gradient, one global L2 norm over all parameters, is scaled by
        ``clip_norm / (norm + 1e-6)`` when that is below 1 (``torch.nn.utils.clip_grad_norm_``);
        the norm is summed in float64.
    ``clip_value`` : float or None
        Every gradient element is clamped to ``[-clip_value, clip_value]``
        (``torch.nn.utils.clip_grad_value_``), after the norm clipping when both are set.

    With either set, ``fit``'s :class:`~fastmlp.History` records ``"grad_norm"``, the mean
    over the epoch's steps of the norm before clipping.
    """

    kind = -1
    n_slots = 0
    hyperparameter_names = ()
    clip_names = ("clip_norm", "clip_value")

    def __init__(self, clip_norm=None, clip_value=None):
        self.state = None  # (n_slots, n_params) buffers, created by bind()
        self.step_count = 0  # updates applied so far
        self._owner = None
        self.clip_norm, self.clip_value = clip_norm, clip_value
        self._checked_clip()

    def _checked_clip(self):
        return _check_clip(self.clip_norm, "clip_norm"), _check_clip(self.clip_value, "clip_value")

    @property
    def clips(self):
        """True when ``clip_norm`` or ``clip_value`` is set."""
        return self.clip_norm is not None or self.clip_value is not None

    def clip_vector(self):
        """The clipping settings, checked again, as ``optim.optimizer_update`` reads them:
        float64 ``[clip_norm, clip_value]`` (0 for unset), or None when neither is set."""
        clip_norm, clip_value = self._checked_clip()
        if clip_norm is None and clip_value is None:
            return None
        values = np.zeros(2)
        values[optim.CLIP_NORM] = clip_norm or 0.0
        values[optim.CLIP_VALUE] = clip_value or 0.0
        return values

    def _clip_repr(self):
        return "".join(f", {name}={getattr(self, name)!r}" for name in self.clip_names
                       if getattr(self, name) is not None)

    def bind(self, owner, n_params, dtype):
        """Allocate state for a model with ``n_params`` parameters (once per model)."""
        if self._owner is not None and self._owner is not owner:
            raise ValueError(f"this {type(self).__name__} already serves another model; "
                             "create one optimizer per model")
        self._owner = owner
        self.state = np.zeros((self.n_slots, n_params), dtype=dtype)
        self.step_count = 0

    def hyperparameters(self, dtype):
        raise NotImplementedError


class SGD(Optimizer):
    """Minibatch stochastic gradient descent with optional momentum, as in PyTorch.

    Parameters
    ----------
    lr : float, default 0.01
        Learning rate, >= 0 (0 freezes the parameters, as in PyTorch).
    momentum : float, default 0.0
        In ``[0, 1)``.  ``v = momentum * v + g``; ``W -= lr * v``.
    nesterov : bool, default False
        ``W -= lr * (g + momentum * v)``; needs ``momentum > 0``.
    weight_decay : float, default 0.0
        L2 penalty: ``weight_decay * W`` is added to the gradient of every weight matrix
        (not the biases).  It is part of the update only; the loss that fastmlp reports is
        the data loss.
    clip_norm, clip_value : float or None, default None
        Gradient clipping before the update (see :class:`Optimizer`); > 0.
    """

    kind = optim.SGD
    n_slots = 1
    hyperparameter_names = ("lr", "momentum", "nesterov", "weight_decay")

    def __init__(self, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0, clip_norm=None,
                 clip_value=None):
        super().__init__(clip_norm, clip_value)
        self.lr, self.momentum, self.nesterov, self.weight_decay = lr, momentum, nesterov, weight_decay
        self._checked()

    def _checked(self):
        lr = check_real(self.lr, "lr", 0.0, math.inf, low_inclusive=True)  # 0 freezes, as in PyTorch
        momentum = check_real(self.momentum, "momentum", 0.0, 1.0, low_inclusive=True)
        weight_decay = check_real(self.weight_decay, "weight_decay", 0.0, math.inf, low_inclusive=True)
        if not isinstance(self.nesterov, (bool, np.bool_)):
            raise ValueError(f"nesterov must be True or False, got {self.nesterov!r}")
        if self.nesterov and momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")
        return lr, momentum, bool(self.nesterov), weight_decay

    def hyperparameters(self, dtype):
        """The hyperparameters, checked again (they may have been changed since), as the
        vector ``optim.sgd_update`` reads."""
        lr, momentum, nesterov, weight_decay = self._checked()
        values = [0.0] * 4
        values[optim.SGD_LR] = lr
        values[optim.SGD_MOMENTUM] = momentum
        values[optim.SGD_NESTEROV] = float(nesterov)
        values[optim.SGD_WEIGHT_DECAY] = weight_decay
        return _cast_checked(values, dtype, self.hyperparameter_names)

    def __repr__(self):
        return (f"SGD(lr={self.lr!r}, momentum={self.momentum!r}, nesterov={self.nesterov!r}, "
                f"weight_decay={self.weight_decay!r}{self._clip_repr()})")


class Adam(Optimizer):
    """Adam, with PyTorch's update rule and defaults (bias-corrected moment estimates).

    Parameters
    ----------
    lr : float, default 0.001
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the first and second moment estimates, each in ``[0, 1)``.
    eps : float, default 1e-8
        Added to the denominator, > 0.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient of every weight matrix (not the biases).
    clip_norm, clip_value : float or None, default None
        Gradient clipping before the update (see :class:`Optimizer`); > 0.
    """

    kind = optim.ADAM
    n_slots = 2
    hyperparameter_names = ("lr", "betas", "eps", "weight_decay")
    decoupled = False

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, clip_norm=None,
                 clip_value=None):
        super().__init__(clip_norm, clip_value)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self._checked()

    def _checked(self):
        lr = check_real(self.lr, "lr", 0.0, math.inf, low_inclusive=True)  # 0 freezes, as in PyTorch
        try:
            beta1, beta2 = self.betas
        except (TypeError, ValueError):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {self.betas!r}") from None
        beta1 = check_real(beta1, "betas[0]", 0.0, 1.0, low_inclusive=True)
        beta2 = check_real(beta2, "betas[1]", 0.0, 1.0, low_inclusive=True)
        eps = check_real(self.eps, "eps", 0.0, math.inf, low_inclusive=False)
        weight_decay = check_real(self.weight_decay, "weight_decay", 0.0, math.inf, low_inclusive=True)
        return lr, beta1, beta2, eps, weight_decay

    def hyperparameters(self, dtype):
        """The hyperparameters, checked again, as the vector ``optim.adam_update`` reads."""
        lr, beta1, beta2, eps, weight_decay = self._checked()
        values = [0.0] * 6
        values[optim.ADAM_LR] = lr
        values[optim.ADAM_BETA1] = beta1
        values[optim.ADAM_BETA2] = beta2
        values[optim.ADAM_EPS] = eps
        values[optim.ADAM_WEIGHT_DECAY] = weight_decay
        values[optim.ADAM_DECOUPLED] = float(self.decoupled)
        names = ("lr", "betas[0]", "betas[1]", "eps", "weight_decay", "decoupled")
        return _cast_checked(values, dtype, names)

    def __repr__(self):
        return (f"{type(self).__name__}(lr={self.lr!r}, betas={tuple(self.betas)!r}, eps={self.eps!r}, "
                f"weight_decay={self.weight_decay!r}{self._clip_repr()})")


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay, as in PyTorch (default ``weight_decay=0.01``).

    Each step first shrinks every weight matrix, ``W *= 1 - lr * weight_decay`` (biases are
    not decayed), then applies the Adam update without the penalty in the gradient.
    """

    decoupled = True

    def __init__(self, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, clip_norm=None,
                 clip_value=None):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         clip_norm=clip_norm, clip_value=clip_value)
