"""``fastmlp demo``: train on built-in data, print progress and the final accuracy."""

import time

from fastmlp.datasets import load_digits, make_spiral, train_test_split
from fastmlp.layers import Dense
from fastmlp.optimizers import SGD
from fastmlp.sequential import Sequential


def _spiral(seed):
    X, y = make_spiral(n_per_class=100, n_classes=3, seed=seed)
    print("== spiral: 300 points, 3 interleaved classes (CS231n's 2-layer case study)")
    linear = Sequential([Dense(2, 3)], optimizer=SGD(lr=1.0), seed=seed)
    linear.fit(X, y, epochs=200, batch_size=300)
    print(f"linear softmax classifier, 200 epochs: training accuracy {linear.score(X, y):.3f}")
    model = Sequential([Dense(2, 100, activation="relu"), Dense(100, 3)],
                       optimizer=SGD(lr=0.5, momentum=0.9), seed=seed)
    print("2-100-3 ReLU network, SGD(lr=0.5, momentum=0.9), batch 32:")
    model.fit(X, y, epochs=20, batch_size=32, verbose=2)
    return model.score(X, y)


def _digits(seed):
    X, y = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_fraction=0.25, seed=seed)
    print(f"== digits: {len(X_train)} training and {len(X_test)} test images of 8x8 pixels, 10 classes")
    model = Sequential([Dense(64, 128, activation="relu"), Dense(128, 10)],
                       optimizer=SGD(lr=0.1, momentum=0.9), seed=seed)
    print("64-128-10 ReLU network, SGD(lr=0.1, momentum=0.9), batch 32:")
    model.fit(X_train, y_train, epochs=15, batch_size=32, validation_data=(X_test, y_test), verbose=2)
    return model.score(X_test, y_test)


def run_demo(seed=0):
    """Train on the spiral and the digits; print per-epoch progress and final accuracies.

    Returns
    -------
    dict
        ``{"spiral_train_accuracy": float, "digits_test_accuracy": float}``
    """
    start = time.perf_counter()
    spiral = _spiral(seed)
    print(f"spiral: final training accuracy {spiral:.3f}\n")
    digits = _digits(seed)
    print(f"digits: final test accuracy {digits:.3f}")
    print(f"demo finished in {time.perf_counter() - start:.1f} s (the first run includes JIT "
          "compilation; later runs load it from the cache)")
    return {"spiral_train_accuracy": float(spiral), "digits_test_accuracy": float(digits)}
