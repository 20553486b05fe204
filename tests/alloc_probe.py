"""Run in a fresh interpreter by test_allocations.py (NUMBA_NRT_STATS must be set before
numba initialises); prints one JSON object of measurements."""

import json
import os
import sys
import tracemalloc

os.environ["NUMBA_NRT_STATS"] = "1"

import numpy as np  # noqa: E402
from numba.core.runtime import rtsys  # noqa: E402

from fastmlp import SGD, Dense, Maxout, Sequential  # noqa: E402

N_ROWS, N_IN, N_OUT = 1000, 32, 64


def nrt_allocations():
    stats = rtsys.get_allocation_stats()
    return stats.alloc, stats.free


def data(loss):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N_ROWS, N_IN)).astype(np.float32)
    if loss == "mse":
        return X, rng.normal(size=(N_ROWS, N_OUT)).astype(np.float32)
    return X, rng.integers(0, N_OUT, size=N_ROWS).astype(np.int64)


def model(loss, deep):
    # Both have a maxout layer: without one the maxout buffers are passed as None, which
    # numba wraps in no MemInfo, and the two networks would differ in wrappers, not in
    # allocations.
    hidden = [Dense(N_IN, 128, activation="relu"), Maxout(128, 64, pieces=3),
              Dense(64, 64, activation="elu")] if deep else [Maxout(N_IN, 64, pieces=2)]
    return Sequential(hidden + [Dense(64, N_OUT)], loss=loss,
                      optimizer=SGD(lr=0.01, momentum=0.9), seed=0)


def steps(m, X, y, count):
    for step in range(count):
        # alternate a full and a smaller batch: the smaller one uses views of the same buffers
        rows = 40 if step % 2 else 64
        m.train_step(X[:rows], y[:rows])


def nrt_delta(action):
    alloc0, free0 = nrt_allocations()
    action()
    alloc1, free1 = nrt_allocations()
    return alloc1 - alloc0, free1 - free0


def main(loss):
    X, y = data(loss)
    out = {"smallest_buffer_bytes": 40 * N_OUT * 4}
    for deep in (False, True):
        m = model(loss, deep)
        m.fit(X, y, epochs=1, batch_size=64)  # compile and allocate the workspace
        steps(m, X, y, 1000)  # also fills Python's free lists, which tracemalloc counts
        name = "deep" if deep else "shallow"
        out[f"train_step_nrt_{name}"] = nrt_delta(lambda: steps(m, X, y, 100))
        # 1000 = 62 * 16 + 8 = 15 * 64 + 40: both end each epoch on a smaller batch.
        out[f"fit_nrt_{name}_batch16"] = nrt_delta(lambda: m.fit(X, y, epochs=3, batch_size=16))
        out[f"fit_nrt_{name}_batch64"] = nrt_delta(lambda: m.fit(X, y, epochs=3, batch_size=64))
        if deep:
            # Three windows of 200 steps, the smallest figures kept: an array made every step
            # shows in every window, a one-off event in the interpreter (a cache or dict
            # growing somewhere) in one at most.
            peaks, retained = [], []
            for _ in range(3):
                tracemalloc.start()
                base, _ = tracemalloc.get_traced_memory()
                tracemalloc.reset_peak()
                steps(m, X, y, 200)
                current, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                peaks.append(peak - base)
                retained.append(current - base)
            out["train_step_peak_bytes"] = min(peaks)
            out["train_step_retained_bytes"] = min(retained)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
