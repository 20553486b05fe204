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
    """Common part of every layer (not meant to be used alone)."""

    pieces = 1
    activation = "identity"
    activation_code = 0
    activation_param = 0.0
    #: Whether the layer has parameters (``W`` and ``b``, or a layer norm's gain and bias).
    has_parameters = True
    #: Whether the model sets the width (``n_in == n_out``, that of the layer before).
    takes_width = False
    #: Names of the layer's two parameter arrays, for messages.
    parameter_names = ("W", "b")

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

    @property
    def is_built(self):
        """Whether the layer belongs to a model."""
        return self.W is not None

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
        ``sigmoid``, ``tanh``, ``relu``, ``leaky_relu``, ``elu``, ``gelu`` (the exact erf
        form, ``z * Phi(z)``) and ``silu`` (``z * sigmoid(z)``).

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


class _WidthFromModel(Layer):
    """A layer whose width is that of the layer before it (or, first in the list, the
    input width of the next layer), filled in when a model is built."""

    takes_width = True

    def __init__(self):
        self.n_in = self.n_out = None
        self.W = None
        self.b = None
        self._built = False

    def set_width(self, n):
        """Called by the model that builds this layer: ``n_in = n_out = n``."""
        self.n_in = self.n_out = n

    def mark_built(self):
        """Called by the model once this layer belongs to it."""
        self._built = True

    @property
    def is_built(self):
        return self._built

    def unbuilt_copy(self):
        twin = super().unbuilt_copy()
        twin._built = False
        return twin


class Dropout(_WidthFromModel):
    """Inverted dropout: in training, each unit is zeroed with probability ``rate`` and the
    kept ones are scaled by ``1 / (1 - rate)``; in inference it is the identity.

    A layer of its own in the list, with no parameters, as in Keras and PyTorch:
    ``Sequential([Dense(64, 128, activation="relu"), Dropout(0.5), Dense(128, 10)])``.  Its
    width is that of the layer before it (first in the list: the input, with the next
    layer's ``n_in``).  It is active in ``fit``, ``train_step`` and ``compute_gradients``,
    and the identity in ``predict``, ``predict_proba``, ``decision_function``, ``evaluate``
    and ``score``.

    The masks are not drawn from a random stream but hashed from (model seed, optimizer
    step, MPI rank, layer index, row position in the batch, unit): the same step draws the
    same mask on any number of threads and after a resume (see the user guide).

    Parameters
    ----------
    rate : float
        Probability of dropping a unit, in ``[0, 1)``.

    Examples
    --------
    >>> Dropout(0.5)
    Dropout(0.5)
    """

    has_parameters = False
    parameter_names = ()

    def __init__(self, rate):
        super().__init__()
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
            raise TypeError(f"rate must be a number in [0, 1), got {rate!r}")
        rate = float(rate)
        if not 0.0 <= rate < 1.0:  # NaN fails too
            raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
        self.rate = rate
        # Kept units are scaled by this; the mask threshold is exact in 53 bits.
        self.activation_param = 1.0 / (1.0 - rate)
        self.threshold = math.ceil(rate * 2.0 ** 53)
        self.activation = "dropout"

    @property
    def weight_shape(self):
        return None

    @property
    def bias_shape(self):
        return None

    def init_weights(self, rng, dtype):
        """No parameters: ``(None, None)``."""
        return None, None

    def _describe(self):
        return repr(self.rate)


class LayerNorm(_WidthFromModel):
    """Layer normalisation of each row over its features, as
    ``torch.nn.LayerNorm(n, eps, elementwise_affine=True)``:
    ``y = gain * (x - mean) / sqrt(var + eps) + bias`` with the biased variance.

    Its width ``n`` is that of the layer before it (first in the list: the next layer's
    ``n_in``).  The gain starts at 1 and the bias at 0; they appear in
    :meth:`~fastmlp.Sequential.get_weights` in layer order as ``gain, bias``, each of shape
    ``(n,)``, and are not weight-decayed (as biases are not).

    Parameters
    ----------
    eps : float, default 1e-5
        Added to the variance; positive and finite.

    Examples
    --------
    >>> LayerNorm()
    LayerNorm(eps=1e-05)
    """

    parameter_names = ("gain", "bias")

    def __init__(self, eps=1e-5):
        super().__init__()
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)):
            raise TypeError(f"eps must be a positive number, got {eps!r}")
        eps = float(eps)
        if not (eps > 0.0 and math.isfinite(eps)):
            raise ValueError(f"LayerNorm eps must be a positive finite number, got {eps!r}")
        self.eps = eps
        self.activation_param = eps
        self.activation = "layer_norm"

    @property
    def weight_shape(self):
        """Shape of the gain: ``(n,)``."""
        return (self.n_out,)

    @property
    def bias_shape(self):
        """Shape of the bias: ``(n,)``."""
        return (self.n_out,)

    @property
    def gain(self):
        """The gain, a view into the model's parameters (``W`` is the same array)."""
        return self.W

    @property
    def bias(self):
        """The bias, a view into the model's parameters (``b`` is the same array)."""
        return self.b

    def init_weights(self, rng, dtype):
        """Gain 1, bias 0 (draws nothing from ``rng``)."""
        return np.ones(self.n_out, dtype=dtype), np.zeros(self.n_out, dtype=dtype)

    def _describe(self):
        return f"eps={self.eps!r}"
