"""PyTorch interoperation: an ``nn.Sequential`` of ``Linear`` and activation modules to a
fastmlp model (:func:`fastmlp.from_torch`) and back (:meth:`Sequential.to_torch
<fastmlp.Sequential.to_torch>`).

Both directions are table driven: :data:`FROM_TORCH` maps a ``torch.nn`` class name to what
it becomes, :data:`TO_TORCH_LAYERS` a fastmlp layer class to its modules and
:data:`TO_TORCH_ACTIVATIONS` a fastmlp activation to its module.  PyTorch's
``Linear`` keeps ``weight`` as ``(out_features, in_features)`` and computes ``x @ weight.T +
bias``; fastmlp's ``W`` is ``(n_in, n_out)`` (``x @ W + b``), so weights cross transposed.
torch is imported only inside the two conversion functions.  This module sits below
:mod:`fastmlp.sequential` (it builds layers, not models), as :mod:`fastmlp.io` does for
:func:`fastmlp.load`.
"""

import numpy as np

from fastmlp.layers import Dense, Dropout, LayerNorm

__all__ = ["FROM_TORCH", "TO_TORCH_ACTIVATIONS", "TO_TORCH_LAYERS", "layers_from_torch", "to_torch"]


def _describe(position, module):
    text = repr(module)
    return f"module {position} ({text if chr(10) not in text else type(module).__name__})"


class _Entry:
    """One fastmlp layer being read from an ``nn.Sequential``.

    ``make(entry, dtype)`` returns ``(layer, [arrays for set_weights])``; ``n_in`` and
    ``n_out`` are its widths (None for a layer that keeps its input's width);
    ``activation``, ``params`` and ``where`` (the position and module that set the
    activation) are for layers that take one.
    """

    def __init__(self, position, module, make, n_in=None, n_out=None, takes_activation=False):
        self.position, self.module, self.make = position, module, make
        self.n_in, self.n_out = n_in, n_out
        self.takes_activation = takes_activation
        self.activation, self.params, self.where = "identity", {}, (position, module)


def _dense_from_linear(entry, dtype):
    linear = entry.module
    try:
        layer = Dense(linear.in_features, linear.out_features, entry.activation, **entry.params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{_describe(*entry.where)}: {exc}") from None
    W = linear.weight.detach().cpu().numpy().T
    b = (np.zeros(linear.out_features, dtype) if linear.bias is None
         else linear.bias.detach().cpu().numpy())
    return layer, [W, b]


def _linear(entries, position, module):
    entries.append(_Entry(position, module, _dense_from_linear, module.in_features,
                          module.out_features, takes_activation=True))


def _activation(name, params=lambda module: {}):
    def add(entries, position, module):
        if not entries:
            raise ValueError(f"{_describe(position, module)}: an activation before any "
                             "Linear module; fastmlp applies each activation after a Linear")
        if not entries[-1].takes_activation:
            raise ValueError(f"{_describe(position, module)}: an activation after "
                             f"{_describe(entries[-1].position, entries[-1].module)}, not after "
                             "a Linear; fastmlp applies each activation right after a Linear")
        if entries[-1].activation != "identity":
            raise ValueError(f"{_describe(position, module)}: a second activation after "
                             f"{_describe(*entries[-1].where)}; fastmlp applies one activation "
                             "per Linear")
        try:
            read = params(module)
        except ValueError as exc:
            raise ValueError(f"{_describe(position, module)}: {exc}") from None
        entries[-1].activation, entries[-1].params = name, read
        entries[-1].where = (position, module)
    return add


def _no_op(entries, position, module):
    pass


def _gelu_params(module):
    if module.approximate != "none":
        raise ValueError(f"approximate={module.approximate!r} is not supported: fastmlp's gelu "
                         "is the exact erf form; only nn.GELU() (approximate='none') converts")
    return {}


def _make_dropout(entry, dtype):
    try:
        return Dropout(float(entry.module.p)), []
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{_describe(entry.position, entry.module)}: {exc}") from None


def _dropout(entries, position, module):
    _make_dropout(_Entry(position, module, None), None)  # refuse p = 1 while reading
    entries.append(_Entry(position, module, _make_dropout))


def _make_layer_norm(entry, dtype):
    ln = entry.module
    n = entry.n_in
    # elementwise_affine=False, or bias=False: torch then has no gain (resp. bias), which
    # is a gain of 1 (a bias of 0); fastmlp's layer norm always has both (training then
    # updates them, as for a bias-free Linear).
    gain = np.ones(n, dtype) if ln.weight is None else ln.weight.detach().cpu().numpy()
    bias = np.zeros(n, dtype) if ln.bias is None else ln.bias.detach().cpu().numpy()
    return LayerNorm(eps=float(ln.eps)), [gain, bias]


def _layer_norm(entries, position, module):
    shape = tuple(module.normalized_shape)
    if len(shape) != 1:
        raise ValueError(f"{_describe(position, module)}: normalized_shape {shape} normalises "
                         "over more than the last axis; fastmlp's LayerNorm takes a single int, "
                         "the width of the layer")
    try:
        LayerNorm(eps=float(module.eps))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{_describe(position, module)}: {exc}") from None
    entries.append(_Entry(position, module, _make_layer_norm, shape[0], shape[0]))


#: ``torch.nn`` class name -> ``(entries, position, module) -> None``: what the module adds to
#: the model being built (an ``_Entry`` for a new layer, the activation of the last one, or
#: nothing).  Only these exact classes are accepted, not subclasses, whose ``forward`` may
#: differ.
FROM_TORCH = {
    "Linear": _linear,
    "Identity": _no_op,
    "ReLU": _activation("relu"),
    "Tanh": _activation("tanh"),
    "Sigmoid": _activation("sigmoid"),
    "LeakyReLU": _activation("leaky_relu", lambda m: {"negative_slope": float(m.negative_slope)}),
    "ELU": _activation("elu", lambda m: {"alpha": float(m.alpha)}),
    "GELU": _activation("gelu", _gelu_params),
    "SiLU": _activation("silu"),
    "Dropout": _dropout,
    "LayerNorm": _layer_norm,
}

#: Why a module that is not in :data:`FROM_TORCH` is refused, where there is more to say.
_REFUSED = {
    "Softmax": "fastmlp's loss applies softmax itself (predict_proba gives the probabilities): "
               "drop the module and use loss='softmax_cross_entropy'",
    "LogSoftmax": "fastmlp's loss applies softmax itself: drop the module and use "
                  "loss='softmax_cross_entropy'",
    "Sequential": "nested nn.Sequential: flatten it (nn.Sequential(*outer[:i], *inner, ...))",
}


def _module_dtype(module, np_dtypes):
    dtypes = {p.dtype for p in module.parameters()}
    if len(dtypes) > 1:
        raise ValueError(f"the module's parameters mix dtypes {sorted(map(str, dtypes))}; "
                         "convert it with module.float() or module.double() first")
    (dtype,) = dtypes
    if dtype not in np_dtypes:
        raise ValueError(f"the module's parameters are {dtype}; fastmlp models are float32 or "
                         "float64 (module.float() or module.double())")
    return np_dtypes[dtype]


def layers_from_torch(module):
    """``(layers, weights, dtype)`` for :func:`fastmlp.from_torch`: unbuilt fastmlp layers,
    their parameters as :meth:`~fastmlp.Sequential.set_weights` takes them, and the numpy
    dtype of ``module``'s parameters.  Raises as :func:`fastmlp.from_torch` documents."""
    import torch

    if type(module) is not torch.nn.Sequential:
        raise TypeError(f"from_torch takes a torch.nn.Sequential, got {type(module).__name__}")
    if len(module) == 0:
        raise ValueError("the nn.Sequential is empty")
    entries = []
    for position, child in enumerate(module):
        name = type(child).__name__
        rule = FROM_TORCH.get(name)
        if rule is None or type(child) is not getattr(torch.nn, name, None):
            why = _REFUSED.get(name, "fastmlp has no layer for it; supported modules: "
                                     + ", ".join(FROM_TORCH))
            raise ValueError(f"{_describe(position, child)}: {why}")
        rule(entries, position, child)
    if not any(entry.make is _dense_from_linear for entry in entries):
        raise ValueError("the nn.Sequential has no Linear module")
    width, source = None, None
    for entry in entries:
        if entry.n_in is not None and width is not None and entry.n_in != width:
            raise ValueError(f"{_describe(entry.position, entry.module)} takes {entry.n_in} "
                             f"inputs, but {_describe(source.position, source.module)} before "
                             f"it outputs {width}")
        if entry.n_out is not None:
            width, source = entry.n_out, entry
    dtype = _module_dtype(module, {torch.float32: np.float32, torch.float64: np.float64})

    layers, weights = [], []
    with torch.no_grad():
        for entry in entries:
            layer, arrays = entry.make(entry, dtype)
            layers.append(layer)
            weights += arrays
    return layers, weights, dtype


#: fastmlp activation -> ``(torch.nn, layer) -> module or None`` (None: nothing after the
#: ``Linear``).
TO_TORCH_ACTIVATIONS = {
    "identity": lambda nn, layer: None,
    "relu": lambda nn, layer: nn.ReLU(),
    "tanh": lambda nn, layer: nn.Tanh(),
    "sigmoid": lambda nn, layer: nn.Sigmoid(),
    "leaky_relu": lambda nn, layer: nn.LeakyReLU(negative_slope=layer.activation_param),
    "elu": lambda nn, layer: nn.ELU(alpha=layer.activation_param),
    "gelu": lambda nn, layer: nn.GELU(),
    "silu": lambda nn, layer: nn.SiLU(),
}


def _dense_modules(torch, layer, dtype):
    linear = torch.nn.Linear(layer.n_in, layer.n_out, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(layer.W.T)))
        linear.bias.copy_(torch.from_numpy(layer.b.copy()))
    activation = TO_TORCH_ACTIVATIONS[layer.activation](torch.nn, layer)
    return [linear] if activation is None else [linear, activation]


def _layer_norm_modules(torch, layer, dtype):
    ln = torch.nn.LayerNorm(layer.n_out, eps=layer.eps, elementwise_affine=True, dtype=dtype)
    with torch.no_grad():
        ln.weight.copy_(torch.from_numpy(layer.gain.copy()))
        ln.bias.copy_(torch.from_numpy(layer.bias.copy()))
    return [ln]


#: fastmlp layer class -> ``(torch, layer, torch dtype) -> [modules]``.  A subclass uses its
#: nearest base's entry: fastmlp's kernels compute a layer from its kind and activation, not
#: from Python methods a subclass could override.
TO_TORCH_LAYERS = {
    Dense: _dense_modules,
    Dropout: lambda torch, layer, dtype: [torch.nn.Dropout(p=layer.rate)],
    LayerNorm: _layer_norm_modules,
}


def to_torch(model):
    """An ``nn.Sequential`` computing ``model.decision_function`` (see
    :meth:`Sequential.to_torch <fastmlp.Sequential.to_torch>`)."""
    converters = []
    for k, layer in enumerate(model.layers):
        convert = next((TO_TORCH_LAYERS[c] for c in type(layer).__mro__ if c in TO_TORCH_LAYERS), None)
        if convert is None:
            raise ValueError(f"layer {k + 1} ({layer!r}) has no PyTorch module; to_torch "
                             f"converts {', '.join(c.__name__ for c in TO_TORCH_LAYERS)} layers")
        converters.append(convert)
        if isinstance(layer, Dense) and layer.activation not in TO_TORCH_ACTIVATIONS:
            raise ValueError(f"layer {k + 1} ({layer!r}): activation {layer.activation!r} has no "
                             f"PyTorch module; known: {', '.join(TO_TORCH_ACTIVATIONS)}")
    import torch

    dtype = {np.float32: torch.float32, np.float64: torch.float64}[model.dtype.type]
    modules = []
    for layer, convert in zip(model.layers, converters):
        modules += convert(torch, layer, dtype)
    # In eval mode, as decision_function computes: dropout inactive (.train() to train it).
    return torch.nn.Sequential(*modules).eval()
