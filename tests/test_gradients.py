"""Central finite differences in float64 for every gradient: the backward kernels alone,
the loss kernels, and whole networks for every activation x loss pair (and maxout)."""

import numpy as np
import pytest

import fastmlp
import reference as ref
from conftest import ACTIVATIONS
from fastmlp import Dense, Maxout, Sequential
from fastmlp.kernels import activations, dense, losses
from fastmlp.losses import get as get_loss

LABEL_LOSSES = ("softmax_cross_entropy", "multiclass_hinge")

EPS = 1e-6
#: Central differences in float64 with step EPS: truncation |f'''| EPS^2 / 6 ~ 1e-13 for the
#: order-1 third derivatives of these small problems, and rounding: the losses, sums of a
#: few dozen order-1 terms, are computed to ~gamma(50) ~ 6e-15, divided by 2 EPS: ~3e-9
#: absolute.  Against gradients whose largest element is >= ~1e-2 (relative_error divides
#: by it), both stay below 1e-6 on any CPU: they depend on float64 arithmetic only.
FD_RELATIVE_ERROR = 1e-6


def numeric_gradient(f, x, eps=EPS):
    """Central differences of the scalar ``f()`` with respect to every element of ``x``."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        saved = x[i]
        x[i] = saved + eps
        up = f()
        x[i] = saved - eps
        down = f()
        x[i] = saved
        grad[i] = (up - down) / (2 * eps)
    return grad


def relative_error(analytic, numeric):
    """Largest absolute difference over the largest magnitude, for the whole array.

    Element by element, a gradient of 1e-4 next to a loss of order 1 already carries
    ~1e-10 / 1e-4 = 1e-6 relative noise from float64 rounding in the differences.
    """
    return float(np.max(np.abs(analytic - numeric)) / max(np.max(np.abs(analytic)), np.max(np.abs(numeric))))


@pytest.mark.parametrize("name,param", ACTIVATIONS)
def test_dense_backward_against_finite_differences(rng, name, param):
    x = rng.normal(size=(4, 5))
    W = rng.normal(size=(5, 3))
    b = rng.normal(size=3)
    g = rng.normal(size=(4, 3))  # random upstream gradient: L = sum(out * g)
    code = activations.ACTIVATIONS[name][0]
    p = 0.0 if param is None else param
    out = np.empty((4, 3))

    def loss():
        dense.dense_forward(x, W, b, code, p, out, 1)
        return float((out * g).sum())

    loss()
    assert np.abs(x @ W + b).min() > 1e-3, "inputs too close to the ReLU kink for a finite-difference check"
    a = out.copy()
    grads = [np.empty_like(W), np.empty_like(b), np.empty_like(x)]
    dense.dense_backward(x, W, a, code, p, g.copy(), *grads, True, 1)
    for analytic, wrt in zip(grads, (W, b, x)):
        assert relative_error(analytic, numeric_gradient(loss, wrt)) < FD_RELATIVE_ERROR


@pytest.mark.parametrize("pieces", [2, 4])
def test_maxout_backward_against_finite_differences(rng, pieces):
    x = rng.normal(size=(4, 5))
    W = rng.normal(size=(5, pieces * 3))
    b = rng.normal(size=pieces * 3)
    g = rng.normal(size=(4, 3))
    z = np.empty((4, pieces * 3))
    out = np.empty((4, 3))
    winner = np.empty((4, 3), dtype=np.int32)

    def loss():
        dense.maxout_forward(x, W, b, pieces, z, out, winner, 1)
        return float((out * g).sum())

    loss()
    grads = [np.empty_like(W), np.empty_like(b), np.empty_like(x)]
    dense.maxout_backward(x, W, winner.copy(), pieces, g, z, *grads, True, 1)
    for analytic, wrt in zip(grads, (W, b, x)):
        assert relative_error(analytic, numeric_gradient(loss, wrt)) < FD_RELATIVE_ERROR


@pytest.mark.parametrize("loss", list(losses.LOSSES))
def test_loss_gradients_against_finite_differences(rng, loss):
    scores = rng.normal(size=(6, 4)) * 2
    labels = rng.integers(0, 4, size=6).astype(np.int64)
    targets = rng.integers(0, 2, size=(6, 4)).astype(float) if loss == "binary_cross_entropy" \
        else rng.normal(size=(6, 4))
    code = losses.LOSSES[loss]
    params = get_loss(loss).kernel_params()
    row_loss = np.empty(6)
    grad = np.empty_like(scores)

    def value():
        return losses.loss_and_grad(code, scores, labels, targets, np.empty_like(scores), row_loss, 1,
                                    params)

    losses.loss_and_grad(code, scores, labels, targets, grad, row_loss, 1, params)
    assert relative_error(grad, numeric_gradient(value, scores)) < FD_RELATIVE_ERROR


def _model(hidden, loss, seed=0):
    n_out = 1 if loss not in LABEL_LOSSES else 3
    model = Sequential([*hidden, Dense(hidden[-1].n_out if hidden else 4, n_out)], loss=loss,
                       dtype=np.float64, seed=seed)
    # Zero biases would put a ReLU row whose inputs are all dead exactly on the next
    # layer's kink (z = 0 + 0); random biases keep the check off the kinks.
    rng = np.random.default_rng(seed)
    weights = model.get_weights()
    model.set_weights([w if i % 2 == 0 else rng.normal(scale=0.5, size=w.shape) for i, w in enumerate(weights)])
    return model


def _data(rng, loss, n=7, n_in=4):
    X = rng.normal(size=(n, n_in))
    if loss in ("softmax_cross_entropy", "multiclass_hinge"):
        return X, rng.integers(0, 3, size=n)
    if loss == "binary_cross_entropy":
        return X, rng.integers(0, 2, size=n).astype(float)
    return X, rng.normal(size=n)


@pytest.mark.parametrize("loss", list(losses.LOSSES))
@pytest.mark.parametrize("name,param", ACTIVATIONS)
def test_gradcheck_every_activation_and_loss(rng, loss, name, param):
    kwargs = {activations.ACTIVATIONS[name][1]: param} if param is not None else {}
    model = _model([Dense(4, 6, activation=name, **kwargs), Dense(6, 5, activation=name, **kwargs)], loss)
    X, y = _data(rng, loss)
    errors = fastmlp.gradcheck(model, X, y)
    assert len(errors) == 6
    # Hinge and the ReLU family are piecewise linear: a random batch is almost surely off
    # the kinks, and then the check is as tight as for the smooth ones.
    assert max(errors) < FD_RELATIVE_ERROR, errors


@pytest.mark.parametrize("loss", list(losses.LOSSES))
def test_gradcheck_maxout(rng, loss):
    model = _model([Maxout(4, 6, pieces=3), Dense(6, 5, activation="tanh")], loss)
    X, y = _data(rng, loss)
    errors = fastmlp.gradcheck(model, X, y)
    assert max(errors) < FD_RELATIVE_ERROR, errors


@pytest.mark.parametrize("loss", list(losses.LOSSES))
def test_backprop_matches_independent_numpy_finite_differences(rng, loss):
    """The library's gradients against differences of the plain-numpy reference network,
    so that neither side of the comparison uses fastmlp's kernels."""
    model = _model([Dense(4, 5, activation="tanh"), Maxout(5, 4, pieces=2),
                    Dense(4, 6, activation="elu", alpha=0.5)], loss)
    X, y = _data(rng, loss)
    model.compute_gradients(X, y)
    analytic = model.get_gradients()
    layers = [dict(W=layer.W.copy(), b=layer.b.copy(), activation=layer.activation,
                   param=layer.activation_param, pieces=layer.pieces) for layer in model.layers]
    y_ref = np.asarray(y).reshape(len(X), -1) if loss not in LABEL_LOSSES else y
    for k, layer in enumerate(layers):
        for j, key in enumerate(("W", "b")):
            numeric = numeric_gradient(lambda: ref.network_loss(layers, X, y_ref, loss), layer[key])
            assert relative_error(analytic[2 * k + j], numeric) < FD_RELATIVE_ERROR


@pytest.mark.parametrize("loss", list(losses.LOSSES))
def test_sample_weighted_backprop_matches_numpy_finite_differences(rng, loss):
    """With sample weights, the gradient is that of ``sum_i w_i loss_i / n`` (Keras's
    convention), differenced on the plain-numpy reference network."""
    model = _model([Dense(4, 5, activation="tanh"), Dense(5, 6, activation="sigmoid")], loss)
    X, y = _data(rng, loss)
    weights = rng.uniform(0, 3, size=len(X))
    weights[1] = 0.0
    model.compute_gradients(X, y, sample_weight=weights)
    analytic = model.get_gradients()
    layers = [dict(W=layer.W.copy(), b=layer.b.copy(), activation=layer.activation,
                   param=layer.activation_param, pieces=layer.pieces) for layer in model.layers]
    y_ref = np.asarray(y).reshape(len(X), -1) if loss not in LABEL_LOSSES else y

    def weighted_loss():
        return ref.weighted_loss(loss, ref.network_forward(layers, X)[-1], y_ref, weights)[0]

    for k, layer in enumerate(layers):
        for j, key in enumerate(("W", "b")):
            numeric = numeric_gradient(weighted_loss, layer[key])
            assert relative_error(analytic[2 * k + j], numeric) < FD_RELATIVE_ERROR


def test_gradcheck_catches_a_wrong_gradient(rng, monkeypatch):
    """gradcheck must be able to fail: corrupt the backward pass and watch it report."""
    from fastmlp.kernels import network

    model = _model([Dense(4, 5, activation="tanh")], "mse")
    X, y = _data(rng, "mse")
    honest = max(fastmlp.gradcheck(model, X, y))
    original = network.compute_gradients

    def doubled(net, *args):
        loss = original(net, *args)
        net.grads[:] *= 2
        return loss

    monkeypatch.setattr(network, "compute_gradients", doubled)
    broken = fastmlp.gradcheck(model, X, y)
    assert honest < FD_RELATIVE_ERROR
    assert min(broken) > 0.3
