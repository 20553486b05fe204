"""Adam and AdamW: the kernel against the reference twin, the optimizer objects, learning."""

import numpy as np
import pytest

import reference as ref
from conftest import DTYPES, tolerance
from fastmlp import SGD, Adam, AdamW, Dense, Sequential
from fastmlp.config import PARALLEL_MIN_ELEMENTS
from fastmlp.datasets import make_spiral
from fastmlp.kernels import optim


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("n,n_threads", [(1, 1), (41, 1), (PARALLEL_MIN_ELEMENTS + 5, 2)])
def test_adam_update_matches_reference_over_several_steps(rng, dtype, decoupled, weight_decay, n, n_threads):
    params = rng.normal(size=n).astype(dtype)
    m = np.zeros(n, dtype)
    v = np.zeros(n, dtype)
    want_p, want_m, want_v = params.astype(float), np.zeros(n), np.zeros(n)
    n_weights = (3 * n) // 4
    for step in range(1, 4):
        grads = rng.normal(size=n).astype(dtype)
        want_p, want_m, want_v = ref.adam_update(want_p, grads, want_m, want_v, n_weights, 0.01, 0.9,
                                                 0.999, 1e-8, weight_decay, decoupled, step)
        optim.adam_update(params, grads, m, v, n_weights, dtype(0.01), dtype(0.9), dtype(0.999),
                          dtype(1e-8), dtype(weight_decay), decoupled, step, n_threads)
    tol = tolerance(dtype)
    np.testing.assert_allclose(m, want_m, **tol)
    np.testing.assert_allclose(v, want_v, **tol)
    np.testing.assert_allclose(params, want_p, **tol)


def test_first_adam_step_moves_every_weight_by_lr():
    # Step 1: m_hat = g and v_hat = g**2, so the step is lr * g / (|g| + eps) = lr * sign(g).
    model = Sequential([Dense(3, 2)], loss="mse", optimizer=Adam(lr=0.01), seed=0, dtype=np.float64)
    before = model.params.copy()
    model.train_step(np.array([[1.0, -2.0, 0.5]]), np.array([[1.0, -1.0]]))
    grads = model.flat_gradients
    np.testing.assert_allclose(model.params, before - 0.01 * np.sign(grads), rtol=1e-6)
    assert model.optimizer.step_count == 1


def test_adamw_decays_weights_but_not_biases():
    model = Sequential([Dense(2, 2)], loss="mse", optimizer=AdamW(lr=0.1, weight_decay=0.5), seed=0,
                       dtype=np.float64)
    W, b = model.get_weights()
    model.set_weights([W, np.array([1.0, -1.0])])
    X = np.zeros((1, 2))  # zero input: dL/dW = 0, so only decay moves the weights
    y = np.array([[1.0, -1.0]])  # and the biases already fit: dL/db = 0
    model.train_step(X, y)
    W1, b1 = model.get_weights()
    np.testing.assert_allclose(W1, W * (1 - 0.1 * 0.5))
    np.testing.assert_allclose(b1, [1.0, -1.0])


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=-0.001), "lr"),
    (dict(betas=(1.0, 0.999)), r"betas\[0\]"),
    (dict(betas=(0.9, -0.1)), r"betas\[1\]"),
    (dict(betas=0.9), "betas must be a pair"),
    (dict(eps=0), "eps"),
    (dict(weight_decay=-1), "weight_decay"),
])
def test_bad_adam_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Adam(**kwargs)
    with pytest.raises(ValueError, match=match):
        AdamW(**kwargs)


@pytest.mark.parametrize("optimizer", [Adam(lr=0.01), AdamW(lr=0.01)])
def test_adam_learns_the_spiral(optimizer):
    X, y = make_spiral(n_per_class=100, seed=0)
    model = Sequential([Dense(2, 100, activation="relu"), Dense(100, 3)], optimizer=optimizer, seed=0)
    model.fit(X, y, epochs=40, batch_size=32)
    assert model.score(X, y) >= 0.95


def test_adam_and_sgd_train_the_same_model_differently():
    X, y = make_spiral(n_per_class=20, seed=0)
    a = Sequential([Dense(2, 8, activation="tanh"), Dense(8, 3)], optimizer=Adam(), seed=0)
    s = Sequential([Dense(2, 8, activation="tanh"), Dense(8, 3)], optimizer=SGD(), seed=0)
    a.fit(X, y, epochs=2)
    s.fit(X, y, epochs=2)
    assert not np.allclose(a.params, s.params)
    assert a.optimizer.state.shape == (2, a.params.size)
