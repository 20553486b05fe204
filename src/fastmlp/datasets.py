"""Built-in data: nothing to download.

``make_spiral`` and ``make_xor`` generate the classic toy problems; ``load_digits``
reads the small real handwritten-digits set shipped inside the package.
"""

import gzip
from importlib import resources

import numpy as np


def make_spiral(n_per_class=100, n_classes=3, noise=0.2, seed=0):
    """The interleaved spirals of CS231n's two-layer network case study.

    Class ``j``'s points lie at radius ``r in [0, 1]`` and angle ``4j + 4r`` plus Gaussian
    noise: no line separates them, one hidden layer does.

    Returns
    -------
    X : ndarray of float64, shape (n_per_class * n_classes, 2)
    y : ndarray of int64, shape (n_per_class * n_classes,)
    """
    rng = np.random.default_rng(seed)
    X = np.empty((n_per_class * n_classes, 2))
    y = np.empty(n_per_class * n_classes, dtype=np.int64)
    for j in range(n_classes):
        rows = slice(n_per_class * j, n_per_class * (j + 1))
        r = np.linspace(0.0, 1.0, n_per_class)
        t = np.linspace(j * 4.0, (j + 1) * 4.0, n_per_class) + rng.standard_normal(n_per_class) * noise
        X[rows] = np.column_stack([r * np.sin(t), r * np.cos(t)])
        y[rows] = j
    return X, y


def make_xor():
    """The four XOR points: ``X`` (4, 2) in {0,1}, ``y`` (4,) = ``x0 xor x1``."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    return X, np.array([0, 1, 1, 0], dtype=np.int64)


def load_digits():
    """The 1,797 8x8 handwritten digits shipped with fastmlp (see ``data/README.md``).

    Returns
    -------
    X : ndarray of float64, shape (1797, 64)
        Pixel intensities scaled from 0..16 to [0, 1].
    y : ndarray of int64, shape (1797,)
        Digit labels 0..9.
    """
    with resources.files("fastmlp").joinpath("data/digits.csv.gz").open("rb") as raw:
        with gzip.open(raw, "rt") as text:
            table = np.loadtxt(text, delimiter=",")
    return table[:, :-1] / 16.0, table[:, -1].astype(np.int64)


def train_test_split(X, y, test_fraction=0.25, seed=0):
    """Shuffle the rows with ``seed`` and split off the last ``test_fraction`` for testing.

    Returns
    -------
    X_train, X_test, y_train, y_test
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    order = np.random.default_rng(seed).permutation(len(X))
    n_test = max(1, int(round(len(X) * test_fraction)))
    test, train = order[:n_test], order[n_test:]
    return X[train], X[test], y[train], y[test]
