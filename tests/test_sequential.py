"""The Sequential API: shapes, determinism, batching, history, weights and bad input."""

import numpy as np
import pytest

from fastmlp import SGD, Dense, DivergenceError, Maxout, Sequential
from fastmlp.datasets import make_spiral
from conftest import LOSS_OUTPUTS, random_targets as _targets
from tolerances import (ELEMENTARY_ROUNDINGS, FLOAT64_TRAJECTORY_RTOL, assert_trajectories_agree,
                        assert_within, gamma, output_bound, unit_roundoff)



def _model(loss="softmax_cross_entropy", seed=0, dtype=np.float32, n_out=3, lr=0.05):
    return Sequential([Dense(4, 8, activation="tanh"), Maxout(8, 6, pieces=2), Dense(6, n_out)],
                      loss=loss, optimizer=SGD(lr=lr, momentum=0.5), seed=seed, dtype=dtype)


@pytest.mark.parametrize("loss", list(LOSS_OUTPUTS))
def test_predict_shapes_and_types(rng, loss):
    n_out = LOSS_OUTPUTS[loss]
    model = _model(loss, n_out=n_out)
    X = rng.normal(size=(11, 4))
    y = _targets(rng, loss, 11, n_out)
    model.fit(X, y, epochs=2, batch_size=4)
    pred = model.predict(X)
    scores = model.decision_function(X)
    # predict and decision_function run the same forward kernels on the same chunk: the
    # scores are bitwise the same, so are their argmax and signs.
    assert scores.shape == (11, n_out)
    if loss in ("softmax_cross_entropy", "multiclass_hinge"):
        assert pred.shape == (11,) and pred.dtype == np.int64
        np.testing.assert_array_equal(pred, scores.argmax(axis=1))
    elif loss == "binary_cross_entropy":
        assert pred.shape == (11, n_out)
        np.testing.assert_array_equal(pred, (scores > 0).astype(int))
    else:
        np.testing.assert_array_equal(pred, scores)
    if loss == "softmax_cross_entropy":
        proba = model.predict_proba(X)
        # Each p_j = e_j / sum(e) is within gamma(n_out + 2) of itself relatively (an exp,
        # the float32 sum, a division), so the row sums to 1 within that.
        np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=gamma(n_out + 3, np.float32))
        np.testing.assert_array_equal(proba.argmax(axis=1), pred)
    elif loss == "binary_cross_entropy":
        # The float32 logistic of the same scores: a few roundings, absolute near 0 where
        # a 1 + tanh or 1 / (1 + e) form loses relative accuracy.
        ulps = ELEMENTARY_ROUNDINGS * unit_roundoff(np.float32)
        np.testing.assert_allclose(model.predict_proba(X), 1 / (1 + np.exp(-scores.astype(float))),
                                   rtol=ulps, atol=ulps)
    else:
        with pytest.raises(AttributeError, match="predict_proba"):
            model.predict_proba(X)


def test_single_output_predictions_are_vectors(rng):
    X = rng.normal(size=(9, 4))
    reg = Sequential([Dense(4, 1)], loss="mse", seed=0)
    reg.fit(X, rng.normal(size=9), epochs=1)
    assert reg.predict(X).shape == (9,)
    clf = Sequential([Dense(4, 1)], loss="binary_cross_entropy", seed=0)
    clf.fit(X, rng.integers(0, 2, size=9), epochs=1)
    assert clf.predict(X).shape == (9,)
    assert set(np.unique(clf.predict(X))) <= {0, 1}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_in_chunks_agrees_with_one_pass_to_rounding(rng, dtype):
    model = _model(dtype=dtype)
    X = rng.normal(size=(2500, 4))  # more rows than one inference chunk
    scores = model.decision_function(X)
    # A 1024-row chunk and a 10-row call are products of other shapes, which OpenBLAS may
    # give other kernels (another order of the k products): each is within the chain
    # bound of the exact scores, so the two within twice it.
    exact, bound = output_bound(model, X)
    assert_within(scores, exact, bound, "scores in chunks")
    alone = model.decision_function(X[1000:1010])
    assert_within(alone, exact[1000:1010], bound[1000:1010], "scores of 10 rows")
    assert_within(alone, scores[1000:1010], 2 * bound[1000:1010], "10 rows against their chunk")
    # Same rows, same call shapes: the same kernels in the same order, bitwise.
    np.testing.assert_array_equal(model.decision_function(X), scores)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_same_seed_same_weights(rng, dtype):
    X, y = make_spiral(n_per_class=20)
    a, b, c = _model(seed=3, dtype=dtype), _model(seed=3, dtype=dtype), _model(seed=4, dtype=dtype)
    for m in (a, b, c):
        m.fit(X[:, [0, 1, 0, 1]], y, epochs=3, batch_size=7, shuffle=True)
    # Same seed, data and thread count: the same kernels on the same shapes in the same
    # order, bitwise (the reproducibility the docs promise on one machine).
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
        assert wa.dtype == dtype
    # Other seeds give other weights, far beyond rounding.
    assert not np.array_equal(a.get_weights()[0], c.get_weights()[0])


def test_initialisation_he_for_relu_glorot_otherwise():
    model = Sequential([Dense(400, 300, activation="relu"), Dense(300, 200, activation="tanh"),
                        Dense(200, 10)], seed=0, dtype=np.float64)
    W1, b1, W2, _, _, _ = model.get_weights()
    # Sampling error, not rounding: 120000 and 60000 draws estimate a std to ~0.3 %; 2 % is
    # > 6 standard errors.
    assert W1.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    limit = np.sqrt(6 / (300 + 200))
    assert np.abs(W2).max() <= limit and W2.std() == pytest.approx(limit / np.sqrt(3), rel=0.02)
    assert not b1.any()


def test_fit_with_full_batch_equals_train_step(rng):
    X = rng.normal(size=(10, 4))
    y = rng.integers(0, 3, size=10)
    a, b = _model(seed=1, dtype=np.float64), _model(seed=1, dtype=np.float64)
    history = a.fit(X, y, epochs=2, batch_size=10, shuffle=False)
    losses = [b.train_step(X, y) for _ in range(2)]
    # fit's compiled epoch loop and train_step are two compilations of the same kernels:
    # fastmath may order a sum differently in each (tolerances.FLOAT64_TRAJECTORY_RTOL).
    assert_trajectories_agree(history.history["loss"], losses, "losses")
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert_trajectories_agree(wa, wb, "weights")


def test_last_smaller_batch_and_epoch_loss(rng):
    """10 rows in batches of 4: steps on rows 0-3, 4-7 and the short batch 8-9."""
    X = rng.normal(size=(10, 4))
    y = rng.integers(0, 3, size=10)
    a, b = _model(seed=2, dtype=np.float64), _model(seed=2, dtype=np.float64)
    history = a.fit(X, y, epochs=1, batch_size=4, shuffle=False)
    losses = [b.train_step(X[s:s + 4], y[s:s + 4]) for s in (0, 4, 8)]
    # As above: two compilations of the same steps, float64.
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert_trajectories_agree(wa, wb, "weights")
    # The epoch loss is the mean over samples: the short batch weighs 2/10.
    want = (4 * losses[0] + 4 * losses[1] + 2 * losses[2]) / 10
    assert history.history["loss"][0] == pytest.approx(want, rel=FLOAT64_TRAJECTORY_RTOL)
    assert a.optimizer.step_count == 3


def test_history_with_validation(rng):
    X = rng.normal(size=(30, 4))
    y = rng.integers(0, 3, size=30)
    model = _model()
    history = model.fit(X, y, epochs=3, batch_size=8, validation_data=(X[:10], y[:10]))
    assert history.epoch == [1, 2, 3]
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert all(len(v) == 3 for v in history.history.values())
    evaluation = model.evaluate(X[:10], y[:10])
    # Bitwise: the epoch's validation pass is evaluate's own call (_evaluate_prepared on an
    # inference workspace sized for the same 10 rows), on the same final weights.
    assert history["val_loss"][-1] == evaluation["loss"]
    assert history["val_accuracy"][-1] == evaluation["accuracy"] == model.score(X[:10], y[:10])
    assert model.history is history


def test_verbose_2_prints_one_line_per_epoch(rng, capsys):
    model = _model()
    model.fit(rng.normal(size=(8, 4)), rng.integers(0, 3, size=8), epochs=2, verbose=2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2  loss ")
    model.fit(rng.normal(size=(8, 4)), rng.integers(0, 3, size=8), epochs=2, verbose=0)
    assert capsys.readouterr().out == ""


def test_score_is_r2_for_mse(rng):
    X = rng.normal(size=(50, 4))
    model = Sequential([Dense(4, 2)], loss="mse", seed=0, dtype=np.float64)
    W, b = model.get_weights()
    y = X @ W + b  # the model is exact on these targets
    # R^2 = 1 - SS_res / SS_tot with residuals of float64 rounding (~1e-16 of |y|): pytest's
    # default rel=1e-6 is 1e10 of those.
    assert model.score(X, y) == pytest.approx(1.0)
    noise = y + rng.normal(size=y.shape)
    pred = model.predict(X)
    r2 = [1 - ((noise[:, j] - pred[:, j]) ** 2).sum() / ((noise[:, j] - noise[:, j].mean()) ** 2).sum()
          for j in range(2)]
    assert model.score(X, noise) == pytest.approx(np.mean(r2))  # float64 sums of 50 rows: as above


def test_get_and_set_weights_round_trip_and_layout(rng):
    model = Sequential([Maxout(3, 2, pieces=3), Dense(2, 4)], seed=0)
    W1, b1, W2, b2 = model.get_weights()
    assert W1.shape == (3, 6) and b1.shape == (6,) and W2.shape == (2, 4) and b2.shape == (4,)
    new = [rng.normal(size=w.shape) for w in (W1, b1, W2, b2)]
    model.set_weights(new)
    for got, want in zip(model.get_weights(), new):
        np.testing.assert_array_equal(got, want.astype(np.float32))  # a copy after one cast
    # Maxout layout: piece k of unit j is column k * n_out + j.
    x = rng.normal(size=(5, 3)).astype(np.float32)
    pieces = (x @ new[0].astype(np.float32) + new[1].astype(np.float32)).reshape(5, 3, 2)
    hidden = pieces.max(axis=1)
    # numpy's float32 layer here and fastmlp's: each within the chain bound of the exact
    # scores (and the float32 numpy product within the first layer's), so within twice it.
    _, bound = output_bound(model, x)
    assert_within(model.decision_function(x), hidden @ new[2] + new[3], 2 * bound)


@pytest.mark.parametrize("bad,match", [
    ([np.zeros((3, 6)), np.zeros(6)], "expected 4 arrays"),
    ([np.zeros((3, 5)), np.zeros(6), np.zeros((2, 4)), np.zeros(4)], r"W1 must have shape \(3, 6\)"),
    ([np.zeros((3, 6)), np.zeros(6), np.zeros((2, 4)), np.full(4, np.nan)], "b2 contains NaN"),
])
def test_set_weights_checks_everything_before_writing(bad, match):
    model = Sequential([Maxout(3, 2, pieces=3), Dense(2, 4)], seed=0)
    before = model.get_weights()
    with pytest.raises(ValueError, match=match):
        model.set_weights(bad)
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)  # nothing written: bitwise


def test_layer_views_are_live():
    model = Sequential([Dense(2, 3), Dense(3, 2)], seed=0)
    model.layers[0].b[:] = 5
    assert (model.get_weights()[1] == 5).all()  # 5 is stored exactly


def test_divergence_stops_training_with_finite_weights(rng):
    X = rng.normal(size=(64, 4)) * 1e3
    y = rng.normal(size=(64, 2)) * 1e3
    model = Sequential([Dense(4, 16, activation="relu"), Dense(16, 2)], loss="mse",
                       optimizer=SGD(lr=10.0), seed=0)
    with pytest.raises(DivergenceError, match=r"at epoch \d+, step \d+ of 8"):
        model.fit(X, y, epochs=50, batch_size=8)
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_train_step_refuses_a_non_finite_loss_and_keeps_weights(rng):
    model = Sequential([Dense(2, 2)], loss="mse", seed=0, dtype=np.float32)
    before = model.get_weights()
    with pytest.raises(DivergenceError):
        model.train_step(np.array([[3e38, 3e38]]), np.array([[0.0, 0.0]]))
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)  # refused before any update: bitwise


def test_an_overflowing_last_update_is_caught_and_undone():
    X, y = make_spiral(n_per_class=10)
    X *= 1e3  # gradients of order 100: lr * grad passes float32's 3.4e38
    model = Sequential([Dense(2, 3)], optimizer=SGD(lr=1e37), seed=0)
    before = model.get_weights()
    # One batch per epoch: the only update is the epoch's last, which no later loss checks.
    with pytest.raises(DivergenceError, match="last update of epoch 1 overflowed"):
        model.fit(X, y, epochs=1, batch_size=30)
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)  # undone from a saved copy: bitwise
    assert model.optimizer.step_count == 0
    with pytest.raises(DivergenceError, match="was undone"):
        model.train_step(X, y)
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)  # as above


def test_a_learning_rate_that_overflows_float32_is_refused():
    model = Sequential([Dense(2, 3)], optimizer=SGD(lr=1e39), seed=0)
    X, y = make_spiral(n_per_class=10)
    with pytest.raises(ValueError, match="lr=1e.39 overflows float32"):
        model.fit(X, y)


def test_flat_gradients_is_the_buffer_apply_gradients_reads(rng):
    """The data-parallel hook: averaging two half-batch gradients into flat_gradients gives
    the full-batch step."""
    X = rng.normal(size=(8, 4))
    y = rng.integers(0, 3, size=8)
    full, halves = _model(seed=5, dtype=np.float64), _model(seed=5, dtype=np.float64)
    full.train_step(X, y)
    halves.compute_gradients(X[:4], y[:4])
    first = halves.flat_gradients.copy()
    halves.compute_gradients(X[4:], y[4:])
    halves.flat_gradients[:] = (first + halves.flat_gradients) / 2
    halves.apply_gradients()
    # The full-batch gradient sums 8 rows in one product, the halves 4 and 4 then average:
    # another order of the same float64 sums, one step (FLOAT64_TRAJECTORY_RTOL).
    for a, b in zip(full.get_weights(), halves.get_weights()):
        assert_trajectories_agree(a, b, "weights")


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_copies_keep_layers_tied_to_the_parameter_vector(rng, how):
    import copy
    import pickle

    X = rng.normal(size=(12, 4))
    y = rng.integers(0, 3, size=12)
    model = _model(seed=6)
    model.fit(X, y, epochs=2, batch_size=4)
    model.decision_function(X)  # the model now keeps a workspace tied to its parameters
    twin = pickle.loads(pickle.dumps(model)) if how == "pickle" else copy.deepcopy(model)
    # The same weights bit for bit, the same kernels and shapes: bitwise.
    np.testing.assert_array_equal(twin.decision_function(X), model.decision_function(X))
    twin.fit(X, y, epochs=1, batch_size=4)
    for layer_weights, flat in zip(twin.get_weights(), twin._layer_views(twin.params, 0)):
        np.testing.assert_array_equal(layer_weights, flat)  # get_weights sees the training
    twin.set_weights([np.zeros_like(w) for w in twin.get_weights()])
    assert not twin.decision_function(X).any()  # set_weights reaches the model
    assert model.decision_function(X).any()  # and not the original


def test_kept_inference_workspaces_are_few_and_small(rng, monkeypatch):
    from fastmlp import sequential

    model = Sequential([Dense(4, 16, activation="relu"), Dense(16, 3)], seed=0)
    X = rng.normal(size=(300, 4))
    expected = model.predict_proba(X)
    for n in range(1, 3 * sequential.KEPT_WORKSPACES_PER_THREAD):
        model.predict_proba(X[:n])
    kept = model._kept_workspaces.by_capacity
    assert len(kept) == sequential.KEPT_WORKSPACES_PER_THREAD
    # The most recent sizes stay; a size called again comes back to the same buffers.
    last = 3 * sequential.KEPT_WORKSPACES_PER_THREAD - 1
    assert list(kept) == list(range(last - sequential.KEPT_WORKSPACES_PER_THREAD + 1, last + 1))
    before = kept[last]
    model.predict_proba(X[:last])
    assert model._kept_workspaces.by_capacity[last] is before
    # Over the size limit, a workspace serves its call and is dropped.
    monkeypatch.setattr(sequential, "KEPT_WORKSPACE_BYTES", before.nbytes - 1)
    np.testing.assert_array_equal(model.predict_proba(X), expected)  # same kernels, same rows
    assert X.shape[0] not in model._kept_workspaces.by_capacity
    # A kept workspace reads the model's current parameters.
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    np.testing.assert_array_equal(model.predict_proba(X[:last]), np.full((last, 3), 1 / 3, np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kept_workspaces_call_the_driver_bound_to_their_types(rng, monkeypatch, dtype):
    from fastmlp import compiled

    model = Sequential([Dense(5, 16, activation="tanh"), Dense(16, 3)], seed=1, dtype=dtype)
    X = rng.normal(size=(7, 5))
    methods = (model.predict, model.predict_proba, model.decision_function)
    first = [method(X) for method in methods]  # through numba's dispatcher, which binds
    entries = model._kept_workspaces.by_capacity[7].predict_entries
    # One bound driver per output dtype (predict's int64 labels, the scores) and build.
    assert set(entries) == {(np.dtype(np.int64).char, True), (np.dtype(dtype).char, True)}
    assert all(entry is not compiled.predict_into for entry in entries.values())

    def no_dispatch(*args):
        raise AssertionError("a kept workspace went through numba's dispatcher again")

    monkeypatch.setattr(compiled, "predict_into", no_dispatch)
    for method, expected in zip(methods, first):
        np.testing.assert_array_equal(method(X), expected)  # the same machine code
        # Input of another dtype is converted first and takes the same bound driver.
        X32 = X.astype(np.float32)
        np.testing.assert_array_equal(method(X32), method(X32.astype(dtype)))
    # Parameters changed in place reach the bound driver, which reads the buffers anew.
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    np.testing.assert_array_equal(model.predict_proba(X), np.full((7, 3), 1 / 3, dtype))
    # Another batch size is another workspace: it binds on its own first call.
    with pytest.raises(AssertionError, match="dispatcher again"):
        model.predict(X[:3])
