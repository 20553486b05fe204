"""fastmlp.from_torch and Sequential.to_torch: the same network both ways, weights copied
exactly and outputs within the forward-chain bounds (tolerances.py, with runtime_bounds.py's
allowance for PyTorch's elementary functions)."""

import subprocess
import sys

import numpy as np
import pytest
import torch  # the test extra installs torch==2.13.0: a missing torch fails, not skips
from torch import nn

import fastmlp
from fastmlp import SGD, Adam, Dense, Dropout, LayerNorm, Maxout, Sequential
from runtime_bounds import (FOREIGN_ACTIVATION_ROUNDINGS, agreement_bound, gated_cancellation,
                            softmax_bound, unambiguous_argmax)
from tolerances import ELEMENTARY_ROUNDINGS, assert_within, unit_roundoff

TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}

# Each activation module with the fastmlp activation (and parameters) it becomes.
ACTIVATION_MODULES = [
    (lambda: nn.ReLU(), "relu", {}),
    (lambda: nn.ReLU(inplace=True), "relu", {}),
    (lambda: nn.Tanh(), "tanh", {}),
    (lambda: nn.Sigmoid(), "sigmoid", {}),
    (lambda: nn.LeakyReLU(), "leaky_relu", {"negative_slope": 0.01}),
    (lambda: nn.LeakyReLU(0.3), "leaky_relu", {"negative_slope": 0.3}),
    (lambda: nn.ELU(), "elu", {"alpha": 1.0}),
    (lambda: nn.ELU(alpha=0.4), "elu", {"alpha": 0.4}),
    (lambda: nn.GELU(), "gelu", {}),
    (lambda: nn.GELU(approximate="none"), "gelu", {}),
    (lambda: nn.SiLU(), "silu", {}),
]


def torch_output(module, X, dtype):
    with torch.no_grad():
        return module(torch.from_numpy(np.asarray(X, dtype))).numpy()


def random_torch_net(make_activation, dtype, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 8), make_activation(), nn.Linear(8, 6), make_activation(),
                        nn.Linear(6, 3)).to(TORCH_DTYPES[dtype])
    with torch.no_grad():  # biases of order 1, so a bias copied wrongly shows
        for p in net.parameters():
            p.normal_(0.0, 0.8)
    return net


def assert_same_outputs(model, module, X):
    """fastmlp's scores and PyTorch's (in eval mode: dropout inactive, as in fastmlp's
    inference) are each within their bound of the exact scores."""
    _, E_fm, E_torch = agreement_bound(model, X)
    was_training = module.training
    module.eval()
    try:
        assert_within(model.decision_function(X), torch_output(module, X, model.dtype),
                      E_fm + E_torch, "fastmlp vs PyTorch")
    finally:
        module.train(was_training)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make_activation,name,params", ACTIVATION_MODULES)
def test_from_torch_computes_what_the_module_computes(make_activation, name, params, dtype):
    net = random_torch_net(make_activation, dtype)
    model = fastmlp.from_torch(net, loss="softmax_cross_entropy", optimizer=SGD(lr=0.1), seed=3)
    assert model.dtype == dtype and model.loss == "softmax_cross_entropy"
    assert model.optimizer.lr == 0.1 and model.seed == 3
    assert [(type(layer), layer.activation) for layer in model.layers] == [
        (Dense, name), (Dense, name), (Dense, "identity")]
    for layer in model.layers[:2]:
        assert layer.activation_param == pytest.approx(next(iter(params.values()), 0.0), abs=0)
    # The weights cross transposed and unrounded.
    linears = [net[0], net[2], net[4]]
    for layer, linear in zip(model.layers, linears):
        np.testing.assert_array_equal(layer.W, linear.weight.detach().numpy().T)
        np.testing.assert_array_equal(layer.b, linear.bias.detach().numpy())
    X = np.random.default_rng(1).normal(scale=1.5, size=(23, 5))
    assert_same_outputs(model, net, X)
    assert_same_outputs(model, net, X[:1])

    # And back: to_torch gives the same modules with the same parameters, bit for bit.
    back = model.to_torch()
    assert [type(m) for m in back] == [type(m) for m in net]
    for mine, theirs in zip(back.state_dict().items(), net.state_dict().items()):
        assert mine[0] == theirs[0] and mine[1].dtype == theirs[1].dtype
        assert torch.equal(mine[1], theirs[1])
    for mine, theirs in zip(back, net):
        for attribute in ("negative_slope", "alpha"):
            assert getattr(mine, attribute, None) == getattr(theirs, attribute, None)
    np.testing.assert_array_equal(torch_output(back, X, dtype), torch_output(net, X, dtype))


def random_normalised_net(dtype, seed=0):
    """Layer norms (first in the list, and between layers) and dropout around gelu and silu,
    every parameter of order 1 (gains and biases off their initial 1 and 0)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.LayerNorm(5), nn.Dropout(0.2), nn.Linear(5, 8), nn.GELU(),
                        nn.LayerNorm(8, eps=1e-3), nn.Dropout(0.5), nn.Linear(8, 6), nn.SiLU(),
                        nn.LayerNorm(6, eps=2.0 ** -10), nn.Linear(6, 3)).to(TORCH_DTYPES[dtype])
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.8)
    return net


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_and_dropout_round_trip(dtype):
    net = random_normalised_net(dtype)
    assert net.training  # as built: from_torch reads the modules, not the mode
    model = fastmlp.from_torch(net, loss="softmax_cross_entropy")
    assert [type(layer) for layer in model.layers] == [LayerNorm, Dropout, Dense, LayerNorm,
                                                       Dropout, Dense, LayerNorm, Dense]
    assert [layer.activation for layer in model.layers if isinstance(layer, Dense)] == [
        "gelu", "silu", "identity"]
    assert [layer.eps for layer in model.layers if isinstance(layer, LayerNorm)] == [1e-5, 1e-3, 2.0 ** -10]
    assert [layer.rate for layer in model.layers if isinstance(layer, Dropout)] == [0.2, 0.5]
    for layer, ln in zip(model.layers[::3], (net[0], net[4], net[8])):
        np.testing.assert_array_equal(layer.gain, ln.weight.detach().numpy())
        np.testing.assert_array_equal(layer.bias, ln.bias.detach().numpy())
    X = 1 + np.random.default_rng(1).normal(scale=1.5, size=(23, 5))
    assert_same_outputs(model, net, X)
    assert_same_outputs(model, net, X[:1])

    back = model.to_torch()
    assert not back.training  # eval mode: it computes decision_function, dropout inactive
    assert [type(m) for m in back] == [type(m) for m in net]
    for mine, theirs in zip(back.state_dict().items(), net.state_dict().items()):
        assert mine[0] == theirs[0] and mine[1].dtype == theirs[1].dtype
        assert torch.equal(mine[1], theirs[1])
    for mine, theirs in zip(back, net):
        for attribute in ("p", "eps", "normalized_shape", "elementwise_affine", "approximate"):
            assert getattr(mine, attribute, None) == getattr(theirs, attribute, None)
    net.eval()
    np.testing.assert_array_equal(torch_output(back, X, dtype), torch_output(net, X, dtype))
    back.train()  # and in training mode the dropout modules are active again
    assert not np.array_equal(torch_output(back, X, dtype), torch_output(net, X, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_without_affine_parameters(dtype):
    """elementwise_affine=False (no gain, no bias) and bias=False (no bias): fastmlp's
    layer norm always has both, so they become a gain of 1 and a bias of 0."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.LayerNorm(6, elementwise_affine=False),
                        nn.Linear(6, 5), nn.LayerNorm(5, bias=False), nn.Linear(5, 2)).to(TORCH_DTYPES[dtype])
    with torch.no_grad():
        net[4].weight.normal_(0.0, 0.8)
    model = fastmlp.from_torch(net, loss="mse")
    gain0, bias0, gain1, bias1 = (model.get_weights()[k] for k in (2, 3, 6, 7))
    np.testing.assert_array_equal(gain0, np.ones(6, dtype))
    np.testing.assert_array_equal(bias0, np.zeros(6, dtype))
    np.testing.assert_array_equal(gain1, net[4].weight.detach().numpy())
    np.testing.assert_array_equal(bias1, np.zeros(5, dtype))
    X = np.random.default_rng(3).normal(size=(9, 4))
    assert_same_outputs(model, net, X)
    # to_torch gives the affine form, with that gain and bias: the same outputs.
    back = model.to_torch()
    assert back[2].elementwise_affine and back[4].bias is not None
    np.testing.assert_array_equal(torch_output(back, X, dtype), torch_output(net, X, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_to_torch_of_a_fastmlp_model_and_back(dtype):
    model = Sequential([Dense(4, 9, "tanh"), Dense(9, 7, "elu", alpha=0.5), Dense(7, 7),
                        Dense(7, 5, "leaky_relu", negative_slope=0.2), Dense(5, 2, "sigmoid")],
                       loss="binary_cross_entropy", optimizer=Adam(lr=0.01), seed=0, dtype=dtype)
    rng = np.random.default_rng(2)
    model.set_weights([rng.normal(size=w.shape) for w in model.get_weights()])
    module = model.to_torch()
    assert type(module) is nn.Sequential
    assert [type(m).__name__ for m in module] == ["Linear", "Tanh", "Linear", "ELU", "Linear",
                                                  "Linear", "LeakyReLU", "Linear", "Sigmoid"]
    assert all(p.dtype == TORCH_DTYPES[dtype] for p in module.parameters())
    X = rng.normal(size=(11, 4))
    assert_same_outputs(model, module, X)
    again = fastmlp.from_torch(module, loss="binary_cross_entropy")
    for mine, theirs in zip(again.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_array_equal(again.decision_function(X), model.decision_function(X))


def test_a_torch_trained_network_predicts_identically():
    """The use case: train in PyTorch, predict in fastmlp."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 2)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(torch.from_numpy(X)), torch.from_numpy(y)).backward()
        opt.step()
    model = fastmlp.from_torch(net, loss="softmax_cross_entropy")
    scores, E_fm, E_torch = agreement_bound(model, X)
    torch_labels = torch_output(net, X, np.float32).argmax(axis=1)
    sure = unambiguous_argmax(scores, np.maximum(E_fm, E_torch))
    assert sure.mean() > 0.95
    np.testing.assert_array_equal(model.predict(X)[sure], torch_labels[sure])
    assert model.score(X, y) > 0.9  # it did learn XOR's quadrants
    with torch.no_grad():
        probabilities = torch.softmax(net(torch.from_numpy(X)), dim=1).numpy()
    # Each softmax is within its bound of the exact one (runtime_bounds.softmax_bound).
    _, P_fm = softmax_bound(scores, E_fm, ELEMENTARY_ROUNDINGS, np.float32)
    _, P_torch = softmax_bound(scores, E_torch, FOREIGN_ACTIVATION_ROUNDINGS, np.float32)
    assert_within(model.predict_proba(X), probabilities, P_fm + P_torch, "probabilities")


def test_bias_free_linear_and_identity_modules():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Identity(), nn.Linear(3, 4, bias=False), nn.Identity(), nn.ReLU(),
                        nn.Linear(4, 4), nn.Linear(4, 2, bias=False), nn.Identity())
    model = fastmlp.from_torch(net, loss="mse")
    assert [layer.activation for layer in model.layers] == ["relu", "identity", "identity"]
    np.testing.assert_array_equal(model.layers[0].b, np.zeros(4, np.float32))
    np.testing.assert_array_equal(model.layers[2].b, np.zeros(2, np.float32))
    assert_same_outputs(model, net, np.random.default_rng(3).normal(size=(6, 3)))


@pytest.mark.parametrize("modules,message", [
    (lambda: [nn.Linear(2, 3), nn.Conv2d(1, 1, 1)],
     r"module 1 \(Conv2d\(1, 1, .*\)\): fastmlp has no layer for it; supported modules: Linear"),
    (lambda: [nn.ReLU(), nn.Linear(2, 3)], r"module 0 \(ReLU\(\)\): an activation before any Linear"),
    (lambda: [nn.Linear(2, 3), nn.ReLU(), nn.Tanh()],
     r"module 2 \(Tanh\(\)\): a second activation after module 1 \(ReLU\(\)\)"),
    (lambda: [nn.Linear(2, 3), nn.Sequential(nn.Linear(3, 3))],
     r"module 1 \(Sequential\): nested nn.Sequential: flatten it"),
    (lambda: [nn.Linear(2, 3), nn.Linear(4, 3)],
     r"module 1 \(Linear\(in_features=4, .*\)\) takes 4 inputs, but module 0 \(Linear\(in_features=2, .*\)\) before it outputs 3"),
    (lambda: [nn.Linear(2, 3), nn.Softmax(dim=1)],
     r"module 1 \(Softmax\(dim=1\)\): fastmlp's loss applies softmax itself"),
    (lambda: [nn.Linear(2, 3), nn.LeakyReLU(1.5)],
     r"module 1 \(LeakyReLU\(negative_slope=1.5\)\): negative_slope must be in \[0, 1\]"),
    (lambda: [nn.Linear(2, 3), type("ReLU", (nn.ReLU,), {})()],
     r"module 1 \(ReLU\(\)\): fastmlp has no layer for it"),  # a subclass may change forward
    (lambda: [nn.Linear(2, 3).half()], r"parameters are torch.float16; fastmlp models are float32"),
    (lambda: [nn.Linear(2, 3), nn.Linear(3, 2).double()], r"parameters mix dtypes"),
    (lambda: [nn.Identity()], r"has no Linear module"),
    (lambda: [nn.Linear(2, 3), nn.GELU(approximate="tanh")],
     r"module 1 \(GELU\(approximate='tanh'\)\): approximate='tanh' is not supported: fastmlp's gelu is the exact erf form"),
    (lambda: [nn.Linear(2, 3), nn.Dropout(1.0)],
     r"module 1 \(Dropout\(p=1.0, .*\)\): dropout rate must be in \[0, 1\), got 1.0"),
    (lambda: [nn.Linear(2, 3), nn.AlphaDropout(0.1)],
     r"module 1 \(AlphaDropout\(.*\)\): fastmlp has no layer for it; supported modules: .*Dropout, LayerNorm"),
    (lambda: [nn.Linear(2, 3), nn.Dropout(0.5), nn.ReLU()],
     r"module 2 \(ReLU\(\)\): an activation after module 1 \(Dropout\(p=0.5, .*\)\), not after a Linear"),
    (lambda: [nn.Linear(2, 3), nn.LayerNorm(3), nn.ReLU()],
     r"module 2 \(ReLU\(\)\): an activation after module 1 \(LayerNorm\(\(3,\), .*\)\), not after a Linear"),
    (lambda: [nn.Linear(2, 6), nn.LayerNorm((2, 3))],
     r"module 1 \(LayerNorm\(\(2, 3\), .*\)\): normalized_shape \(2, 3\) normalises over more than the last axis"),
    (lambda: [nn.Linear(2, 3), nn.LayerNorm(4)],
     r"module 1 \(LayerNorm\(\(4,\), .*\)\) takes 4 inputs, but module 0 \(Linear\(in_features=2, .*\)\) before it outputs 3"),
    (lambda: [nn.LayerNorm(3), nn.Linear(2, 3)],
     r"module 1 \(Linear\(in_features=2, .*\)\) takes 2 inputs, but module 0 \(LayerNorm\(\(3,\), .*\)\) before it outputs 3"),
    (lambda: [nn.Linear(2, 3), nn.LayerNorm(3, eps=0.0)],
     r"module 1 \(LayerNorm\(.*eps=0.0.*\)\): LayerNorm eps must be a positive finite number"),
    (lambda: [], r"is empty"),
])
def test_unsupported_modules_are_named(modules, message):
    with pytest.raises(ValueError, match=message):
        fastmlp.from_torch(nn.Sequential(*modules()))


def test_other_refusals():
    with pytest.raises(TypeError, match="takes a torch.nn.Sequential, got Linear"):
        fastmlp.from_torch(nn.Linear(2, 3))
    with pytest.raises(ValueError, match="unknown loss"):
        fastmlp.from_torch(nn.Sequential(nn.Linear(2, 3)), loss="hinge")
    model = Sequential([Dense(3, 4, "relu"), Maxout(4, 2, pieces=3), Dense(2, 2)], seed=0)
    with pytest.raises(ValueError, match=r"layer 2 \(Maxout\(4, 2, pieces=3\)\) has no PyTorch module"):
        model.to_torch()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_activation_accuracy_assumption(dtype):
    """runtime_bounds' FOREIGN_ACTIVATION_ROUNDINGS holds for this PyTorch, against
    long-double references, over a dense grid with saturation and the region near 0."""
    z = np.concatenate([np.linspace(-40, 40, 40001), np.linspace(-1e-3, 1e-3, 2001)]).astype(dtype)
    exact = z.astype(np.longdouble)
    alpha = 0.7
    cases = {"Sigmoid": (nn.Sigmoid(), 1 / (1 + np.exp(-exact))), "Tanh": (nn.Tanh(), np.tanh(exact)),
             "ELU": (nn.ELU(alpha), np.where(exact > 0, exact, alpha * np.expm1(exact)))}
    for name, (module, want) in cases.items():
        want = want.astype(float)
        bound = FOREIGN_ACTIVATION_ROUNDINGS * unit_roundoff(dtype) * (np.abs(want) + 1 + alpha)
        assert_within(torch_output(module, z, dtype), want, bound, f"PyTorch {name} ({np.dtype(dtype).name})")
    # gelu and silu, z s(z), get runtime_bounds' cancellation term on top (its docstring).
    from scipy.special import ndtr
    gated = {"GELU": (nn.GELU(), z.astype(float) * ndtr(z.astype(float))),
             "SiLU": (nn.SiLU(), (exact / (1 + np.exp(-exact))).astype(float))}
    for name, (module, want) in gated.items():
        # The reference: scipy's ndtr is accurate to a few float64 ulps, far below float32's;
        # in float64 its own error (<= 4 u |f|, Cephes' stated accuracy) is added.
        bound = (FOREIGN_ACTIVATION_ROUNDINGS * unit_roundoff(dtype) * (np.abs(want) + 1)
                 + gated_cancellation(z.astype(float), FOREIGN_ACTIVATION_ROUNDINGS, dtype)
                 + 4 * unit_roundoff(np.float64) * np.abs(want))
        assert_within(torch_output(module, z, dtype), want, bound, f"PyTorch {name} ({np.dtype(dtype).name})")


def test_import_fastmlp_does_not_import_torch():
    code = ("import sys, fastmlp; fastmlp.Sequential([fastmlp.Dense(2, 2)]); "
            "print('torch' in sys.modules, 'onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
