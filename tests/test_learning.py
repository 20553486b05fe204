"""Learning actually happens: tiny real problems reach the accuracy the textbook says."""

import numpy as np

from fastmlp import SGD, Dense, Maxout, Sequential, random_search
from fastmlp.datasets import load_digits, make_spiral, make_xor, train_test_split


def test_xor_is_solved():
    X, y = make_xor()
    model = Sequential([Dense(2, 8, activation="tanh"), Dense(8, 2)],
                       optimizer=SGD(lr=0.5, momentum=0.9), seed=0)
    model.fit(X, y, epochs=300, batch_size=4)
    # Class labels: integers (every training row right).
    np.testing.assert_array_equal(model.predict(X), y)
    assert model.evaluate(X, y)["loss"] < 0.05


def test_xor_with_logistic_output():
    X, y = make_xor()
    model = Sequential([Dense(2, 8, activation="tanh"), Dense(8, 1)], loss="binary_cross_entropy",
                       optimizer=SGD(lr=0.5, momentum=0.9), seed=0)
    model.fit(X, y, epochs=300, batch_size=4)
    # Class labels: integers (every training row right).
    np.testing.assert_array_equal(model.predict(X), y)


def test_spiral_linear_fails_and_one_hidden_layer_succeeds():
    X, y = make_spiral(n_per_class=100, n_classes=3, seed=0)
    linear = Sequential([Dense(2, 3)], optimizer=SGD(lr=1.0), seed=0)
    linear.fit(X, y, epochs=200, batch_size=300)
    assert linear.score(X, y) < 0.60
    network = Sequential([Dense(2, 100, activation="relu"), Dense(100, 3)],
                         optimizer=SGD(lr=0.5, momentum=0.9), seed=0)
    network.fit(X, y, epochs=30, batch_size=32)
    assert network.score(X, y) >= 0.95


def test_spiral_with_maxout_and_hinge():
    X, y = make_spiral(n_per_class=100, n_classes=3, seed=0)
    model = Sequential([Maxout(2, 64, pieces=3), Dense(64, 3)], loss="multiclass_hinge",
                       optimizer=SGD(lr=0.1, momentum=0.9), seed=0)
    model.fit(X, y, epochs=60, batch_size=32)
    assert model.score(X, y) >= 0.9


def test_digits_generalise():
    X, y = load_digits()
    assert X.shape == (1797, 64) and set(np.unique(y)) == set(range(10))
    X_train, X_test, y_train, y_test = train_test_split(X, y, seed=0)
    model = Sequential([Dense(64, 64, activation="relu"), Dense(64, 10)],
                       optimizer=SGD(lr=0.1, momentum=0.9), seed=0)
    history = model.fit(X_train, y_train, epochs=10, batch_size=32, validation_data=(X_test, y_test))
    assert history["loss"][-1] < history["loss"][0] / 5
    assert model.score(X_test, y_test) >= 0.93


def test_regression_with_mse():
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, size=(500, 1))
    y = np.sin(X[:, 0])
    model = Sequential([Dense(1, 32, activation="tanh"), Dense(32, 1)], loss="mse",
                       optimizer=SGD(lr=0.05, momentum=0.9), seed=0)
    model.fit(X, y, epochs=100, batch_size=32)
    assert model.score(X, y) > 0.98


def test_random_search_loses_to_sgd():
    X, y = make_spiral(n_per_class=50, seed=1)
    guessed, guessed_loss = random_search(X, y, n_classes=3, trials=200, seed=0)
    assert guessed_loss == guessed.evaluate(X, y)["loss"]
    assert guessed_loss < np.log(3) + 1e-3  # near chance, never worse than the tiny weights
    trained = Sequential([Dense(2, 3)], optimizer=SGD(lr=1.0), seed=0)
    trained.fit(X, y, epochs=100, batch_size=150)
    assert trained.evaluate(X, y)["loss"] < guessed_loss - 0.1
