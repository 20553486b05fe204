"""Export a :class:`~fastmlp.Sequential` model as a standard ONNX graph.

The graph computes what the model's inference methods compute, with ONNX operators any
runtime has (ONNX Runtime, Triton's ONNX backend, OpenVINO, TensorRT):

- one ``Gemm`` per layer (``x @ W + b``: fastmlp's ``W`` already has shape ``(n_in, n_out)``,
  so no transpose), then the activation's operator (``Sigmoid``, ``Tanh``, ``Relu``,
  ``LeakyRelu``, ``Elu``; nothing for identity);
- a maxout layer as ``Gemm -> Reshape (batch, pieces, n_out) -> ReduceMax(axis 1)``, since
  piece ``k`` owns columns ``k * n_out : (k + 1) * n_out`` of ``W``;
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
from fastmlp.layers import Dense, Maxout

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


#: Activation name -> ``(graph, x, layer) -> output name``: the nodes of ``f`` after a layer's
#: linear part.
ACTIVATION_NODES = {
    "identity": lambda graph, x, layer: x,
    "sigmoid": _elementwise("Sigmoid"),
    "tanh": _elementwise("Tanh"),
    "relu": _elementwise("Relu"),
    "leaky_relu": _leaky_relu,
    "elu": _elu,
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


#: Layer class -> ``(graph, x, layer, stem) -> output name`` (``stem``, such as ``layers.0``,
#: prefixes the names of the layer's initializers).  Subclasses use their nearest base's entry.
LAYER_NODES = {
    Dense: _dense,
    Maxout: _maxout,
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
