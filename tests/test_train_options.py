"""gelu and silu, the loss objects (label smoothing, Huber, L1) and gradient clipping:
kernels against the plain-numpy twins, gradients against central differences, the API's
checks, the file format and what a model that uses none of them compiles."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastmlp
import reference as ref
from conftest import DTYPES, SHAPES
from test_gradients import FD_RELATIVE_ERROR, numeric_gradient, relative_error
from tolerances import (ELEMENTARY_ROUNDINGS, assert_within, dense_backward_bound,
                        dense_layer_bound, mean_loss_bound, unit_roundoff)
from fastmlp import (SGD, L1, Adam, AdamW, Dense, Huber, MulticlassHinge, Sequential,
                     SoftmaxCrossEntropy, losses)
from fastmlp.config import PARALLEL_MIN_ELEMENTS
from fastmlp.kernels import activations, dense, optim
from fastmlp.kernels import losses as loss_kernels

SMOOTH = ["gelu", "silu"]
PARALLEL_SHAPE = (300, 5, PARALLEL_MIN_ELEMENTS // 300 + 7)


def _dense_inputs(rng, shape, dtype):
    batch, n_in, n_out = shape
    return (rng.normal(size=(batch, n_in)).astype(dtype),
            (rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)).astype(dtype),
            rng.normal(size=n_out).astype(dtype))


# --- gelu and silu kernels -----------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [PARALLEL_SHAPE])
@pytest.mark.parametrize("name", SMOOTH)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_smooth_forward_and_backward_match_reference(rng, dtype, shape, name, n_threads):
    x, W, b = _dense_inputs(rng, shape, dtype)
    code = activations.ACTIVATIONS[name][0]
    out = np.full((shape[0], shape[2]), np.nan, dtype=dtype)
    pre = np.full_like(out, np.nan)
    dense.dense_smooth_forward(x, W, b, code, out, pre, n_threads)
    # The layer's rounding bound (tolerances.dense_layer_bound: the product, the bias add,
    # then f's Lipschitz constant and a few roundings of exp/erf), plus the reference's own.
    z, E_z, _, E_out = dense_layer_bound(x.astype(float), np.zeros(x.shape), W, b, name, None, 1, dtype)
    z64, E_z64, _, E_out64 = dense_layer_bound(x.astype(float), np.zeros(x.shape), W, b, name, None,
                                               1, np.float64)
    assert_within(pre, ref.dense_forward(x, W, b, "identity"), E_z + E_z64, "cached z")
    assert_within(out, ref.dense_forward(x, W, b, name), E_out + E_out64, "activation")

    upstream = rng.normal(size=out.shape).astype(dtype)
    delta = upstream.copy()
    grad_W = np.full(W.shape, np.nan, dtype=dtype)
    grad_b = np.full(b.shape, np.nan, dtype=dtype)
    grad_x = np.full(x.shape, np.nan, dtype=dtype)
    activations.smooth_activation_grad(pre, delta, code, n_threads)
    dense.dense_backward(x, W, out, activations.IDENTITY, dtype(0), delta, grad_W, grad_b, grad_x,
                         True, n_threads)
    want = ref.dense_backward(x, W, b, name, None, upstream)
    _, _, (_, bounds) = dense_backward_bound(x, np.zeros(x.shape), W, z, E_z, E_out, name, None,
                                             upstream, np.zeros(upstream.shape), dtype)
    _, _, (_, bounds64) = dense_backward_bound(x, np.zeros(x.shape), W, z64, E_z64, E_out64, name,
                                               None, upstream, np.zeros(upstream.shape), np.float64)
    for got, w, bound, bound64, what in zip((grad_W, grad_b, grad_x), want, bounds, bounds64, "Wbx"):
        assert_within(got, w, bound + bound64, f"grad_{what}")


@pytest.mark.parametrize("name", SMOOTH)
def test_smooth_backward_against_finite_differences(rng, name):
    x = rng.normal(size=(4, 5)) * 2
    W = rng.normal(size=(5, 3))
    b = rng.normal(size=3)
    g = rng.normal(size=(4, 3))  # random upstream gradient: L = sum(out * g)
    code = activations.ACTIVATIONS[name][0]
    out, pre = np.empty((4, 3)), np.empty((4, 3))

    def loss():
        dense.dense_smooth_forward(x, W, b, code, out, pre, 1)
        return float((out * g).sum())

    loss()
    delta = g.copy()
    grad_W, grad_b, grad_x = np.empty_like(W), np.empty_like(b), np.empty_like(x)
    activations.smooth_activation_grad(pre, delta, code, 1)
    dense.dense_backward(x, W, out, activations.IDENTITY, 0.0, delta, grad_W, grad_b, grad_x, True, 1)
    for analytic, wrt in ((grad_W, W), (grad_b, b), (grad_x, x)):
        assert relative_error(analytic, numeric_gradient(loss, wrt)) < FD_RELATIVE_ERROR


def test_gelu_is_the_exact_erf_form_not_the_tanh_approximation():
    z = np.array([[-3.0, -1.0, -0.1, 0.0, 0.5, 2.0]])
    out, pre = np.empty_like(z), np.empty_like(z)
    dense.dense_smooth_forward(np.eye(1), z, np.zeros(6), activations.GELU, out, pre, 1)
    from scipy.special import ndtr
    # float64, six values: a few roundings of 1e-16 each; tanh's form differs by ~1e-4.
    np.testing.assert_allclose(out, z * ndtr(z), rtol=1e-14, atol=1e-16)
    tanh_form = 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
    assert np.abs(out - tanh_form).max() > 1e-5


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse", "huber", "l1"])
@pytest.mark.parametrize("name", SMOOTH)
def test_gradcheck_gelu_silu_networks(rng, name, loss):
    labels = loss == "softmax_cross_entropy"
    model = Sequential([Dense(4, 6, activation=name), Dense(6, 5, activation="tanh"),
                        Dense(5, 3 if labels else 2, activation=name), Dense(3 if labels else 2, 3 if labels else 2)],
                       loss=loss, dtype=np.float64, seed=1)
    model.set_weights([w if i % 2 == 0 else rng.normal(scale=0.5, size=w.shape)
                       for i, w in enumerate(model.get_weights())])
    X = rng.normal(size=(7, 4))
    y = rng.integers(0, 3, size=7) if labels else rng.normal(size=(7, 2))
    errors = fastmlp.gradcheck(model, X, y)
    assert max(errors) < FD_RELATIVE_ERROR, errors


# --- loss kernels with parameters ----------------------------------------------------------

PARAM_LOSSES = [(SoftmaxCrossEntropy(label_smoothing=0.1), "labels"),
                (SoftmaxCrossEntropy(label_smoothing=0.9), "labels"),
                (Huber(delta=0.3), "targets"), (Huber(delta=2.5), "targets"), (L1(), "targets")]


def _reference_loss(loss, scores, y):
    if isinstance(loss, SoftmaxCrossEntropy):
        return ref.smoothed_cross_entropy(scores, y, loss.label_smoothing)
    if isinstance(loss, Huber):
        return ref.huber(scores, y, loss.delta)
    return ref.l1(scores, y)


@pytest.mark.parametrize("loss,kind", PARAM_LOSSES, ids=repr)
@pytest.mark.parametrize("weighted", [False, True])
def test_parametrised_loss_gradients_against_finite_differences(rng, loss, kind, weighted):
    scores = rng.normal(size=(6, 4)) * 2
    labels = rng.integers(0, 4, size=6).astype(np.int64)
    targets = rng.normal(size=(6, 4))
    weights = rng.uniform(0, 2, size=6)
    row_loss = np.empty(6)
    params = loss.kernel_params()

    def value(grad=None):
        grad = np.empty_like(scores) if grad is None else grad
        mean = loss_kernels.loss_and_grad(loss.code, scores, labels, targets, grad, row_loss, 1, params)
        if weighted:
            mean = loss_kernels.weight_rows(loss.code, weights, grad, row_loss)
        return mean

    grad = np.empty_like(scores)
    got = value(grad)
    assert relative_error(grad, numeric_gradient(value, scores)) < FD_RELATIVE_ERROR
    y = labels if kind == "labels" else targets
    if weighted:
        n = len(scores)
        want = sum(weights[i] * _reference_loss(loss, scores[i:i + 1], y[i:i + 1])[0] for i in range(n)) / n
        want_grad = _reference_loss(loss, scores, y)[1] * weights[:, None]
    else:
        want, want_grad = _reference_loss(loss, scores, y)
    # float64 with terms of order 1: a few roundings per element and a sum of 24 terms.
    bound = 64 * unit_roundoff(np.float64) * (1 + np.abs(scores).max()) ** 2
    assert_within(got, want, bound, "loss")
    assert_within(grad, want_grad, np.full(grad.shape, bound), "gradient")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss,kind", PARAM_LOSSES, ids=repr)
@pytest.mark.parametrize("batch,n_out,n_threads", [(1, 2, 1), (17, 10, 1), (2000, 40, 2)])
def test_parametrised_losses_match_reference(rng, dtype, loss, kind, batch, n_out, n_threads):
    scores = (3 * rng.normal(size=(batch, n_out))).astype(dtype)
    labels = rng.integers(0, n_out, size=batch).astype(np.int64)
    targets = rng.normal(size=(batch, n_out)).astype(dtype)
    grad = np.full_like(scores, np.nan)
    row_loss = np.full(batch, np.nan)
    got = loss_kernels.loss_and_grad(loss.code, scores, labels, targets, grad, row_loss, n_threads,
                                     loss.kernel_params())
    want, want_grad = _reference_loss(loss, scores, labels if kind == "labels" else targets)
    u = unit_roundoff(dtype)
    s = np.abs(scores.astype(float))
    # Per row: n_out exps (or differences), their sum and a log, ELEMENTARY_ROUNDINGS each,
    # relative to the terms' size |s| + 1; per gradient element the same few roundings of
    # a value of at most max(1, delta) / count.  The float64 reference adds its own.
    scale = ELEMENTARY_ROUNDINGS * (n_out + 4) * (u + unit_roundoff(np.float64))
    rows = scale * (s.max(axis=1) + 1) * (n_out if kind != "labels" else 1)
    rows = rows / (n_out if kind != "labels" else 1)
    assert_within(got, want, mean_loss_bound(rows, row_loss), "loss")
    count = batch if kind == "labels" else batch * n_out
    flat = np.full(grad.shape, scale * max(1.0, getattr(loss, "delta", 1.0)) / count)
    if isinstance(loss, L1):  # the sign may flip where d is within rounding of 0
        d = scores.astype(float) - targets.astype(float)
        flat = flat + 2.0 * (np.abs(d) <= 2 * u * (s + np.abs(targets))) / count
    assert_within(grad, want_grad, flat, "gradient")


def test_huber_and_l1_objects_and_names_agree():
    assert losses.get("huber") == Huber(delta=1.0)
    assert losses.get("l1") == L1()
    assert Huber(0.5) != Huber(1.0)
    assert repr(SoftmaxCrossEntropy(label_smoothing=0.25)) == "SoftmaxCrossEntropy(label_smoothing=0.25)"
    model = Sequential([Dense(3, 2)], loss=Huber(delta=0.5))
    assert model.loss == "huber" and model.loss_object == Huber(0.5)
    assert not model.is_classifier and "Huber(delta=0.5)" in repr(model)
    assert Sequential([Dense(3, 2)], loss="l1").loss_object == L1()


# --- clipping kernel -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("max_norm,max_value", [(0.5, None), (1e9, None), (None, 0.1),
                                                (0.7, 0.05), (None, 1e9)])
def test_clip_gradients_matches_reference(rng, dtype, max_norm, max_value):
    grads = rng.normal(size=1000).astype(dtype)
    want, want_norm = ref.clip_gradients(grads, max_norm, max_value)
    got = grads.copy()
    norm = optim.clip_gradients(got, max_norm or 0.0, max_value or 0.0)
    # The norm is summed in float64 whatever the dtype: 1000 terms, gamma(1000) in float64.
    assert abs(norm - want_norm) <= 1000 * unit_roundoff(np.float64) * want_norm
    # The scale factor carries the norm's relative error (the bound above), then is
    # rounded to dtype and multiplied: 2 more roundings of dtype per element.
    relative = 1000 * unit_roundoff(np.float64) + 2 * unit_roundoff(dtype)
    assert_within(got, want, relative * np.abs(want) + 1e-300, "clipped")
    if max_value is not None:
        assert np.abs(got).max() <= dtype(max_value)


def test_clipping_after_the_update_sees_it_and_records_the_norm(rng):
    X, y = rng.normal(size=(16, 3)), rng.integers(0, 2, size=16)
    plain = Sequential([Dense(3, 4, activation="silu"), Dense(4, 2)], optimizer=SGD(lr=0.5),
                       seed=0, dtype=np.float64)
    clipped = Sequential([Dense(3, 4, activation="silu"), Dense(4, 2)],
                         optimizer=SGD(lr=0.5, clip_norm=1e-3), seed=0, dtype=np.float64)
    plain.compute_gradients(X, y)
    raw = np.concatenate([g.ravel() for g in plain.get_gradients()])
    assert plain.apply_gradients() is None
    clipped.compute_gradients(X, y)
    before = [w.copy() for w in clipped.get_weights()]
    norm = clipped.apply_gradients()
    # Same float64 gradient summed in another order: gamma(n_params) relative.
    assert abs(norm - np.linalg.norm(raw)) <= 1e-13 * norm
    step = np.concatenate([(b - a).ravel() for a, b in zip(clipped.get_weights(), before)])
    # lr 0.5 times a gradient of norm 1e-3 / (1 + 1e-6 / norm): float64 roundings only.
    assert abs(np.linalg.norm(step) - 0.5 * 1e-3 * norm / (norm + 1e-6)) < 1e-15
    history = clipped.fit(X, y, epochs=2, batch_size=4, verbose=0)
    assert len(history.history["grad_norm"]) == 2 and all(v > 0 for v in history.history["grad_norm"])
    assert "grad_norm" not in plain.fit(X, y, epochs=1, verbose=0).history


# --- checks before anything changes --------------------------------------------------------

@pytest.mark.parametrize("make,message", [
    (lambda: Huber(delta=-1.0), "delta"),
    (lambda: Huber(delta=0.0), "delta"),
    (lambda: Huber(delta=float("nan")), "delta"),
    (lambda: Huber(delta=float("inf")), "delta"),
    (lambda: SoftmaxCrossEntropy(label_smoothing=1.0), "label_smoothing"),
    (lambda: SoftmaxCrossEntropy(label_smoothing=-0.1), "label_smoothing"),
    (lambda: SoftmaxCrossEntropy(label_smoothing=float("nan")), "label_smoothing"),
    (lambda: SGD(clip_norm=0), "clip_norm"),
    (lambda: SGD(clip_norm=-1.0), "clip_norm"),
    (lambda: Adam(clip_norm=float("nan")), "clip_norm"),
    (lambda: AdamW(clip_value=0.0), "clip_value"),
    (lambda: AdamW(clip_value=float("inf")), "clip_value"),
    (lambda: SGD(clip_norm=True), "clip_norm"),
    (lambda: Sequential([Dense(2, 2)], loss="hubber"), "unknown loss"),
])
def test_bad_values_are_refused_with_their_name(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_loss_type_errors():
    with pytest.raises(TypeError, match="loss must be"):
        Sequential([Dense(2, 2)], loss=3)
    with pytest.raises(TypeError, match="unexpected"):
        losses.get("l1", {"delta": 1.0})


def test_clip_changed_to_a_bad_value_is_refused_before_the_step(rng):
    model = Sequential([Dense(3, 2)], optimizer=SGD(lr=0.1, clip_norm=1.0), seed=0)
    X, y = rng.normal(size=(4, 3)), rng.integers(0, 2, size=4)
    model.train_step(X, y)
    model.optimizer.clip_norm = -2.0
    before = model.get_weights()
    steps = model.optimizer.step_count
    with pytest.raises(ValueError, match="clip_norm"):
        model.train_step(X, y)
    with pytest.raises(ValueError, match="clip_norm"):
        model.fit(X, y, epochs=1)
    assert model.optimizer.step_count == steps
    for a, b in zip(before, model.get_weights()):
        assert np.array_equal(a, b)


# --- the file format -----------------------------------------------------------------------

def test_loss_params_and_clipping_round_trip(tmp_path, rng):
    X, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    model = Sequential([Dense(3, 5, activation="gelu"), Dense(5, 2)], loss=Huber(delta=0.25),
                       optimizer=AdamW(lr=0.01, clip_norm=0.5, clip_value=0.2), seed=3)
    model.fit(X, y, epochs=2, batch_size=8, verbose=0)
    model.save(tmp_path / "m.fmlp")
    back = fastmlp.load(tmp_path / "m.fmlp")
    assert back.loss_object == Huber(delta=0.25)
    assert (back.optimizer.clip_norm, back.optimizer.clip_value) == (0.5, 0.2)
    assert np.array_equal(back.predict(X), model.predict(X))
    # Training goes on identically (same clipping, same state).
    model.fit(X, y, epochs=1, batch_size=8, verbose=0)
    back.fit(X, y, epochs=1, batch_size=8, verbose=0)
    for a, b in zip(model.get_weights(), back.get_weights()):
        assert np.array_equal(a, b)
    smoothing = Sequential([Dense(3, 3)], loss=SoftmaxCrossEntropy(label_smoothing=0.3))
    smoothing.save(tmp_path / "s.fmlp")
    assert fastmlp.load(tmp_path / "s.fmlp").loss_object.label_smoothing == 0.3


def _rewrite_header(path, edit):
    """Rewrite a saved file's header with ``edit(header)`` and a fresh checksum (the layout
    of docs/file-format.md), as an older or a hand-made writer would have written it."""
    import hashlib
    data = open(path, "rb").read()
    n = int.from_bytes(data[8:16], "little")
    header = json.loads(data[16:16 + n])
    edit(header)
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)  # the tensor offsets count from the payload's start
    body = data[:8] + len(text).to_bytes(8, "little") + text + data[16 + n:-32]
    open(path, "wb").write(body + hashlib.sha256(body).digest())


def test_version_1_files_still_load_with_the_defaults(tmp_path):
    model = Sequential([Dense(3, 4, activation="tanh"), Dense(4, 3)], optimizer=SGD(lr=0.3), seed=1)
    model.save(tmp_path / "v1.fmlp")

    def as_version_1(header):
        assert header["format_version"] == 2
        header["format_version"] = 1
        # A default loss writes no loss_params: the file is version 1's but for its number.
        assert "loss_params" not in header["model"]

    _rewrite_header(tmp_path / "v1.fmlp", as_version_1)
    back = fastmlp.load(tmp_path / "v1.fmlp")
    assert back.loss_object == SoftmaxCrossEntropy() and not back.optimizer.clips
    for a, b in zip(model.get_weights(), back.get_weights()):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("edit,message", [
    (lambda h: h["model"].update(loss_params={"delta": -1.0}), "delta"),
    (lambda h: h["model"].update(loss_params={"label_smoothing": 0.1}), "unknown field"),
    (lambda h: h["model"].update(loss_params={"delta": "big"}), "must be a number"),
    (lambda h: h.update(format_version=1), "unknown field"),  # v2 fields in a v1 file
    (lambda h: h["optimizer"]["hyperparameters"].update(clip_norm=0.0), "clip_norm"),
])
def test_bad_loss_params_or_clip_in_a_file_are_refused(tmp_path, edit, message):
    model = Sequential([Dense(3, 2)], loss=Huber(), optimizer=SGD(clip_norm=1.0))
    model.save(tmp_path / "m.fmlp")
    _rewrite_header(tmp_path / "m.fmlp", edit)
    with pytest.raises(fastmlp.FormatError, match=message):
        fastmlp.load(tmp_path / "m.fmlp")


def test_checkpoint_of_another_delta_is_refused(tmp_path, rng):
    X, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 2))
    ckpt = tmp_path / "c.fmlp"
    Sequential([Dense(3, 2)], loss=Huber(0.5), seed=0).fit(X, y, epochs=1, checkpoint=ckpt)
    with pytest.raises(ValueError, match="loss_params"):
        Sequential([Dense(3, 2)], loss=Huber(1.5), seed=0).fit(X, y, epochs=2, checkpoint=ckpt,
                                                               resume=True)


# --- the JIT tax ---------------------------------------------------------------------------

_PROBE = """
import numpy as np
from fastmlp import Sequential, Dense, SGD
from fastmlp.kernels import activations, losses, optim
rng = np.random.default_rng(0)
X = rng.standard_normal((64, 8)).astype(np.float32)
y = rng.integers(0, 3, 64)
model = Sequential([Dense(8, 16, activation="relu"), Dense(16, 3)], optimizer=SGD(lr=0.1), seed=0)
model.fit(X, y, epochs=1, batch_size=16, verbose=0)
model.predict(X)
ws = model.inference_workspace(8)
assert ws.net.pre_act is None and ws.net.loss_params is None
# _param_loss_rows is the compiled unit that holds (inlined) Huber, L1 and smoothed xent.
kernels = [activations._bias_smooth_rows, activations._smooth_grad_rows, losses._param_loss_rows,
           optim.clip_gradients]
print([k.py_func.__name__ for k in kernels if k.signatures])
"""


def test_a_model_without_these_features_compiles_none_of_their_kernels():
    # A fresh interpreter: its dispatchers know only what this model compiled or loaded.
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         env=dict(os.environ), timeout=900)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_multiclass_hinge_object_is_the_name():
    assert Sequential([Dense(2, 3)], loss=MulticlassHinge()).loss == "multiclass_hinge"


# --- the command line ----------------------------------------------------------------------

def test_cli_trains_with_huber_and_clipping(tmp_path, capsys):
    from fastmlp.cli import main
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(120, 3))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", X @ [1.0, -2.0, 0.5])
    data = f"{tmp_path / 'X.npy'}:{tmp_path / 'y.npy'}"
    out = tmp_path / "m.fastmlp"
    assert main(["train", data, "--loss", "huber", "--huber-delta", "0.5", "--clip-norm", "2",
                 "--hidden", "", "--epochs", "30", "--lr", "0.05", "--out", str(out),
                 "--quiet"]) == 0
    model = fastmlp.load(out)
    assert model.loss_object == Huber(delta=0.5) and model.optimizer.clip_norm == 2.0
    capsys.readouterr()
    assert main(["evaluate", str(out), data]) == 0
    assert float(dict(line.split() for line in capsys.readouterr().out.splitlines())["r2"]) > 0.9


@pytest.mark.parametrize("flags,message", [
    (["--label-smoothing", "1.5"], "--label-smoothing: label_smoothing must be in [0.0, 1.0)"),
    (["--label-smoothing", "0.1", "--loss", "mse"], "--label-smoothing goes with"),
    (["--loss", "huber", "--huber-delta", "-1"], "--huber-delta: delta must be"),
    (["--clip-norm", "0"], "--clip-norm: clip_norm must be None or a positive"),
    (["--clip-norm", "nan"], "clip_norm"),
])
def test_cli_bad_values_get_one_line(tmp_path, capsys, flags, message):
    from fastmlp.cli import main
    np.save(tmp_path / "X.npy", np.zeros((4, 2)))
    np.save(tmp_path / "y.npy", np.zeros(4))
    data = f"{tmp_path / 'X.npy'}:{tmp_path / 'y.npy'}"
    assert main(["train", data, "--epochs", "1", "--quiet", *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastmlp: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1


# --- scikit-learn --------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # max_iter is tiny
def test_sklearn_regressor_losses_and_clip_norm(rng):
    from sklearn.base import clone
    from fastmlp.sklearn import MLPClassifier, MLPRegressor
    X = rng.normal(size=(60, 3))
    y = X @ [1.0, -1.0, 0.5] + 0.01 * rng.normal(size=60)
    y[:3] += 50  # outliers, which huber and l1 shrug off
    for loss in ("huber", "l1", Huber(delta=0.5), L1()):
        est = MLPRegressor((8,), loss=loss, clip_norm=5.0, max_iter=5, random_state=0).fit(X, y)
        assert est.model_.loss_object == losses.get(loss)
        assert est.model_.optimizer.clip_norm == 5.0
        twin = clone(est)
        assert twin.get_params()["loss"] == loss and twin.get_params()["clip_norm"] == 5.0
    labels = (X[:, 0] > 0).astype(int)
    clf = MLPClassifier((8,), loss=SoftmaxCrossEntropy(label_smoothing=0.1), clip_norm=1.0,
                        activation="gelu", max_iter=3, random_state=0).fit(X, labels)
    assert clf.model_.loss_object.label_smoothing == 0.1
    assert clf.model_.layers[0].activation == "gelu"
    assert clf.predict_proba(X).shape == (60, 2)


@pytest.mark.parametrize("params,message", [
    (dict(clip_norm=0.0), "clip_norm"), (dict(clip_norm=-1.0), "clip_norm"),
    (dict(clip_norm=float("nan")), "clip_norm"), (dict(loss="hinge"), "loss must be one of"),
    (dict(loss=SoftmaxCrossEntropy()), "loss must be one of"),
])
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_sklearn_bad_values_before_anything_changes(rng, params, message):
    from fastmlp.sklearn import MLPRegressor
    X, y = rng.normal(size=(20, 3)), rng.normal(size=20)
    est = MLPRegressor((4,), max_iter=2, random_state=0).fit(X, y)
    before = [w.copy() for w in est.model_.get_weights()]
    est.set_params(**params)
    with pytest.raises(ValueError, match=message):
        est.partial_fit(X, y)
    for a, b in zip(before, est.model_.get_weights()):
        assert np.array_equal(a, b)
