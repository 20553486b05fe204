"""Thread counts: 1 and 2 threads agree; the settings reach numba and BLAS; concurrent use."""

import concurrent.futures
import multiprocessing
import subprocess
import sys

import numba
import numpy as np
import pytest
import threadpoolctl

import fastmlp
from fastmlp import SGD, Dense, Dropout, LayerNorm, Maxout, Sequential
from fastmlp.config import PARALLEL_MIN_ELEMENTS
from fastmlp.threads import REPRODUCIBLE_SPLIT, work_split
import reference as ref
from tolerances import assert_within, gamma, gradient_bound, loss_bound, mean_loss_bound, output_bound

BATCH = 256
WIDE = PARALLEL_MIN_ELEMENTS // BATCH + 44  # every hidden layer takes the parallel path


def _train():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(BATCH * 2 + 17, 20))
    y = rng.integers(0, 10, size=len(X))
    model = Sequential([Dense(20, WIDE, activation="relu"), Maxout(WIDE, WIDE, pieces=2),
                        Dense(WIDE, 10)], optimizer=SGD(lr=0.05, momentum=0.9), seed=0)
    model.fit(X, y, epochs=2, batch_size=BATCH)
    return model, X, y


needs_two_threads = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")


@needs_two_threads
def test_one_and_two_threads_agree_to_rounding():
    """Each parallel kernel splits its output into blocks that one thread writes whole and
    splits no sum; the elementwise kernels are bitwise thread-independent (test_kernels);
    but OpenBLAS picks its kernels by block size, so a product split over 2 threads may
    round differently from the unsplit one.  So one forward and one backward pass from the
    same state agree within twice the derived rounding bounds (each is within them of the
    exact result).  Over many steps such differences feed back through training and are
    not bounded a priori, so trajectories are compared only at one thread count."""
    with fastmlp.threads(2):
        model, X, y = _train()
        again, _, _ = _train()
    # Same thread count, same shapes: the same kernels in the same order, bitwise.
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)

    batch, labels = X[:BATCH], y[:BATCH]
    got = {}
    for n in (1, 2):
        with fastmlp.threads(n):
            loss = model.compute_gradients(batch, labels)
            got[n] = model.decision_function(X), loss, model.get_gradients()
    exact, bound = output_bound(model, X)
    for n in (1, 2):
        assert_within(got[n][0], exact, bound, f"scores on {n} threads")
    assert_within(got[1][0], got[2][0], 2 * bound, "scores on 1 and 2 threads")

    # The mean loss: the score bounds carried through the loss (tolerances.loss_bound).
    scores, score_bound = output_bound(model, batch)
    row_bound, _ = loss_bound(model.loss, scores, score_bound, labels, None, model.dtype)
    bound = mean_loss_bound(row_bound, ref.softmax_cross_entropy(scores, labels)[0] * np.ones(BATCH))
    assert abs(got[1][1] - got[2][1]) <= 2 * bound, (got[1][1], got[2][1], bound)

    want, grad_bounds = gradient_bound(model, batch, labels)
    for k, (g1, g2, w, b) in enumerate(zip(got[1][2], got[2][2], want, grad_bounds)):
        assert_within(g1, w, b, f"gradient {k} on 1 thread")
        assert_within(g2, w, b, f"gradient {k} on 2 threads")
        assert_within(g1, g2, 2 * b, f"gradient {k} on 1 and 2 threads")


@needs_two_threads
def test_the_parallel_build_compiles_each_row_kernel_once():
    # A layer too small to split calls a row kernel on all its rows, a wide layer's driver
    # calls it on each chunk: one compilation for both.  A literal first row ``0`` or flag
    # ``False`` (numba's Literal types) would compile one more copy per kernel each.
    from numba.core import types

    from fastmlp.compiled_only import compiled_without_entry_point
    from fastmlp.jitcache import own_dispatchers
    from fastmlp.kernels import activations, blas, dense, dropout, layer_norm, losses, network

    with fastmlp.threads(2):
        model, X, _ = _train()
        model.predict(X)
    assert model._train_workspace.kernel_threads(2) == 2  # the parallel build ran
    used = [activations._bias_activation_rows, activations._activation_grad_rows,
            dense._maxout_select_rows, dense._column_sum_range, losses._loss_rows]
    assert all(_compiled_signatures(kernel) for kernel in used)
    # (optim's Adam range has one caller, the whole-array one, and may keep its literal.)
    row_kernels = [kernel for module in (activations, blas, dense, dropout, layer_norm, losses,
                                         network)
                   for kernel in own_dispatchers(module) if compiled_without_entry_point(kernel)]
    for kernel in row_kernels:
        for signature in _compiled_signatures(kernel):
            assert not any(isinstance(t, types.Literal) for t in signature), (kernel, signature)
    # Every argument of the BLAS call is a scalar: one compilation for every product.
    assert len(_compiled_signatures(blas._blas_call)) == 1, _compiled_signatures(blas._blas_call)


def _compiled_signatures(kernel):
    # What this process compiled, and what numba's cache holds: a process that loaded a
    # caller from the cache compiled none of its callees, an earlier one did.
    signatures = set(kernel.signatures)
    cache_file = getattr(kernel._cache, "_cache_file", None)  # none when compiling in memory
    if cache_file is not None:
        signatures.update(key[0] for key in cache_file._load_index())
    return signatures


def _reproducible_fit(n_threads, layers):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(BATCH * 2 + 17, 20))
    y = rng.integers(0, 10, size=len(X))
    with fastmlp.reproducible(), fastmlp.threads(n_threads):
        model = Sequential([layer.unbuilt_copy() for layer in layers],
                           optimizer=SGD(lr=0.05, momentum=0.9), seed=0)
        history = model.fit(X, y, epochs=2, batch_size=BATCH, validation_split=0.2, verbose=0)
        ws = model._train_workspace
        assert ws.kernel_threads(work_split()) == REPRODUCIBLE_SPLIT  # the threaded code ran
        loss = model.compute_gradients(X[:BATCH], y[:BATCH])
    return model, history, loss


@needs_two_threads
@pytest.mark.parametrize("layers", [
    [Dense(20, WIDE, activation="relu"), Maxout(WIDE, WIDE, pieces=2), Dense(WIDE, 10)],
    [Dense(20, WIDE, activation="gelu"), LayerNorm(), Dropout(0.25), Dense(WIDE, 10)],
], ids=["maxout", "layer_norm-dropout"])
def test_reproducible_mode_trains_bitwise_the_same_on_one_and_two_threads(layers):
    """In reproducible mode every product is cut into blocks chosen by its shape alone and
    every elementwise pass runs the same threaded code, on one thread too: a fit (momentum,
    validation, then the step API) on 1 and on 2 threads ends bitwise equal.  Outside the
    mode OpenBLAS's Haswell kernels round a block of a split product differently from the
    whole (1.5e-8 apart after such a fit), which the other-family run of this file
    (test_blas_families) exercises."""
    one, history_one, loss_one = _reproducible_fit(1, layers)
    two, history_two, loss_two = _reproducible_fit(2, layers)
    for a, b in zip(one.get_weights() + one.get_gradients(), two.get_weights() + two.get_gradients()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(one.optimizer.state, two.optimizer.state)
    assert history_one.history == history_two.history
    assert loss_one == loss_two


@needs_two_threads
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reproducible_predictions_of_a_row_do_not_depend_on_the_other_rows(dtype):
    """A row's prediction alone, among 1500 other rows, in another order, on 1 or 2 threads
    and from another input layout or dtype: bitwise the same in reproducible mode.  Outside
    it the products' shapes follow the rows predicted together, and OpenBLAS rounds a row
    differently with the shape and with the row's place in its register tile (seen here:
    1e-6 apart in float32)."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1500, 64)).astype(dtype)
    model = Sequential([Dense(64, WIDE, activation="relu"), Dense(WIDE, 10)], dtype=dtype, seed=0)
    order = rng.permutation(len(X))
    with fastmlp.reproducible():
        for method in (model.decision_function, model.predict_proba, model.predict):
            with fastmlp.threads(2):
                full = method(X)
                shuffled = method(X[order])
                fortran = method(np.asfortranarray(X))
                other_dtype = method(X.astype(np.float64)) if dtype == np.float32 else full
            with fastmlp.threads(1):
                alone = [method(X[i:i + 1])[0] for i in (0, 1, 11, 12, 63, 64, 1499)]
                middle = method(X[700:833])
            np.testing.assert_array_equal(shuffled, full[order])
            np.testing.assert_array_equal(fortran, full)
            np.testing.assert_array_equal(other_dtype, full)
            np.testing.assert_array_equal(np.stack(alone), full[[0, 1, 11, 12, 63, 64, 1499]])
            np.testing.assert_array_equal(middle, full[700:833])
    # The mode changes how rows are computed, not what: within rounding of the batched call.
    batched = model.decision_function(X)
    with fastmlp.reproducible():
        rows_alone = model.decision_function(X)
    exact, bound = output_bound(model, X)
    assert_within(rows_alone, exact, bound, "scores in reproducible mode")
    assert_within(batched, exact, bound, "scores outside it")


def test_reproducible_mode_setting_checks_its_argument_and_restores():
    assert fastmlp.get_reproducible() is False
    assert work_split() == fastmlp.get_num_threads()
    with pytest.raises(TypeError, match="True or False"):
        fastmlp.set_reproducible(1)
    for bad in (0, 2.0, True, "4"):
        with pytest.raises(ValueError, match="split must be an integer >= 1"):
            fastmlp.set_reproducible(True, split=bad)
    assert fastmlp.get_reproducible() is False  # nothing changed
    with fastmlp.reproducible(split=8):
        assert work_split() == 8
    with pytest.raises(RuntimeError):
        with fastmlp.reproducible():
            assert fastmlp.get_reproducible() is True
            assert work_split() == REPRODUCIBLE_SPLIT
            raise RuntimeError
    assert fastmlp.get_reproducible() is False
    fastmlp.set_reproducible(True)
    try:
        with fastmlp.reproducible(False):
            assert work_split() == fastmlp.get_num_threads()
        assert fastmlp.get_reproducible() is True
    finally:
        fastmlp.set_reproducible(False)


def _blas_threads():
    return {lib["filepath"]: lib["num_threads"] for lib in threadpoolctl.threadpool_info()
            if lib["user_api"] == "blas"}


def test_threads_sets_numba_keeps_its_blas_on_one_thread_and_restores():
    fastmlp.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    with fastmlp.threads(1):
        assert fastmlp.get_num_threads() == 1 == numba.get_num_threads()
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    blas = _blas_threads()
    # The BLAS numba calls is SciPy's copy (scipy.libs in the PyPI wheels): one thread.
    scipy_blas = [path for path in blas if "scipy.libs" in path or "/scipy/" in path]
    assert scipy_blas and all(blas[path] == 1 for path in scipy_blas)


def test_set_num_threads_checks_its_argument():
    for bad in (0, -1, numba.config.NUMBA_NUM_THREADS + 1, 1.5, True):
        with pytest.raises(ValueError, match="thread count must be an integer"):
            fastmlp.set_num_threads(bad)


def _small_model(seed):
    return Sequential([Dense(8, 32, activation="tanh"), Dense(32, 4)], seed=seed)


def test_predict_from_several_threads_while_another_model_trains():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 8))
    model = _small_model(0)
    expected = model.predict_proba(X)
    trainee = _small_model(1)
    y = rng.integers(0, 4, size=len(X))
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        training = pool.submit(trainee.fit, X, y, epochs=3, batch_size=64)
        results = list(pool.map(lambda _: model.predict_proba(X), range(8)))
        training.result()
    # Every call runs the same serial kernels on the same chunk shapes (this model's
    # products stay under PARALLEL_MIN_FLOPS, whatever each thread's count): bitwise.
    for result in results:
        np.testing.assert_array_equal(result, expected)


def test_threads_predicting_rows_of_many_sizes_at_once_never_share_buffers():
    # Each thread keeps its own inference workspaces between calls: if two threads shared
    # one, a call would read rows another call wrote and its result would differ.
    rng = np.random.default_rng(3)
    model = _small_model(2)
    inputs = [rng.normal(size=(n, 8)) for n in (1, 2, 3, 5, 32, 33, 200) * 6]
    expected = [model.predict_proba(x) for x in inputs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(model.predict_proba, inputs))
    # The same serial kernels on the same shapes as the calls above: bitwise.
    for result, want in zip(results, expected):
        np.testing.assert_array_equal(result, want)


def _wide_model():
    return Sequential([Dense(8, WIDE, activation="tanh"), Dense(WIDE, 4)], seed=0)


def _predict_in_child(queue):
    X = np.random.default_rng(2).normal(size=(BATCH, 8))
    queue.put(_wide_model().predict_proba(X))


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_multiprocessing_children_predict_like_the_parent(method):
    """The parent has already run parallel kernels; a forked or spawned child runs them too."""
    _train_parent_once()
    X = np.random.default_rng(2).normal(size=(BATCH, 8))
    expected = _wide_model().predict_proba(X)
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(target=_predict_in_child, args=(queue,))
    child.start()
    try:
        result = queue.get(timeout=120)
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    # A forked child runs the kernels serially (GNU OpenMP is not fork-safe), so its
    # products may take other BLAS kernels: the scores agree within twice the derived
    # bound, and softmax, 1/2-Lipschitz per output in the max norm of the scores (plus its
    # own roundings), carries that into the probabilities.
    model = _wide_model()
    _, bound = output_bound(model, X)
    D = bound.max(axis=1, keepdims=True)
    proba_bound = expected * np.expm1(2 * D) + gamma(bound.shape[1] + 4, model.dtype) * expected
    assert_within(result, expected, 2 * proba_bound, "probabilities of the child")


def _fit_reproducibly_in_child(queue):
    rng = np.random.default_rng(2)
    model = _wide_model()
    before = model.get_weights()
    try:
        with fastmlp.reproducible():
            model.fit(rng.normal(size=(BATCH, 8)), rng.integers(0, 4, size=BATCH), epochs=1,
                      batch_size=BATCH, verbose=0)
        queue.put(("trained", None))
    except RuntimeError as exc:
        unchanged = all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
        queue.put((str(exc), unchanged))


def test_reproducible_mode_in_a_child_forked_after_openmp_is_a_clear_error():
    """A forked child of a parent that ran numba's GNU OpenMP pool must not start it (the
    child would be killed); reproducible mode needs the threaded kernels, so it says so,
    before any weight changes, instead of crashing."""
    _train_parent_once()
    if numba.threading_layer() != "omp":
        pytest.skip(f"numba's threading layer is {numba.threading_layer()}, not GNU OpenMP: "
                    "a forked child may run it")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_fit_reproducibly_in_child, args=(queue,))
    child.start()
    try:
        message, unchanged = queue.get(timeout=120)
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    assert "'spawn' or 'forkserver'" in message, message
    assert unchanged


def _train_parent_once():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(BATCH, 20))
    Sequential([Dense(20, WIDE, activation="relu"), Dense(WIDE, 3)], seed=0).fit(
        X, rng.integers(0, 3, size=BATCH), batch_size=BATCH)


def test_threading_layer_is_reported():
    code = ("import numpy as np, numba, fastmlp; from fastmlp import Dense, Sequential;"
            "m = Sequential([Dense(20, 400, activation='relu'), Dense(400, 3)], seed=0);"
            "m.fit(np.ones((256, 20)), np.zeros(256, int), batch_size=256);"
            "print(numba.threading_layer())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in {"omp", "tbb", "workqueue"}


def test_the_serial_build_is_chosen_only_where_no_kernel_would_split():
    # Workspace.kernel_threads passes None (the serial build) only when every kernel would
    # run serially anyway.  The bias gradient's column sums split over columns, so a single
    # row of a layer 2**16 wide takes the parallel path and needs the parallel build.
    from fastmlp.workspace import Workspace, layer_table

    def threads_for(layers, rows):
        arch, act_params, _, n_params = layer_table(layers, np.float32)
        ws = Workspace(arch, act_params, np.zeros(n_params, np.float32), rows, 0, training=False)
        return ws.kernel_threads(2), ws.kernel_threads(1)

    assert threads_for([Dense(4, PARALLEL_MIN_ELEMENTS), Dense(PARALLEL_MIN_ELEMENTS, 3)], 1) == (2, None)
    assert threads_for([Dense(4, 8), Dense(8, 3)], 32) == (None, None)
    assert threads_for([Dense(20, WIDE), Dense(WIDE, 10)], BATCH) == (2, None)


_BLAS_WITHOUT_SCIPY_LINALG = """
import json, sys
import numpy as np
import fastmlp
from fastmlp import SGD, Dense, Sequential

rng = np.random.default_rng(0)
X = rng.normal(size=(40, 6))
y = rng.integers(0, 3, size=len(X))
scores = {}
fastmlp.set_num_threads(1)
for dtype in (np.float32, np.float64):
    model = Sequential([Dense(6, 16, activation="tanh"), Dense(16, 3)], optimizer=SGD(0.1),
                       seed=0, dtype=dtype)
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    # 40 rows: products through gemm; one row: through gemv.
    scores[np.dtype(dtype).name] = [model.decision_function(X).tolist(),
                                    model.decision_function(X[:1]).tolist()]
loaded_linalg = "scipy.linalg" in sys.modules
import scipy.linalg
import scipy.linalg.cython_blas
import threadpoolctl
print(json.dumps(dict(
    scores=scores, loaded_linalg=loaded_linalg,
    capi=sorted(name for name in ("sgemm", "dgemm", "sgemv", "dgemv")
                if name in scipy.linalg.cython_blas.__pyx_capi__),
    solve=scipy.linalg.solve(np.diag([2.0, 4.0]), np.ones(2)).tolist(),
    blas_threads={lib["filepath"]: lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                  if lib["user_api"] == "blas"})))
"""


def test_the_blas_integer_width_check_is_numbas(monkeypatch):
    # fastmlp.blas_library checks the width of SciPy's BLAS integers against numba's
    # helpers itself (numba's own check comes with its compiler, which a warm start does
    # not load): it must read both as numba does, and refuse a mismatch by name.
    from numba.np import linalg as numba_linalg

    from fastmlp import blas_library

    assert blas_library._blas_integers_are_64_bit() == numba_linalg._lapack_runtime_is_ilp64()
    assert blas_library._helpers_take_64_bit_integers() == numba_linalg._LAPACK_BUILD_ILP64
    blas_library._check_integer_width()  # this install agrees: numba's own check passes
    numba_linalg._check_lapack_int_width()
    monkeypatch.setattr(blas_library, "_blas_integers_are_64_bit",
                        lambda: not numba_linalg._LAPACK_BUILD_ILP64)
    with pytest.raises(RuntimeError, match="numba's BLAS helpers take .* integers but SciPy's "
                                           "cython_blas takes .* ones"):
        blas_library._check_integer_width()


def test_training_loads_its_blas_without_scipy_linalg_which_then_imports_as_usual():
    """fastmlp loads SciPy's BLAS module on its own (fastmlp.blas_library), not through the
    0.13 s import of ``scipy.linalg``: training and predicting with either dtype, by gemm
    and gemv, must leave ``scipy.linalg`` unimported, compute what this process computes,
    and leave ``scipy.linalg`` (its ``cython_blas`` attribute too) importable and working."""
    import json

    out = subprocess.run([sys.executable, "-c", _BLAS_WITHOUT_SCIPY_LINALG], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    child = json.loads(out.stdout)
    assert not child["loaded_linalg"]
    assert child["capi"] == ["dgemm", "dgemv", "sgemm", "sgemv"]
    assert child["solve"] == [0.5, 0.25]
    scipy_blas = {path: n for path, n in child["blas_threads"].items()
                  if "scipy.libs" in path or "/scipy/" in path}
    assert scipy_blas and set(scipy_blas.values()) == {1}
    # The same library on the same CPU and one thread here too: bitwise the same scores.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6))
    y = rng.integers(0, 3, size=len(X))
    with fastmlp.threads(1):
        for dtype in (np.float32, np.float64):
            model = Sequential([Dense(6, 16, activation="tanh"), Dense(16, 3)],
                               optimizer=SGD(0.1), seed=0, dtype=dtype)
            model.fit(X, y, epochs=2, batch_size=16, verbose=0)
            assert child["scores"][np.dtype(dtype).name] == [
                model.decision_function(X).tolist(), model.decision_function(X[:1]).tolist()]
