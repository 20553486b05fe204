"""Export a :class:`~fastmlp.Sequential` model as a standard ONNX graph.

The graph computes what the model's inference methods compute, with ONNX operators any
runtime has (ONNX Runtime, Triton's ONNX backend, OpenVINO, TensorRT):

- one ``Gemm`` per layer (``x @ W + b``: fastmlp's ``W`` already has shape ``(n_in, n_out)``,
  so no transpose), then the activation's operator (``Sigmoid``, ``Tanh``, ``Relu``,
  ``LeakyRelu``, ``Elu``; nothing for identity), ``gelu`` as ``0.5 z (1 + Erf(z / sqrt 2))``
  (opset 18 has no ``Gelu``: it arrived in opset 20; in float64 ``1 + erf`` is W. J.
  Cody's rational approximation, spelled out, since ONNX Runtime has no float64 ``Erf``) and ``silu`` as ``z Sigmoid(z)``, with
  their constants in the model's dtype;
- a maxout layer as ``Gemm -> Reshape (batch, pieces, n_out) -> ReduceMax(axis 1)``, since
  piece ``k`` owns columns ``k * n_out : (k + 1) * n_out`` of ``W``;
- a layer norm as ``LayerNormalization(axis=-1, epsilon)`` with its gain and bias, except in
  a float64 graph whose ``eps`` float32 cannot hold (the default ``1e-5``): ONNX float
  attributes are 32-bit, so there it is spelled out with a float64 ``eps`` constant;
- a dropout layer as nothing: it is the identity at inference;
- outputs ``scores`` (:meth:`~fastmlp.Sequential.decision_function`), and for the
  classification losses ``label`` (:meth:`~fastmlp.Sequential.predict`) and, where
  :meth:`~fastmlp.Sequential.predict_proba` is defined, ``probabilities``.

The opset is :data:`OPSET` (18: every ``Reduce*`` operator takes its axes as an input
there, so ``ReduceMax`` has one form for the whole graph); the graph's input is named
``input``, of shape ``(batch, n_features)`` with a dynamic ``batch``, and of the model's
dtype (float32 or float64: ``Gemm`` and every operator used here take both).

A new layer type or activation is one entry in :data:`LAYER_NODES` or
:data:`ACTIVATION_NODES`: a function ``(graph, x, layer) -> name`` that adds the layer's
nodes after the tensor named ``x`` and returns the name of its output.  ``onnx`` is
imported only when a model is exported.
"""

import os

import numpy as np

from fastmlp import __version__, io
from fastmlp.kernels.losses import BINARY_CROSS_ENTROPY, LOSSES
from fastmlp.layers import Dense, Dropout, LayerNorm, Maxout

#: The ONNX operator set the graphs use (default domain).
OPSET = 18
#: The ONNX IR version written: 8 is the oldest that carries opset 18, so older runtimes
#: (ONNX Runtime >= 1.14) load the files too.
IR_VERSION = 8

__all__ = ["ACTIVATION_NODES", "LAYER_NODES", "OPSET", "export_onnx", "to_onnx"]


class _Graph:
    """The nodes, initializers and unique names of a graph under construction."""

    def __init__(self, onnx, dtype):
        self.onnx = onnx
        self.dtype = np.dtype(dtype)
        self.nodes = []
        self.initializers = []
        self._counts = {}

    def name(self, stem):
        """``stem`` itself the first time, then ``stem_1``, ``stem_2``, ..."""
        count = self._counts.get(stem, 0)
        self._counts[stem] = count + 1
        return stem if count == 0 else f"{stem}_{count}"

    def constant(self, stem, array):
        """An initializer holding ``array`` (kept in its own dtype); returns its name."""
        name = self.name(stem)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op_type, inputs, stem=None, output=None, **attributes):
        """Add one node with one output; returns the output's name."""
        output = output or self.name(stem or op_type.lower())
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [output],
                                                     name=self.name(f"{op_type}"), **attributes))
        return output


# --------------------------------------------------------------------------- activations
def _elementwise(op_type):
    def nodes(graph, x, layer):
        return graph.node(op_type, [x])
    return nodes


def _exact_in_attribute(graph, value):
    """Whether ``value``, as the model's dtype holds it, survives an ONNX float attribute
    (which is always 32-bit)."""
    return float(np.float32(value)) == float(graph.dtype.type(value))


def _leaky_relu(graph, x, layer):
    slope = layer.activation_param
    if _exact_in_attribute(graph, slope):
        return graph.node("LeakyRelu", [x], alpha=float(slope))
    # A float64 model whose slope float32 cannot hold (0.01, the default): the attribute
    # would change the slope by up to 3e-8 relative.  Dense keeps 0 <= slope <= 1, so
    # max(z, slope * z) is leaky ReLU exactly (rounding is monotonic: |fl(s z)| <= |z|).
    scaled = graph.node("Mul", [x, graph.constant("slope", np.array(slope, graph.dtype))])
    return graph.node("Max", [x, scaled])


def _elu(graph, x, layer):
    alpha = layer.activation_param
    if _exact_in_attribute(graph, alpha):
        return graph.node("Elu", [x], alpha=float(alpha))
    # As for leaky ReLU: alpha in the model's dtype, as a tensor.  Elu's own definition,
    # alpha * (exp(z) - 1) for z <= 0, spelled out.
    one = graph.constant("one", np.array(1.0, graph.dtype))
    negative = graph.node("Mul", [graph.constant("alpha", np.array(alpha, graph.dtype)),
                                  graph.node("Sub", [graph.node("Exp", [x]), one])])
    positive = graph.node("Greater", [x, graph.constant("zero", np.array(0.0, graph.dtype))])
    return graph.node("Where", [positive, x, negative])


# W. J. Cody's rational Chebyshev approximations of erf and erfc ("Rational Chebyshev
# approximations for the error function", Math. Comp. 23, 1969, 631-638; the coefficients of
# netlib's specfun CALERF, highest power last as there): accurate beyond float64 precision.
_CODY_ERF_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
               3.20937758913846947e03, 1.85777706184603153e-1)
_CODY_ERF_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
               2.84423683343917062e03)
_CODY_ERFC_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
                2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
                2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_CODY_ERFC_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
                1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
                3.43936767414372164e03, 1.23033935480374942e03)
_CODY_ERFC_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
                1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_CODY_ERFC_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1,
                6.05183413124413191e-2, 2.33520497626869185e-3)
_ONE_OVER_SQRT_PI = 5.6418958354775628695e-1


def _horner(graph, y, numerator, denominator):
    """``N(y) / D(y)`` in Cody's form: ``N`` starts from ``numerator[-1] * y``, ``D`` from
    ``y`` (a monic denominator), then ``(. + c_i) * y`` for the middle coefficients and
    ``+ c_last`` for the final ones (``numerator[-2]``, ``denominator[-1]``)."""
    def c(value):
        return graph.constant("cody", np.array(value, graph.dtype))
    num = graph.node("Mul", [c(numerator[-1]), y])
    den = y
    for a, b in zip(numerator[:-2], denominator[:-1]):
        num = graph.node("Mul", [graph.node("Add", [num, c(a)]), y])
        den = graph.node("Mul", [graph.node("Add", [den, c(b)]), y])
    return graph.node("Div", [graph.node("Add", [num, c(numerator[-2])]),
                              graph.node("Add", [den, c(denominator[-1])])])


def _one_plus_erf(graph, t):
    """``1 + erf(t)`` (that is ``erfc(-t)``) from Cody's three intervals, without ``Erf``:
    ONNX Runtime's CPU provider has no float64 ``Erf`` kernel.  ``|t| <= 0.46875``:
    ``1 + t A(t^2) / B(t^2)``; above, ``E = erfc(|t|)`` (``C(y) / D(y)`` up to 4, ``(1 /
    sqrt(pi) - y^-2 P(y^-2) / Q(y^-2)) / y`` beyond, times ``exp(-y^2)`` split as Cody
    splits it, ``exp(-s^2) exp(-(y - s)(y + s))`` with ``s = floor(16 y) / 16``, so that
    the rounding of ``y^2`` does not enter the exponent), and ``1 + erf(t)`` is ``E`` for
    ``t < 0`` and ``2 - E`` for ``t > 0``.  Every branch is evaluated and ``Where`` picks
    one (the others may overflow to inf or NaN, which ``Where`` does not pass on)."""
    def c(value):
        return graph.constant("cody", np.array(value, graph.dtype))
    y = graph.node("Abs", [t])
    y2 = graph.node("Mul", [y, y])
    near_zero = graph.node("Add", [c(1.0), graph.node("Mul", [t, _horner(graph, y2, _CODY_ERF_A, _CODY_ERF_B)])])
    middle = _horner(graph, y, _CODY_ERFC_C, _CODY_ERFC_D)
    inv_y2 = graph.node("Div", [c(1.0), y2])
    tail = graph.node("Div", [graph.node("Sub", [c(_ONE_OVER_SQRT_PI), graph.node(
        "Mul", [inv_y2, _horner(graph, inv_y2, _CODY_ERFC_P, _CODY_ERFC_Q)])]), y])
    ratio = graph.node("Where", [graph.node("LessOrEqual", [y, c(4.0)]), middle, tail])
    s = graph.node("Div", [graph.node("Floor", [graph.node("Mul", [y, c(16.0)])]), c(16.0)])
    split = graph.node("Mul", [graph.node("Sub", [y, s]), graph.node("Add", [y, s])])
    gauss = graph.node("Mul", [graph.node("Exp", [graph.node("Neg", [graph.node("Mul", [s, s])])]),
                               graph.node("Exp", [graph.node("Neg", [split])])])
    erfc_y = graph.node("Mul", [gauss, ratio])
    signed = graph.node("Where", [graph.node("Less", [t, c(0.0)]), erfc_y,
                                  graph.node("Sub", [c(2.0), erfc_y])])
    return graph.node("Where", [graph.node("LessOrEqual", [y, c(0.46875)]), near_zero, signed])


def _gelu(graph, x, layer):
    # The exact (erf) form, as fastmlp's kernel and torch.nn.GELU() compute it, with the
    # constants in the model's dtype (1/sqrt(2) rounded once, as the kernel rounds it).
    inv_sqrt2 = graph.constant("inv_sqrt2", np.array(1.0 / np.sqrt(2.0), graph.dtype))
    half = graph.constant("half", np.array(0.5, graph.dtype))
    t = graph.node("Mul", [x, inv_sqrt2])
    if graph.dtype == np.float32:
        cdf = graph.node("Add", [graph.node("Erf", [t]), graph.constant("one", np.array(1.0, graph.dtype))])
    else:
        cdf = _one_plus_erf(graph, t)
    return graph.node("Mul", [graph.node("Mul", [half, x]), cdf])


def _silu(graph, x, layer):
    return graph.node("Mul", [x, graph.node("Sigmoid", [x])])


#: Activation name -> ``(graph, x, layer) -> output name``: the nodes of ``f`` after a layer's
#: linear part.
ACTIVATION_NODES = {
    "identity": lambda graph, x, layer: x,
    "sigmoid": _elementwise("Sigmoid"),
    "tanh": _elementwise("Tanh"),
    "relu": _elementwise("Relu"),
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "gelu": _gelu,
    "silu": _silu,
}


# --------------------------------------------------------------------------- layers
def _gemm(graph, x, layer, stem):
    W = graph.constant(f"{stem}.weight", layer.W)
    b = graph.constant(f"{stem}.bias", layer.b)
    return graph.node("Gemm", [x, W, b], stem=f"{stem}.linear")


def _dense(graph, x, layer, stem):
    return ACTIVATION_NODES[layer.activation](graph, _gemm(graph, x, layer, stem), layer)


def _maxout(graph, x, layer, stem):
    z = _gemm(graph, x, layer, stem)
    # 0 in a Reshape shape copies that input dimension: the batch stays dynamic.
    shape = graph.constant("pieces_shape", np.array([0, layer.pieces, layer.n_out], np.int64))
    pieces = graph.node("Reshape", [z, shape], stem=f"{stem}.pieces")
    axis = graph.constant("axis", np.array([1], np.int64))
    return graph.node("ReduceMax", [pieces, axis], stem=f"{stem}.max", keepdims=0)


def _layer_norm(graph, x, layer, stem):
    gain = graph.constant(f"{stem}.weight", layer.gain)
    bias = graph.constant(f"{stem}.bias", layer.bias)
    if _exact_in_attribute(graph, layer.eps):
        # stash_type: the statistics in the model's dtype (the default, 1, is float32).
        stash = graph.onnx.TensorProto.FLOAT if graph.dtype == np.float32 else graph.onnx.TensorProto.DOUBLE
        return graph.node("LayerNormalization", [x, gain, bias], stem=f"{stem}.norm", axis=-1,
                          epsilon=float(layer.eps), stash_type=stash)
    # A float64 model whose eps float32 cannot hold: LayerNormalization's own definition
    # (biased variance, over the last axis), with eps as a float64 constant.
    axis = graph.constant("last_axis", np.array([-1], np.int64))
    mean = graph.node("ReduceMean", [x, axis], keepdims=1)
    centred = graph.node("Sub", [x, mean])
    variance = graph.node("ReduceMean", [graph.node("Mul", [centred, centred]), axis], keepdims=1)
    eps = graph.constant(f"{stem}.eps", np.array(layer.eps, graph.dtype))
    std = graph.node("Sqrt", [graph.node("Add", [variance, eps])])
    normalised = graph.node("Div", [centred, std])
    return graph.node("Add", [graph.node("Mul", [normalised, gain]), bias], stem=f"{stem}.norm")


def _dropout(graph, x, layer, stem):
    return x  # the identity at inference, where the graph runs


#: Layer class -> ``(graph, x, layer, stem) -> output name`` (``stem``, such as ``layers.0``,
#: prefixes the names of the layer's initializers).  Subclasses use their nearest base's entry.
LAYER_NODES = {
    Dense: _dense,
    Maxout: _maxout,
    LayerNorm: _layer_norm,
    Dropout: _dropout,
}


def _layer_nodes(layer, position):
    """The :data:`LAYER_NODES` entry of ``layer`` (the ``position``-th, from 1), after
    checking that its activation has one in :data:`ACTIVATION_NODES`."""
    for cls in type(layer).__mro__:
        if cls in LAYER_NODES:
            break
    else:
        raise ValueError(f"layer {position} ({layer!r}): {type(layer).__name__} has no ONNX "
                         f"export; exportable layers: {', '.join(c.__name__ for c in LAYER_NODES)}")
    if isinstance(layer, Dense) and layer.activation not in ACTIVATION_NODES:
        raise ValueError(f"layer {position} ({layer!r}): activation {layer.activation!r} has no "
                         f"ONNX export; exportable activations: {', '.join(ACTIVATION_NODES)}")
    return LAYER_NODES[cls]


# --------------------------------------------------------------------------- the model
def to_onnx(model):
    """The ONNX graph of ``model``, as an ``onnx.ModelProto`` (checked by ``onnx.checker``).

    Parameters
    ----------
    model : Sequential

    Returns
    -------
    onnx.ModelProto
        Input ``input`` ``(batch, n_features)`` of the model's dtype; outputs ``scores``
        ``(batch, n_outputs)``, and for the classification losses ``label`` (int64:
        ``(batch,)`` class indices for ``softmax_cross_entropy`` and ``multiclass_hinge``;
        0/1 decisions ``(batch, n_outputs)`` for ``binary_cross_entropy``, ``(batch,)``
        with one output, as :meth:`~fastmlp.Sequential.predict`) and, for
        ``softmax_cross_entropy`` and ``binary_cross_entropy``, ``probabilities``
        ``(batch, n_outputs)`` (softmax, resp. each output's sigmoid).

    Raises
    ------
    ImportError
        When the ``onnx`` package is not installed (``pip install 'fastmlp[onnx]'``).
    ValueError
        When a layer or activation has no ONNX form; the message names the layer.
    """
    # Every layer is checked before onnx is imported or anything is built.
    builders = [_layer_nodes(layer, k + 1) for k, layer in enumerate(model.layers)]
    try:
        import onnx
    except ImportError:
        raise ImportError("exporting to ONNX needs the onnx package: "
                          "pip install 'fastmlp[onnx]'") from None
    from onnx import TensorProto, helper

    elem = TensorProto.FLOAT if model.dtype == np.float32 else TensorProto.DOUBLE
    graph = _Graph(onnx, model.dtype)
    x = "input"
    for k, (layer, build) in enumerate(zip(model.layers, builders)):
        x = build(graph, x, layer, f"layers.{k}")
    n_out = model.n_outputs
    outputs = [("scores", elem, ["batch", n_out])]
    graph.node("Identity", [x], output="scores")
    if model.loss_code == LOSSES["softmax_cross_entropy"]:
        graph.node("Softmax", ["scores"], output="probabilities", axis=1)
        outputs.append(("probabilities", elem, ["batch", n_out]))
    elif model.loss_code == BINARY_CROSS_ENTROPY:
        graph.node("Sigmoid", ["scores"], output="probabilities")
        outputs.append(("probabilities", elem, ["batch", n_out]))
    if model.uses_labels:
        # select_last_index=0: the first of tied scores, as predict's strict comparison.
        graph.node("ArgMax", ["scores"], output="label", axis=1, keepdims=0, select_last_index=0)
        outputs.append(("label", TensorProto.INT64, ["batch"]))
    elif model.loss_code == BINARY_CROSS_ENTROPY:
        # predict's rule: score > 0 (sigmoid > 1/2), which a rounded sigmoid could blur.
        zero = graph.constant("zero", np.array(0.0, model.dtype))
        decisions = graph.node("Cast", [graph.node("Greater", ["scores", zero])],
                               to=TensorProto.INT64, output=None if n_out == 1 else "label")
        if n_out == 1:
            graph.node("Squeeze", [decisions, graph.constant("axis", np.array([1], np.int64))],
                       output="label")
            outputs.append(("label", TensorProto.INT64, ["batch"]))
        else:
            outputs.append(("label", TensorProto.INT64, ["batch", n_out]))

    onnx_graph = helper.make_graph(
        graph.nodes, "fastmlp_sequential",
        [helper.make_tensor_value_info("input", elem, ["batch", model.n_features_in])],
        [helper.make_tensor_value_info(name, t, shape) for name, t, shape in outputs],
        initializer=graph.initializers)
    proto = helper.make_model(onnx_graph, producer_name="fastmlp", producer_version=__version__,
                              opset_imports=[helper.make_opsetid("", OPSET)],
                              doc_string=repr(model))
    proto.ir_version = IR_VERSION
    helper.set_model_props(proto, {"fastmlp.loss": model.loss, "fastmlp.dtype": model.dtype.name})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, path):
    """Write ``model``'s ONNX graph (:func:`to_onnx`) to ``path``, atomically.

    Parameters
    ----------
    model : Sequential
    path : str or os.PathLike
    """
    path = io.check_path(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: directory {directory} does not exist")
    io.atomic_write(path, [to_onnx(model).SerializeToString()])
