"""Adam and AdamW: the kernel against the reference twin, the optimizer objects, learning."""

import numpy as np
import pytest

import reference as ref
from conftest import DTYPES
from tolerances import assert_within, unit_roundoff
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
    bounds = [_AdamBound(n, dtype), _AdamBound(n, np.float64)]  # the kernel's, the reference's
    n_weights = (3 * n) // 4
    for step in range(1, 4):
        grads = rng.normal(size=n).astype(dtype)
        for bound in bounds:
            bound.step(want_p, grads, want_m, want_v, n_weights, 0.01, 0.9, 0.999, 1e-8,
                       weight_decay, decoupled, step)
        want_p, want_m, want_v = ref.adam_update(want_p, grads, want_m, want_v, n_weights, 0.01, 0.9,
                                                 0.999, 1e-8, weight_decay, decoupled, step)
        optim.adam_update(params, grads, m, v, n_weights, dtype(0.01), dtype(0.9), dtype(0.999),
                          dtype(1e-8), dtype(weight_decay), decoupled, step, n_threads)
    ours, theirs = bounds
    assert_within(m, want_m, ours.m + theirs.m, "m")
    assert_within(v, want_v, ours.v + theirs.v, "v")
    assert_within(params, want_p, ours.p + theirs.p, "params")


class _AdamBound:
    """Bounds on the errors of Adam's ``p``, ``m`` and ``v``, carried step by step along the
    exact values (the model of tolerances.py: each operation rounds by at most ``u``).

    Amplifications beyond the operation count: a hyperparameter cast to the dtype,
    ``beta (1 + d)``, gives ``1 - beta`` and ``1 - beta**t`` relative errors of up to
    ``beta / (1 - beta) u`` and ``t`` times that; fastmath's ``reassoc`` lets LLVM compute
    ``(1 - beta) x`` as ``x - beta x`` (seen: float32 ``v`` off by ~1000 u relative on an
    AVX-512 CPU), which costs ``(1 + beta) u |x|``, ``(1 + beta) / (1 - beta)`` u relative to
    the term; together ``kappa = (1 + 2 beta) / (1 - beta)`` (2997 for beta2 = 0.999).  And
    ``sqrt(v_hat)`` meets an error ``E`` as ``E / (2 sqrt(v_hat))``, at most ``sqrt(E)``.
    """

    def __init__(self, n, dtype):
        self.u = unit_roundoff(dtype)
        self.p, self.m, self.v = np.zeros(n), np.zeros(n), np.zeros(n)

    def step(self, p, g, m, v, n_weights, lr, beta1, beta2, eps, wd, decoupled, t):
        u = self.u
        k1, k2 = (1 + 2 * beta1) / (1 - beta1), (1 + 2 * beta2) / (1 - beta2)
        p, g = p.copy(), g.astype(float)
        decays = np.arange(len(p)) < n_weights
        E_p = self.p
        if wd and decoupled:  # p *= 1 - lr wd: 3 roundings (the product, the difference, p times it)
            E_p = E_p + 3 * u * np.abs(p) * decays
            p = np.where(decays, p * (1 - lr * wd), p)
            E_g = np.zeros_like(g)
        elif wd:  # g += wd p: 2 roundings and the cast of wd, on |g| + wd |p|
            E_g = decays * (wd * E_p + 3 * u * (np.abs(g) + wd * np.abs(p)))
            g = np.where(decays, g + wd * p, g)
        else:
            E_g = np.zeros_like(g)
        G = np.abs(g) + E_g
        m_new, v_new = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
        # beta m + (1 - beta) g: 4 roundings and the two casts' amplification
        self.m = (beta1 * self.m + (1 - beta1) * E_g
                  + (4 + k1) * u * (beta1 * np.abs(m) + (1 - beta1) * G))
        self.v = (beta2 * self.v + (1 - beta2) * (2 * G * E_g + E_g ** 2)
                  + (5 + k2) * u * (beta2 * np.abs(v) + (1 - beta2) * G * G))
        c1, c2 = 1 - beta1 ** t, 1 - beta2 ** t
        # step = (lr / c1) m / (sqrt(v) / sqrt(c2) + eps): lr / c1 and sqrt(c2) rounded in
        # float64 then cast (2 roundings each, plus the beta casts' t kappa u), then 4.
        rel_c1, rel_c2 = (2 + t * k1) * u, (3 + t * k2) * u
        root = np.sqrt(v_new)
        E_root = np.minimum(self.v / np.where(root > 0, 2 * root, 1), np.sqrt(self.v)) + u * root
        d = root / np.sqrt(c2) + eps
        E_d = E_root / np.sqrt(c2) + (rel_c2 / 2 + 2 * u) * root / np.sqrt(c2)
        assert (E_d < d).all()
        step = lr / c1 * m_new / d
        E_step = (lr / c1 * (self.m / d + (np.abs(m_new) + self.m) * E_d / (d * (d - E_d)))
                  + (rel_c1 + 3 * u) * np.abs(step))
        self.p = E_p + E_step + u * (np.abs(p) + np.abs(step))


def test_first_adam_step_moves_every_weight_by_lr():
    # Step 1: m_hat = g and v_hat = g**2, so the step is lr * g / (|g| + eps) = lr * sign(g).
    model = Sequential([Dense(3, 2)], loss="mse", optimizer=Adam(lr=0.01), seed=0, dtype=np.float64)
    before = model.params.copy()
    model.train_step(np.array([[1.0, -2.0, 0.5]]), np.array([[1.0, -1.0]]))
    grads = model.flat_gradients
    # lr * g / (|g| + 1e-8): off lr * sign(g) by lr * 1e-8 / |g| (|g| >= 0.1 here) plus a few
    # float64 roundings: 1e-6 relative to the step is far above both, far below any other rule.
    assert np.abs(grads).min() > 0.1
    np.testing.assert_allclose(model.params - before, -0.01 * np.sign(grads), rtol=1e-6)
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
    # float64, one multiply by the rounded 1 - lr wd (and Adam's step of 0 / (0 + eps) = 0):
    # numpy's default rtol=1e-7 is ~1e9 float64 roundings away.
    np.testing.assert_allclose(W1, W * (1 - 0.1 * 0.5))
    np.testing.assert_array_equal(b1, [1.0, -1.0])  # dL/db = 0 exactly: m = v = 0, step 0


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
    assert not np.allclose(a.params, s.params)  # far apart, not a rounding question
    assert a.optimizer.state.shape == (2, a.params.size)
