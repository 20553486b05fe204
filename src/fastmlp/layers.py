"""Layer specifications: sizes, activation and how their weights are initialised.

A layer holds no arrays of its own until a :class:`~fastmlp.Sequential` model builds it;
from then on ``layer.W`` and ``layer.b`` are views into the model's flat parameter vector
(writing to them changes the model).
"""

import copy
import math

import numpy as np

from fastmlp._validation import check_positive_int
from fastmlp.kernels.activations import ACTIVATIONS, ELU, LEAKY_RELU, RELU

_RELU_FAMILY = (RELU, LEAKY_RELU, ELU)


class Layer:
    """Common part of :class:`Dense` and :class:`Maxout` (not meant to be used alone)."""

    pieces = 1
    activation = "identity"
    activation_code = 0
    activation_param = 0.0

    def __init__(self, n_in, n_out):
        self.n_in = check_positive_int(n_in, "n_in")
        self.n_out = check_positive_int(n_out, "n_out")
        self.W = None
        self.b = None

    @property
    def weight_shape(self):
        """Shape of ``W``: ``(n_in, pieces * n_out)``."""
        return (self.n_in, self.pieces * self.n_out)

    @property
    def bias_shape(self):
        """Shape of ``b``: ``(pieces * n_out,)``."""
        return (self.pieces * self.n_out,)

    def init_weights(self, rng, dtype):
        """Fresh ``(W, b)``: He normal for the ReLU family, Glorot uniform otherwise; zero bias."""
        if self.activation_code in _RELU_FAMILY:
            W = rng.standard_normal(self.weight_shape) * math.sqrt(2.0 / self.n_in)
        else:
            limit = math.sqrt(6.0 / (self.n_in + self.n_out))
            W = rng.uniform(-limit, limit, self.weight_shape)
        return W.astype(dtype), np.zeros(self.bias_shape, dtype=dtype)

    def unbuilt_copy(self):
        """The same layer specification, not attached to any model."""
        twin = copy.copy(self)
        twin.W = twin.b = None
        return twin

    def _describe(self):
        return f"{self.n_in}, {self.n_out}"

    def __repr__(self):
        return f"{type(self).__name__}({self._describe()})"


class Dense(Layer):
    """Fully connected layer ``a = f(x @ W + b)``.

    Parameters
    ----------
    n_in, n_out : int
        Input and output widths; ``W`` has shape ``(n_in, n_out)``, ``b`` shape ``(n_out,)``.
    activation : str
        One of ``identity`` (the default: a linear layer, e.g. the output layer),
        ``sigmoid``, ``tanh``, ``relu``, ``leaky_relu``, ``elu``.

    Other Parameters
    ----------------
    negative_slope : float, optional
        Leaky ReLU only: ``f(z) = max(negative_slope * z, z)``, in ``[0, 1]``; default 0.01.
    alpha : float, optional
        ELU only: ``f(z) = alpha * (exp(z) - 1)`` for ``z <= 0``, ``alpha > 0``; default 1.0.

    Examples
    --------
    >>> Dense(64, 128, activation="leaky_relu", negative_slope=0.1)
    Dense(64, 128, activation='leaky_relu', negative_slope=0.1)
    """

    def __init__(self, n_in, n_out, activation="identity", **activation_params):
        super().__init__(n_in, n_out)
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; valid names: {', '.join(ACTIVATIONS)}")
        code, param_name, default = ACTIVATIONS[activation]
        unexpected = set(activation_params) - {param_name}
        if unexpected:
            allowed = f"its only parameter is {param_name!r}" if param_name else "it takes no parameters"
            raise TypeError(f"activation {activation!r} got unexpected parameter(s) "
                            f"{sorted(unexpected)}; {allowed}")
        param = float(activation_params.get(param_name, default)) if param_name else 0.0
        if code == LEAKY_RELU and not 0.0 <= param <= 1.0:
            # The backward pass reads the derivative off the output's sign, which needs slope >= 0.
            raise ValueError(f"negative_slope must be in [0, 1], got {param!r}")
        if code == ELU and not (param > 0.0 and math.isfinite(param)):
            raise ValueError(f"alpha must be a positive finite number, got {param!r}")
        self.activation = activation
        self.activation_code = code
        self.activation_param = param
        self._param_name = param_name

    def _describe(self):
        text = f"{self.n_in}, {self.n_out}, activation={self.activation!r}"
        if self._param_name:
            text += f", {self._param_name}={self.activation_param!r}"
        return text


class Maxout(Layer):
    """Maxout layer ``a_j = max_k (x @ W_k + b_k)_j`` over ``pieces`` linear maps.

    Parameters
    ----------
    n_in, n_out : int
    pieces : int, default 2
        Number of linear pieces per output unit.

    Notes
    -----
    Weight layout: ``W`` has shape ``(n_in, pieces * n_out)`` and ``b`` shape
    ``(pieces * n_out,)``; piece ``k`` owns columns ``k * n_out : (k + 1) * n_out``, i.e.
    ``W.reshape(n_in, pieces, n_out)[:, k, :]`` and ``b.reshape(pieces, n_out)[k]``.
    """

    def __init__(self, n_in, n_out, pieces=2):
        super().__init__(n_in, n_out)
        self.pieces = check_positive_int(pieces, "pieces")
        if self.pieces < 2:
            raise ValueError(f"maxout needs at least 2 pieces, got {pieces!r}")
        self.activation = "maxout"

    def _describe(self):
        return f"{self.n_in}, {self.n_out}, pieces={self.pieces}"
