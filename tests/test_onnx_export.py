"""model.export(path, format="onnx") and ``fastmlp export``: ONNX Runtime runs the graph and
gets fastmlp's outputs, to the dtype's rounding (tolerances.py's forward-chain bounds, with
runtime_bounds.py's allowance for ONNX Runtime's elementary functions)."""

import math
import os
import subprocess
import sys

import numpy as np
import onnx  # the test extra installs onnx and onnxruntime: a missing one fails, not skips
import onnxruntime as ort
import pytest

import runtime_bounds
from compile_record import RECORD_COMPILES
from fastmlp import Dense, Dropout, Layer, LayerNorm, Maxout, Sequential
from fastmlp.losses import Huber, SoftmaxCrossEntropy
from fastmlp.cli import main
from runtime_bounds import (FOREIGN_ACTIVATION_ROUNDINGS, agreement_bound, gated_cancellation,
                            unambiguous_argmax)
from tolerances import ELEMENTARY_ROUNDINGS, assert_within, unit_roundoff

DTYPES = [np.float32, np.float64]
BATCHES = [1, 17]

# (activation, its parameter): every activation, and for leaky ReLU and ELU a parameter
# float32 holds exactly (the LeakyRelu/Elu operators in both dtypes) and one it does not
# (in float64 the exporter then spells the activation out with a float64 constant).
ACTIVATION_CASES = [("identity", {}), ("sigmoid", {}), ("tanh", {}), ("relu", {}),
                    ("leaky_relu", {"negative_slope": 0.25}), ("leaky_relu", {"negative_slope": 0.01}),
                    ("elu", {"alpha": 1.0}), ("elu", {"alpha": 0.3}), ("gelu", {}), ("silu", {})]
# Every loss's head; a label-smoothed cross-entropy and a Huber loss with its parameter
# export as their plain forms (the parameters change training, not the outputs).
LOSS_CASES = [("softmax_cross_entropy", 4), ("multiclass_hinge", 4),
              ("binary_cross_entropy", 1), ("binary_cross_entropy", 3), ("mse", 1), ("mse", 2),
              ("huber", 1), ("huber", 3), ("l1", 1), ("l1", 2),
              (SoftmaxCrossEntropy(label_smoothing=0.1), 4), (Huber(delta=0.3), 2)]


def with_random_weights(model, seed=0):
    """Weights and biases of order 1 (the initialiser leaves biases at 0, which would hide
    a bias exported wrongly)."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(scale=0.8, size=w.shape) for w in model.get_weights()])
    return model


def run_onnx(path, X):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # tiny graphs; the bounds hold for any thread count
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"input": X})))


def export_and_run(model, X, tmp_path):
    path = tmp_path / "model.onnx"
    model.export(path, format="onnx")
    return onnx.load(str(path)), run_onnx(path, np.asarray(X, model.dtype))


def check_outputs(model, X, got):
    """Every output of the graph against the model's own method, within the bounds."""
    scores, E_fm, E_ort = agreement_bound(model, X)
    # Both computations are within their bound of the exact scores.
    assert_within(got["scores"], model.decision_function(X), E_fm + E_ort, "scores")
    assert got["scores"].dtype == model.dtype
    expected = {"scores"}
    if model.loss in ("softmax_cross_entropy", "binary_cross_entropy"):
        expected.add("probabilities")
        if model.loss == "softmax_cross_entropy":
            bound = runtime_bounds.softmax_bound
        else:
            bound = runtime_bounds.sigmoid_bound
        _, P_fm = bound(scores, E_fm, ELEMENTARY_ROUNDINGS, model.dtype)
        _, P_ort = bound(scores, E_ort, FOREIGN_ACTIVATION_ROUNDINGS, model.dtype)
        assert_within(got["probabilities"], model.predict_proba(X), P_fm + P_ort, "probabilities")
        assert got["probabilities"].dtype == model.dtype
    if model.is_classifier:
        expected.add("label")
        want = model.predict(X)
        label = got["label"]
        assert label.dtype == np.int64 and label.shape == want.shape
        if model.uses_labels:
            # The graph's ArgMax reads the graph's own scores: bitwise the same rule.
            np.testing.assert_array_equal(label, np.argmax(got["scores"], axis=1))
            sure = unambiguous_argmax(scores, np.maximum(E_fm, E_ort))
        else:
            np.testing.assert_array_equal(label, (got["scores"] > 0).astype(np.int64).reshape(label.shape))
            sure = (np.abs(scores) > np.maximum(E_fm, E_ort)).reshape(label.shape)
        # Where no rounding can flip the decision, both must take the exact one; on this
        # random data that is nearly every row (a wrong label rule would fail there).
        assert sure.mean() > 0.8
        np.testing.assert_array_equal(label[sure], want[sure])
    assert set(got) == expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation,params", ACTIVATION_CASES)
def test_every_activation_matches_fastmlp(tmp_path, activation, params, dtype):
    model = with_random_weights(Sequential(
        [Dense(5, 7, activation, **params), Dense(7, 6, activation, **params), Dense(6, 3)],
        loss="softmax_cross_entropy", dtype=dtype))
    rng = np.random.default_rng(1)
    for batch in BATCHES:  # one file, one session per batch size: the batch is dynamic
        X = rng.normal(scale=1.5, size=(batch, 5))
        proto, got = export_and_run(model, X, tmp_path)
        check_outputs(model, X, got)
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("Gemm") == 3
    if activation == "gelu":
        # float32: the Erf operator; float64: Cody's rational erfc, since ONNX Runtime's CPU
        # provider has no float64 Erf kernel (an Erf node would not load there).
        assert ops.count("Erf") == (2 if dtype == np.float32 else 0)
        assert "Gelu" not in ops  # opset 20's operator, not in opset 18
    if activation == "silu":
        assert ops.count("Sigmoid") == 2 and "Swish" not in ops
    operator = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "leaky_relu": "LeakyRelu",
                "elu": "Elu"}.get(activation)
    exact_attribute = float(np.float32(next(iter(params.values()), 0.0))) == next(iter(params.values()), 0.0)
    if operator is not None and (exact_attribute or dtype == np.float32):
        assert ops.count(operator) == 2
    elif operator is not None:
        assert operator not in ops  # spelled out with the float64 parameter instead


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxout_is_gemm_reshape_reducemax(tmp_path, dtype):
    model = with_random_weights(Sequential([Maxout(4, 5, pieces=3), Dense(5, 6, "relu"),
                                            Maxout(6, 2, pieces=2), Dense(2, 3)], dtype=dtype))
    rng = np.random.default_rng(2)
    for batch in BATCHES:
        X = rng.normal(size=(batch, 4))
        proto, got = export_and_run(model, X, tmp_path)
        check_outputs(model, X, got)
    ops = [node.op_type for node in proto.graph.node]
    assert ops[:3] == ["Gemm", "Reshape", "ReduceMax"]
    assert ops.count("ReduceMax") == 2


# eps 1e-5 (the default) is not a float32 number, 2**-10 is: a float64 graph spells the
# former out with a float64 constant and takes the operator for the latter.
@pytest.mark.parametrize("eps", [1e-5, 2.0 ** -10])
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_and_dropout_match_fastmlp(tmp_path, dtype, eps):
    layers = [LayerNorm(eps=eps), Dense(5, 7, "gelu"), Dropout(0.3), LayerNorm(eps=eps),
              Dense(7, 6, "silu"), Dropout(0.5), LayerNorm(), Dense(6, 3)]
    model = with_random_weights(Sequential(layers, loss="softmax_cross_entropy", dtype=dtype), seed=5)
    # Gains and biases are off their initial 1 and 0 (a swapped gain and bias would show).
    assert not np.allclose(model.layers[0].gain, 1) and not np.allclose(model.layers[0].bias, 0)
    rng = np.random.default_rng(5)
    for batch in BATCHES:
        X = 2 + rng.normal(scale=1.5, size=(batch, 5))  # rows with a mean to subtract
        proto, got = export_and_run(model, X, tmp_path)
        check_outputs(model, X, got)
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("Gemm") == 3 and "Dropout" not in ops
    # float64: the layer norms with eps 1e-5 (the third always) are spelled out.
    spelled_out = 0 if dtype == np.float32 else (3 if eps == 1e-5 else 1)
    assert ops.count("LayerNormalization") == 3 - spelled_out
    assert ops.count("ReduceMean") == 2 * spelled_out  # the mean and the variance
    eps_constants = [t for t in proto.graph.initializer if t.name.endswith(".eps")]
    assert [onnx.numpy_helper.to_array(t).item() for t in eps_constants] == [1e-5] * spelled_out
    assert all(t.data_type == onnx.TensorProto.DOUBLE for t in eps_constants)
    # The gains and biases are the model's, bit for bit, under the layer's names.
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for k in (0, 3, 6):
        np.testing.assert_array_equal(weights[f"layers.{k}.weight"], model.layers[k].gain)
        np.testing.assert_array_equal(weights[f"layers.{k}.bias"], model.layers[k].bias)
    # Dropout exports as nothing: the same graph as without the dropout layers.
    plain = Sequential([layer.unbuilt_copy() for layer in layers if not isinstance(layer, Dropout)],
                       loss="softmax_cross_entropy", dtype=dtype)
    plain.set_weights(model.get_weights())
    assert [node.op_type for node in _proto(plain, tmp_path).graph.node] == ops
    _, got_plain = export_and_run(plain, X, tmp_path)
    np.testing.assert_array_equal(got_plain["scores"], got["scores"])  # the same graph, bitwise


def _proto(model, tmp_path):
    path = tmp_path / "plain.onnx"
    model.export(path, format="onnx")
    return onnx.load(str(path))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss,n_out", LOSS_CASES)
def test_every_loss_head(tmp_path, loss, n_out, dtype):
    model = with_random_weights(Sequential([Dense(6, 8, "tanh"), Maxout(8, 5), Dense(5, n_out)],
                                           loss=loss, dtype=dtype), seed=3)
    rng = np.random.default_rng(3)
    for batch in BATCHES:
        X = rng.normal(size=(batch, 6))
        _, got = export_and_run(model, X, tmp_path)
        check_outputs(model, X, got)


def test_graph_signature(tmp_path):
    model = Sequential([Dense(3, 4, "relu"), Dense(4, 2)], seed=0, dtype=np.float64)
    path = tmp_path / "m.onnx"
    model.export(str(path), format="onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 18)]
    (graph_input,) = proto.graph.input
    assert graph_input.name == "input"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 3
    assert [o.name for o in proto.graph.output] == ["scores", "probabilities", "label"]
    # The initializers are the model's parameters, bit for bit, under stable names.
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for k, (W, b) in enumerate(zip(model.get_weights()[::2], model.get_weights()[1::2])):
        np.testing.assert_array_equal(weights[f"layers.{k}.weight"], W)
        np.testing.assert_array_equal(weights[f"layers.{k}.bias"], b)
    assert {p.key: p.value for p in proto.metadata_props}["fastmlp.loss"] == "softmax_cross_entropy"


def test_ties_take_the_first_class_as_predict_does(tmp_path):
    model = Sequential([Dense(2, 3)], dtype=np.float32)
    model.set_weights([np.zeros((2, 3)), np.array([1.0, 1.0, 0.5])])
    X = np.ones((4, 2))
    _, got = export_and_run(model, X, tmp_path)
    np.testing.assert_array_equal(got["label"], model.predict(X))
    np.testing.assert_array_equal(got["label"], [0, 0, 0, 0])


def test_unknown_format_and_unexportable_layers_are_refused(tmp_path, monkeypatch):
    model = Sequential([Dense(2, 3, "relu"), Dense(3, 2)], seed=0)
    path = tmp_path / "m.out"
    with pytest.raises(ValueError, match="unknown export format 'tflite'; valid formats: 'onnx', 'safetensors'"):
        model.export(path, format="tflite")
    assert not path.exists()

    class Convolution(Layer):
        pass

    odd = Sequential([Dense(2, 3, "relu"), Convolution(3, 2)], seed=0)
    with pytest.raises(ValueError, match=r"layer 2 \(Convolution\(3, 2\)\): Convolution has no ONNX export"):
        odd.export(path, format="onnx")
    # An activation that a concurrent change could add before the exporter knows it.
    monkeypatch.setattr(model.layers[0], "activation", "swish")
    with pytest.raises(ValueError, match="layer 1 .*activation 'swish' has no ONNX export"):
        model.export(path, format="onnx")
    assert not path.exists()


def test_missing_onnx_package_and_directory_are_named(tmp_path, monkeypatch):
    model = Sequential([Dense(2, 2)], seed=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.export(tmp_path / "nowhere" / "m.onnx", format="onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'fastmlp\[onnx\]'"):
        model.export(tmp_path / "m.onnx", format="onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_export(tmp_path, capsys):
    model = with_random_weights(Sequential([Dense(4, 6, "elu", alpha=0.5), Dense(6, 3)],
                                           loss="softmax_cross_entropy"))
    saved, out = tmp_path / "m.fastmlp", tmp_path / "m.onnx"
    model.save(saved)
    assert main(["export", str(saved), "--format", "onnx", "--out", str(out)]) == 0
    assert f"to {out}" in capsys.readouterr().out
    X = np.random.default_rng(4).normal(size=(9, 4))
    check_outputs(model, X, run_onnx(out, X.astype(np.float32)))

    assert main(["export", str(tmp_path / "missing.fastmlp"), "--format", "onnx",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastmlp: error: ") and "missing.fastmlp" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(saved), "--format", "pickle", "--out", str(out)])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_onnxruntime_activation_accuracy_assumption(dtype):
    """runtime_bounds' FOREIGN_ACTIVATION_ROUNDINGS holds for this ONNX Runtime, against
    long-double references, over a dense grid that covers saturation and the region near
    0."""
    from onnx import TensorProto, helper

    z = np.concatenate([np.linspace(-40, 40, 40001), np.linspace(-1e-3, 1e-3, 2001)]).astype(dtype)
    exact = z.astype(np.longdouble)
    alpha = 0.75  # exact in float32: ONNX float attributes are 32-bit (see onnx_export)
    cases = {"Sigmoid": ({}, 1 / (1 + np.exp(-exact))), "Tanh": ({}, np.tanh(exact)),
             "Elu": ({"alpha": alpha}, np.where(exact > 0, exact, alpha * np.expm1(exact)))}
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    if dtype == np.float32:  # the exporter's float64 gelu does not use Erf (see below)
        cases["Erf"] = ({}, np.array([math.erf(v) for v in z.astype(float)]))
    for op, (attributes, want) in cases.items():
        graph = helper.make_graph(
            [helper.make_node(op, ["z"], ["a"], **attributes)], op,
            [helper.make_tensor_value_info("z", elem, ["n"])], [helper.make_tensor_value_info("a", elem, ["n"])])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        proto.ir_version = 8
        got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"z": z})[0]
        bound = FOREIGN_ACTIVATION_ROUNDINGS * unit_roundoff(dtype) * (np.abs(want.astype(float)) + 1 + alpha)
        assert_within(got, want.astype(float), bound, f"ONNX Runtime {op} ({np.dtype(dtype).name})")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_exported_gated_activation_accuracy(tmp_path, activation, dtype):
    """The exporter's gelu (float32: Erf; float64: Cody's erfc, spelled out) and silu graphs,
    through ONNX Runtime, are within the bound runtime_bounds charges a foreign gated
    activation (FOREIGN_ACTIVATION_ROUNDINGS of u (|f| + 1), plus the cancellation term
    gated_cancellation), against 40-digit references (mpmath, which torch's sympy
    dependency installs), on a grid over all of Cody's intervals (|z / sqrt 2| up to 0.47,
    4 and beyond) and into the saturation either side."""
    import mpmath

    mpmath.mp.dps = 40
    # A 1x1 identity Gemm (W = 1, b = 0) hands the activation z exactly.
    model = Sequential([Dense(1, 1, activation)], loss="mse", dtype=dtype)
    model.set_weights([np.ones((1, 1)), np.zeros(1)])
    z = np.concatenate([np.linspace(-40, 40, 16001), np.linspace(-1e-3, 1e-3, 201),
                        np.sqrt(2) * np.array([-4.0, -0.46875, 0.46875, 4.0])]).astype(dtype)
    _, got = export_and_run(model, z[:, None], tmp_path)
    def exact(v):
        v = mpmath.mpf(float(v))
        return v * mpmath.ncdf(v) if activation == "gelu" else v / (1 + mpmath.exp(-v))
    want = np.array([float(exact(v)) for v in z])
    bound = (FOREIGN_ACTIVATION_ROUNDINGS * unit_roundoff(dtype) * (np.abs(want) + 1)
             + gated_cancellation(z.astype(float), FOREIGN_ACTIVATION_ROUNDINGS, dtype))
    assert_within(got["scores"][:, 0], want, bound, f"exported {activation} ({np.dtype(dtype).name})")


def test_import_fastmlp_imports_neither_torch_nor_onnx():
    code = ("import sys, fastmlp, fastmlp.cli; fastmlp.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_export_and_torch_conversion_compile_nothing(tmp_path):
    """Exporting and converting are pure Python: in a fresh process with an empty kernel
    cache, not one numba compilation (a model that is only exported pays no JIT tax)."""
    code = RECORD_COMPILES + f"""
import torch, fastmlp
from fastmlp import Dense, Maxout, Sequential
from fastmlp import Dropout, LayerNorm
model = Sequential([Maxout(4, 5), Dense(5, 6, "elu"), Dense(6, 3)], seed=0)
model.export({str(tmp_path / "m.onnx")!r}, format="onnx")
net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
fastmlp.from_torch(net).to_torch()
for dtype in ("float32", "float64"):
    model = Sequential([LayerNorm(), Dense(4, 6, "gelu"), Dropout(0.5), Dense(6, 5, "silu"),
                        LayerNorm(), Dense(5, 3)], seed=0, dtype=dtype)
    model.export({str(tmp_path / "n.onnx")!r}, format="onnx")
    model.to_torch()
net = torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.Linear(4, 6), torch.nn.GELU(),
                          torch.nn.Dropout(0.2), torch.nn.Linear(6, 5), torch.nn.SiLU(),
                          torch.nn.LayerNorm(5), torch.nn.Linear(5, 2))
fastmlp.from_torch(net).to_torch()
print(compiled)
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True)
    assert out.stdout.strip() == "[]"
