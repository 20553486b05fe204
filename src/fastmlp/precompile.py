"""Compile the kernels ahead of time: ``fastmlp compile`` and :func:`precompile`.

numba compiles a kernel for each combination of argument types it meets, so the cache is
filled by running each combination fastmlp can produce once, on a tiny model: what varies
is the float dtype, whether a network has a maxout, a dropout or a layer-norm layer (their
buffers are ``None`` otherwise, :mod:`fastmlp.workspace`), and the serial or parallel build (the serial one
compiles no ``prange`` driver; :meth:`~fastmlp.workspace.Workspace.kernel_threads`).
Reproducible mode (:func:`fastmlp.set_reproducible`) adds its one-row prediction path.
Within a combination, the optimizer (SGD or Adam) and whether there are sample weights
change the types too (the kernels take None for the optimizer not in use and for "no
weights", and then compile none of its code), so each combination trains with all four
pairs.  Losses, activations and callbacks do not change the types: one run compiles them
all.  Nothing here is timed or checked: the point
is only that every entry point (fit, validation, evaluate, predict, the step API, the
step-by-step path MPI takes) has met its argument types once.
"""

import sys
import time

import numpy as np

from fastmlp.callbacks import CosineAnnealing, ExponentialDecay, ReduceLROnPlateau, StepDecay
from fastmlp.jitcache import cache_directory
from fastmlp.layers import Dense, Dropout, LayerNorm, Maxout
from fastmlp.optimizers import SGD, Adam
from fastmlp.sequential import Sequential
from fastmlp.threads import get_num_threads, get_reproducible, reproducible

DTYPES = ("float32", "float64")
FEATURES = ("dense", "maxout", "dropout", "layer_norm")
BUILDS = ("serial", "parallel")

# A hidden width and batch at which every elementwise pass reaches PARALLEL_MIN_ELEMENTS
# (64 * 1024 = 2**16), so the workspaces choose the parallel build.
_PARALLEL_WIDTH, _PARALLEL_BATCH = 1024, 64
_SERIAL_WIDTH, _SERIAL_BATCH = 8, 8


def _exercise(dtype, feature, build):
    width, batch = (_PARALLEL_WIDTH, _PARALLEL_BATCH) if build == "parallel" else (_SERIAL_WIDTH, _SERIAL_BATCH)
    rng = np.random.default_rng(0)
    n_in, n_classes, n = 4, 3, 2 * batch
    layers = [Dense(n_in, width, activation="relu")]
    if feature == "maxout":
        layers.append(Maxout(width, width, pieces=2))
    elif feature == "dropout":
        layers.append(Dropout(0.5))
    elif feature == "layer_norm":
        layers.append(LayerNorm())
    layers.append(Dense(width, n_classes))
    X = rng.normal(size=(n, n_in)).astype(dtype)
    y = rng.integers(0, n_classes, size=n)
    weights = np.ones(n)
    for optimizer in (SGD(lr=0.01), Adam(lr=0.001)):
        model = Sequential([layer.unbuilt_copy() for layer in layers], optimizer=optimizer,
                           dtype=np.dtype(dtype).type, seed=0)
        # One schedule per fit (each sets the rate); their scalar kernels take float64
        # whatever the model's dtype, so the first combination compiles them for all.
        for schedule in (StepDecay(step_size=1), ExponentialDecay(gamma=0.9),
                         CosineAnnealing(period=2), ReduceLROnPlateau()):
            model.fit(X, y, epochs=1, batch_size=batch, validation_split=0.5,
                      callbacks=[schedule], verbose=0)
        model.fit(X, y, epochs=1, batch_size=batch, sample_weight=weights, verbose=0)
        model.train_step(X[:batch], y[:batch])
        model.train_step(X[:batch], y[:batch], sample_weight=weights[:batch])
        model.count_correct_last_step(y[:batch])
    model.evaluate(X, y)
    model.predict(X)
    model.predict_proba(X)
    with reproducible():
        model.predict(X)
        model.predict_proba(X)


def precompile(dtypes=DTYPES, features=FEATURES, builds=BUILDS, verbose=False):
    """Compile every kernel combination asked for into numba's on-disk cache.

    Parameters
    ----------
    dtypes : iterable of {"float32", "float64"}
    features : iterable of {"dense", "maxout", "dropout", "layer_norm"}
        Networks of Dense layers only, and networks with a maxout, a dropout or a
        layer-norm layer (each alone: a network with several of these kinds is another
        combination, compiled on its first use).
    builds : iterable of {"serial", "parallel"}
        With a single numba thread the parallel build is used only in reproducible mode
        (:func:`fastmlp.set_reproducible`): it is compiled then if that mode is on, and
        skipped otherwise.
    verbose : bool
        Print one line per combination on stderr.

    Returns
    -------
    list of (str, str, str, float)
        ``(dtype, feature, build, seconds)`` for each combination compiled (or loaded).
    """
    done = []
    if verbose:
        print(f"fastmlp compile: cache directory {cache_directory()}", file=sys.stderr, flush=True)
    for dtype in dtypes:
        for feature in features:
            for build in builds:
                if build == "parallel" and get_num_threads() < 2 and not get_reproducible():
                    if verbose:
                        print(f"fastmlp compile: {dtype} {feature} parallel: skipped (one "
                              "thread runs it only in reproducible mode: --reproducible "
                              "compiles it)", file=sys.stderr, flush=True)
                    continue
                started = time.perf_counter()
                _exercise(dtype, feature, build)
                seconds = time.perf_counter() - started
                done.append((dtype, feature, build, seconds))
                if verbose:
                    print(f"fastmlp compile: {dtype} {feature} {build}: {seconds:.1f} s",
                          file=sys.stderr, flush=True)
    return done
