"""``fastmlp bench``: fastmlp's own throughput on the standard shapes (random data).

For a comparison with PyTorch, JAX and scikit-learn, each in its own process, run
``benchmarks/compare.py`` from the source tree (see docs/performance.md).
"""

import time

import numpy as np

from fastmlp.layers import Dense
from fastmlp.optimizers import SGD
from fastmlp.sequential import Sequential
from fastmlp.threads import get_num_threads

SHAPES = [((2, 100, 3), 32), ((64, 128, 10), 32), ((784, 256, 256, 10), 32),
          ((784, 256, 256, 10), 128), ((1024, 2048, 2048, 10), 512)]


def _model(sizes):
    layers = [Dense(a, b, activation="relu") for a, b in zip(sizes[:-2], sizes[1:-1])]
    return Sequential(layers + [Dense(sizes[-2], sizes[-1])], optimizer=SGD(lr=0.01), seed=0)


def run_bench(quick=False):
    """Print a table of samples/s for ``fit`` (whole epochs) and ``predict`` per shape."""
    budget = 0.2 if quick else 1.0
    print(f"fastmlp bench: {get_num_threads()} thread(s), float32, ReLU MLP, plain SGD, best of 3")
    print(f"{'layer sizes':>20} {'batch':>6} {'fit samples/s':>15} {'predict samples/s':>18}")
    rng = np.random.default_rng(0)
    for sizes, batch in SHAPES:
        model = _model(sizes)
        X = rng.normal(size=(batch * 2, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], size=len(X))
        model.fit(X, y, batch_size=batch, shuffle=False)  # compile (or load the cache)
        start = time.perf_counter()
        model.fit(X, y, batch_size=batch, shuffle=False)
        per_sample = (time.perf_counter() - start) / len(X)
        n = max(batch, int(budget / 3 / per_sample) // batch * batch)
        X = rng.normal(size=(n, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], size=n)
        fit_best = min(_timed(lambda: model.fit(X, y, batch_size=batch, shuffle=False)) for _ in range(3))
        model.predict(X[:batch])
        predict_best = min(_timed(lambda: model.predict(X)) for _ in range(3))
        print(f"{'-'.join(map(str, sizes)):>20} {batch:>6} {n / fit_best:>15,.0f} {n / predict_best:>18,.0f}",
              flush=True)


def _timed(action):
    start = time.perf_counter()
    action()
    return time.perf_counter() - start
