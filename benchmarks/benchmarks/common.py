"""Fixed-seed data and models shared by the benchmarks."""

import timeit

import numba
import numpy as np

import fastmlp
from fastmlp import SGD, Dense, Sequential

DTYPES = {"float32": np.float32, "float64": np.float64}

#: Timed runs per ``track_`` measurement, of which the fastest counts.
#: tests/test_benchmarks.py, which checks that every benchmark runs, sets 1.
REPEATS = 3

#: At most this many batches of data per network (None: as each benchmark asks).
#: tests/test_benchmarks.py sets 2: two batches run the same code as 8 or 64.
MAX_BATCHES = None

#: The shapes of the comparison harness (benchmarks/compare.py): (layer sizes, batch).
NETWORKS = {
    "2-100-3/b32": ((2, 100, 3), 32),
    "64-128-10/b32": ((64, 128, 10), 32),
    "784-256-256-10/b32": ((784, 256, 256, 10), 32),
    "784-256-256-10/b128": ((784, 256, 256, 10), 128),
    "1024-2048-2048-10/b512": ((1024, 2048, 2048, 10), 512),
}


def fastest(fn, number=1):
    """Seconds per call of ``fn``: the fastest of ``REPEATS`` runs of ``number`` calls."""
    return min(timeit.repeat(fn, number=number, repeat=REPEATS)) / number


def use_threads(n):
    """Give fastmlp ``n`` threads (numba's pool; its BLAS stays on one).  asv skips a
    benchmark whose setup raises NotImplementedError: so on a machine with fewer cores."""
    if n > numba.config.NUMBA_NUM_THREADS:
        raise NotImplementedError(f"{n} threads asked, {numba.config.NUMBA_NUM_THREADS} available")
    fastmlp.set_num_threads(n)


def network(name, dtype=np.float32, n_batches=4):
    """A ReLU MLP for ``NETWORKS[name]`` with plain SGD, and ``n_batches`` (at most
    ``MAX_BATCHES``) of random data."""
    sizes, batch = NETWORKS[name]
    if MAX_BATCHES is not None:
        n_batches = min(n_batches, MAX_BATCHES)
    layers = [Dense(a, b, activation="relu") for a, b in zip(sizes[:-2], sizes[1:-1])]
    layers.append(Dense(sizes[-2], sizes[-1]))
    model = Sequential(layers, optimizer=SGD(lr=0.01), seed=0, dtype=dtype)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(batch * n_batches, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], size=len(X)).astype(np.int64)
    return model, X, y, batch


def step_flops(sizes, batch):
    """Floating-point operations of one step's matrix products: forward, dW, and dX for
    every layer but the first."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    forward = sum(2 * batch * a * b for a, b in pairs)
    return 2 * forward + sum(2 * batch * a * b for a, b in pairs[1:])
