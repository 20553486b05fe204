"""One SGD step on a 2-2-1 ReLU network, worked out by hand."""

import numpy as np
import pytest

from fastmlp import SGD, Dense, Sequential
from tolerances import eps

# x = [1, 2], target t = 1, loss = MSE (mean of (s - t)^2, no 1/2 factor).
X = np.array([[1.0, 2.0]])
T = np.array([1.0])
W1 = np.array([[0.1, 0.2],
               [0.3, -0.4]])
B1 = np.array([0.0, 0.1])
W2 = np.array([[0.5],
               [0.6]])
B2 = np.array([0.2])
# Forward:
#   z1 = x @ W1 + b1 = [1*0.1 + 2*0.3 + 0.0, 1*0.2 + 2*(-0.4) + 0.1] = [0.7, -0.5]
#   a1 = relu(z1)                                                    = [0.7,  0.0]
#   s  = a1 @ W2 + b2 = 0.7*0.5 + 0.0*0.6 + 0.2                      = 0.55
#   L  = (0.55 - 1)^2                                                = 0.2025
# Backward:
#   dL/ds  = 2 (0.55 - 1) / 1                                        = -0.9
#   dW2    = a1.T @ dL/ds = [[0.7 * -0.9], [0.0 * -0.9]]             = [[-0.63], [0.0]]
#   db2    = [-0.9]
#   dL/da1 = dL/ds * W2.T = [-0.9*0.5, -0.9*0.6]                     = [-0.45, -0.54]
#   dL/dz1 = dL/da1 * relu'(z1) = [-0.45 * 1, -0.54 * 0]             = [-0.45, 0.0]
#   dW1    = x.T @ dL/dz1 = [[1*-0.45, 1*0], [2*-0.45, 2*0]]         = [[-0.45, 0.0], [-0.9, 0.0]]
#   db1    = [-0.45, 0.0]
LOSS = 0.2025
GRADS = [np.array([[-0.45, 0.0], [-0.9, 0.0]]), np.array([-0.45, 0.0]),
         np.array([[-0.63], [0.0]]), np.array([-0.9])]


def _model(optimizer, dtype=np.float64):
    model = Sequential([Dense(2, 2, activation="relu"), Dense(2, 1)], loss="mse", optimizer=optimizer,
                       dtype=dtype)
    model.set_weights([W1, B1, W2, B2])
    return model


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_plain_sgd_step(dtype):
    # Each figure above is a handful (<= 8) of operations on values <= 1, and the inputs
    # are decimals rounded once to the dtype: within 16 eps of the written-out number.
    tol = 16 * eps(dtype)
    model = _model(SGD(lr=0.1), dtype)
    loss = model.train_step(X, T)
    assert loss == pytest.approx(LOSS, abs=tol)
    for got, want in zip(model.get_gradients(), GRADS):
        np.testing.assert_allclose(got, want, atol=tol)
    # W <- W - 0.1 * dW:
    #   W1 = [[0.1 + 0.045, 0.2], [0.3 + 0.09, -0.4]] = [[0.145, 0.2], [0.39, -0.4]]
    #   b1 = [0.0 + 0.045, 0.1]                        = [0.045, 0.1]
    #   W2 = [[0.5 + 0.063], [0.6]]                    = [[0.563], [0.6]]
    #   b2 = [0.2 + 0.09]                              = [0.29]
    want = [[[0.145, 0.2], [0.39, -0.4]], [0.045, 0.1], [[0.563], [0.6]], [0.29]]
    for got, w in zip(model.get_weights(), want):
        np.testing.assert_allclose(got, w, atol=tol)


def test_one_sgd_step_with_weight_decay_spares_the_biases():
    model = _model(SGD(lr=0.1, weight_decay=0.5))
    loss = model.train_step(X, T)
    assert loss == pytest.approx(LOSS, abs=16 * eps(np.float64))  # the data loss only (as above)
    # g_W = dW + 0.5 W:
    #   W1: [[-0.45 + 0.05, 0.0 + 0.1], [-0.9 + 0.15, 0.0 - 0.2]] = [[-0.4, 0.1], [-0.75, -0.2]]
    #       W1 - 0.1 g = [[0.14, 0.19], [0.375, -0.38]]
    #   W2: [[-0.63 + 0.25], [0.0 + 0.3]] = [[-0.38], [0.3]] -> [[0.538], [0.57]]
    # biases as without decay: b1 = [0.045, 0.1], b2 = [0.29]
    want = [[[0.14, 0.19], [0.375, -0.38]], [0.045, 0.1], [[0.538], [0.57]], [0.29]]
    for got, w in zip(model.get_weights(), want):
        np.testing.assert_allclose(got, w, atol=16 * eps(np.float64))  # as above


def test_two_momentum_steps_follow_pytorch():
    # Step 1: v = g (the buffer starts at 0), W -= lr v: the plain step above.
    # Step 2 on the same sample: v = 0.9 g1 + g2, W -= lr v.  g2 comes from the reference
    # twin below rather than by hand; what is checked is the momentum bookkeeping.
    model = _model(SGD(lr=0.1, momentum=0.9))
    model.train_step(X, T)
    after_first = model.get_weights()
    g1 = GRADS
    model.compute_gradients(X, T)
    g2 = model.get_gradients()
    model.apply_gradients()
    for got, w, a, b in zip(model.get_weights(), after_first, g1, g2):
        # float64, the same few operations on values <= 1 on both sides.
        np.testing.assert_allclose(got, w - 0.1 * (0.9 * a + b), atol=16 * eps(np.float64))
    assert model.optimizer.step_count == 2
