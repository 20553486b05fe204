"""fit's validation_split, sample_weight and class_weight, the weighted train_step and
compute_gradients, and the training accuracy in the history."""

import copy
import math

import numpy as np
import pytest

from conftest import LOSS_OUTPUTS, random_targets, three_class_data as _data, training_state as _state
from tolerances import FLOAT64_TRAJECTORY_RTOL, assert_trajectories_agree
from fastmlp import SGD, Adam, Dense, Sequential


# ----------------------------------------------------------------------------- helpers
def _model(loss="softmax_cross_entropy", n_out=3, dtype=np.float32, seed=3, optimizer=None):
    return Sequential([Dense(4, 8, activation="tanh"), Dense(8, n_out)], loss=loss,
                      optimizer=optimizer or SGD(lr=0.1, momentum=0.9), seed=seed, dtype=dtype)


def _assert_unchanged(model, before):
    assert _state(model) == before
    assert model._train_workspace is None and model.history is None


def _logsumexp(s):
    top = s.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(s - top).sum(axis=1, keepdims=True)))[:, 0]


# ----------------------------------------------------------------------------- validation_split
@pytest.mark.parametrize("n,split,n_train", [(40, 0.25, 30), (41, 0.2, 32), (10, 0.05, 9), (40, 0.5, 20)])
def test_validation_split_holds_out_the_last_rows(n, split, n_train):
    X, y = _data(n)
    kw = dict(epochs=3, batch_size=8, shuffle=True)
    split_model, explicit = _model(), _model()
    history = split_model.fit(X, y, validation_split=split, **kw)
    want = explicit.fit(X[:n_train], y[:n_train], validation_data=(X[n_train:], y[n_train:]), **kw)
    # Training saw only the first n_train rows (the same shuffles, the same steps) ...
    assert split_model.optimizer.step_count == 3 * math.ceil(n_train / 8)
    # Bitwise: the same rows, shuffles and batch shapes through the same kernels.
    assert _state(split_model) == _state(explicit)
    assert history.history == want.history
    # ... and validated on the rest.
    evaluation = split_model.evaluate(X[n_train:], y[n_train:])
    # Bitwise: fit validates through evaluate's own call on a workspace of the same size.
    assert history["val_loss"][-1] == evaluation["loss"]
    assert history["val_accuracy"][-1] == evaluation["accuracy"]
    assert history["val_loss"][-1] != split_model.evaluate(X[:n - n_train], y[:n - n_train])["loss"]


def test_validation_split_with_sample_weight_and_a_regressor():
    X, _ = _data()
    y = X @ np.arange(8.0).reshape(4, 2)
    w = np.random.default_rng(2).uniform(0, 2, size=40)
    kw = dict(epochs=2, batch_size=8)
    a, b = _model("mse", 2), _model("mse", 2)
    history = a.fit(X, y, sample_weight=w, validation_split=0.25, **kw)
    want = b.fit(X[:30], y[:30], sample_weight=w[:30], validation_data=(X[30:], y[30:]), **kw)
    # Bitwise: the same rows, weights and batch shapes through the same kernels.
    assert _state(a) == _state(b)
    assert history.history == want.history
    assert set(history.history) == {"loss", "val_loss", "lr"}


def test_validation_split_accepts_numpy_scalars_and_zero():
    X, y = _data()
    a, b = _model(), _model()
    a.fit(X, y, epochs=1, batch_size=8, validation_split=np.float64(0.25))
    b.fit(X[:30], y[:30], epochs=1, batch_size=8)
    # Bitwise, as above.
    assert _state(a) == _state(b)
    c, d = _model(), _model()
    assert "val_loss" not in c.fit(X, y, epochs=1, batch_size=8, validation_split=0).history
    d.fit(X, y, epochs=1, batch_size=8)
    # Bitwise, as above.
    assert _state(c) == _state(d)


@pytest.mark.parametrize("split,message", [
    (-0.1, r"validation_split must be a number in \[0, 1\)"),
    (1.0, r"validation_split must be a number in \[0, 1\)"),
    (1.5, r"validation_split must be a number in \[0, 1\)"),
    (True, r"validation_split must be a number in \[0, 1\)"),
    (np.bool_(True), r"validation_split must be a number in \[0, 1\)"),
    ("0.2", r"validation_split must be a number in \[0, 1\)"),
    (None, r"validation_split must be a number in \[0, 1\)"),
    (math.nan, r"validation_split must be a number in \[0, 1\)"),
    (0.99, "leaves 0 for training and 40 for validation"),  # int(40 * 0.01) == 0
    (1e-17, "leaves 40 for training and 0 for validation"),  # 1 - 1e-17 == 1.0
])
def test_bad_validation_split_changes_nothing(split, message):
    X, y = _data()
    model = _model()
    before = _state(model)
    with pytest.raises(ValueError, match=message):
        model.fit(X, y, epochs=2, validation_split=split)
    _assert_unchanged(model, before)


@pytest.mark.parametrize("split", [0.2, 0.5, True])
def test_validation_split_and_validation_data_together_are_refused(split):
    X, y = _data()
    model = _model()
    before = _state(model)
    with pytest.raises(ValueError, match="validation_data or validation_split, not both"):
        model.fit(X, y, epochs=2, validation_split=split, validation_data=(X[:5], y[:5]))
    _assert_unchanged(model, before)


# ----------------------------------------------------------------------------- sample_weight
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", list(LOSS_OUTPUTS))
def test_unit_weights_change_nothing(rng, loss, dtype):
    n_out = LOSS_OUTPUTS[loss]
    X = rng.normal(size=(30, 4))
    y = random_targets(rng, loss, 30, n_out)
    kw = dict(epochs=3, batch_size=7, shuffle=True, validation_data=(X[:6], y[:6]))
    plain, weighted = _model(loss, n_out, dtype), _model(loss, n_out, dtype)
    h_plain = plain.fit(X, y, **kw)
    h_weighted = weighted.fit(X, y, sample_weight=np.ones(30), **kw)
    # Bitwise: a weight of 1.0 multiplies exactly.
    assert _state(weighted) == _state(plain)
    assert h_weighted.history.keys() == h_plain.history.keys()
    # The states are bitwise equal (a weight of 1.0 multiplies exactly); the History's
    # figures are float64 sums of the same rows, in float32 and float64 runs alike.
    for key in h_plain.history:
        assert_trajectories_agree(h_weighted[key], h_plain[key], key)


@pytest.mark.parametrize("loss", list(LOSS_OUTPUTS))
def test_zero_weights_drop_rows_but_still_count_in_the_divisor(rng, loss):
    """Keras's convention: the weighted batch loss is sum(w_i * loss_i) / n, so rows of
    weight 0 vanish from the sum but not from the count."""
    n_out = LOSS_OUTPUTS[loss]
    X = rng.normal(size=(12, 4))
    y = random_targets(rng, loss, 12, n_out)
    w = np.ones(12)
    w[[1, 4, 5, 10]] = 0.0
    keep = w > 0
    n, m = 12, int(keep.sum())
    model = _model(loss, n_out, np.float64)
    loss_w = model.compute_gradients(X, y, sample_weight=w)
    grads_w = [g.copy() for g in model.get_gradients()]
    loss_kept = model.compute_gradients(X[keep], y[keep])
    grads_kept = model.get_gradients()
    # float64, one step: a batch of 12 rows (4 weighing 0) against one of 8, other BLAS
    # call shapes, so another order of the same sums (tolerances.FLOAT64_TRAJECTORY_RTOL).
    assert loss_w * n == pytest.approx(loss_kept * m, rel=FLOAT64_TRAJECTORY_RTOL)
    for gw, gk in zip(grads_w, grads_kept):
        assert_trajectories_agree(gw * n, gk * m, "gradients")
    assert any(np.abs(g).max() > 1e-3 for g in grads_w)


@pytest.mark.parametrize("loss", list(LOSS_OUTPUTS))
def test_a_weight_of_two_counts_a_row_twice(rng, loss):
    n_out = LOSS_OUTPUTS[loss]
    X = rng.normal(size=(9, 4))
    y = random_targets(rng, loss, 9, n_out)
    w = np.ones(9)
    w[[0, 3, 7]] = 2.0
    dup = np.concatenate([np.arange(9), [0, 3, 7]])
    n, dups = 9, 3
    model = _model(loss, n_out, np.float64)
    loss_w = model.compute_gradients(X, y, sample_weight=w)
    grads_w = [g.copy() for g in model.get_gradients()]
    loss_dup = model.compute_gradients(X[dup], y[dup])
    # As above: 9 weighted rows against 12 rows, float64, one step.
    assert loss_w * n == pytest.approx(loss_dup * (n + dups), rel=FLOAT64_TRAJECTORY_RTOL)
    for gw, gd in zip(grads_w, model.get_gradients()):
        assert_trajectories_agree(gw * n, gd * (n + dups), "gradients")


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "binary_cross_entropy"])
def test_weights_follow_their_rows_through_the_shuffle(rng, loss):
    n_out = LOSS_OUTPUTS[loss]
    n, batch, epochs = 23, 5, 3
    X = rng.normal(size=(n, 4))
    y = random_targets(rng, loss, n, n_out)
    w = rng.uniform(0, 3, size=n)
    w[::4] = 0.0
    model, twin = _model(loss, n_out, np.float64), _model(loss, n_out, np.float64)
    shuffler = copy.deepcopy(model._rng)  # fit's row orders, drawn ahead of time
    history = model.fit(X, y, epochs=epochs, batch_size=batch, shuffle=True, sample_weight=w)
    order = np.arange(n)
    for epoch in range(epochs):
        shuffler.shuffle(order)
        total = 0.0
        for start in range(0, n, batch):
            rows = order[start:start + batch]
            total += len(rows) * twin.train_step(X[rows], y[rows], sample_weight=w[rows])
        # fit's compiled loop and train_step: two compilations of the same float64 steps.
        assert history["loss"][epoch] == pytest.approx(total / n, rel=FLOAT64_TRAJECTORY_RTOL)
    for a, b in zip(model.get_weights(), twin.get_weights()):
        assert_trajectories_agree(a, b, "weights")


def test_first_epoch_loss_is_the_weighted_loss_at_the_initial_weights(rng):
    """Full batch, no shuffle: the one step's loss is measured before its update."""
    X = rng.normal(size=(15, 4))
    y = rng.integers(0, 3, size=15)
    w = rng.uniform(0, 2, size=15)
    w[3] = 0.0
    model = _model(dtype=np.float64)
    s = model.decision_function(X)
    row_loss = _logsumexp(s) - s[np.arange(15), y]
    want = (w * row_loss).sum() / 15
    history = model.fit(X, y, epochs=1, batch_size=15, shuffle=False, sample_weight=w)
    # float64: the kernel's loss of the scores against numpy's of the same scores.
    assert history["loss"][0] == pytest.approx(want, rel=FLOAT64_TRAJECTORY_RTOL)
    # Far from the other conventions (not a rounding question).
    assert want != pytest.approx(row_loss.mean(), rel=1e-3)
    assert want != pytest.approx((w * row_loss).sum() / w.sum(), rel=1e-3)


def test_first_epoch_loss_binary_cross_entropy_with_class_weight(rng):
    X = rng.normal(size=(14, 4))
    t = rng.integers(0, 2, size=14)
    model = _model("binary_cross_entropy", 1, np.float64)
    s = model.decision_function(X)[:, 0]
    row_loss = np.where(t == 1, np.logaddexp(0, -s), np.logaddexp(0, s))
    w = np.where(t == 1, 3.0, 0.5)
    history = model.fit(X, t, epochs=1, batch_size=14, shuffle=False, class_weight={0: 0.5, 1: 3.0})
    want = (w * row_loss).sum() / 14
    assert history["loss"][0] == pytest.approx(want, rel=FLOAT64_TRAJECTORY_RTOL)  # as above


@pytest.mark.parametrize("bad,error,message", [
    (np.ones(39), ValueError, r"sample_weight must have shape \(40,\)"),
    (np.ones(41), ValueError, r"sample_weight must have shape \(40,\)"),
    (np.ones((40, 1)), ValueError, r"sample_weight must have shape \(40,\)"),
    (1.0, ValueError, r"sample_weight must have shape \(40,\)"),
    (np.r_[np.ones(39), -1.0], ValueError, r"sample_weight\[39\] = -1.0 is negative"),
    (np.r_[np.nan, np.ones(39)], ValueError, "sample_weight contains 1 NaN or Inf"),
    (np.r_[np.inf, np.ones(39)], ValueError, "sample_weight contains 1 NaN or Inf"),
    (["a"] * 40, TypeError, r"sample_weight holds .* \(text"),
    (np.ones(40, dtype=complex), TypeError, "sample_weight is complex"),
    ([1.0] * 39 + [object()], TypeError, "sample_weight is an object array"),
    ([1.0] * 39 + [None], ValueError, "sample_weight contains 1 NaN or Inf"),
])
def test_bad_sample_weight_changes_nothing(bad, error, message):
    X, y = _data()
    model = _model()
    before = _state(model)
    with pytest.raises(error, match=message):
        model.fit(X, y, epochs=2, sample_weight=bad)
    _assert_unchanged(model, before)


def test_sample_weight_as_a_list_of_ints():
    X, y = _data()
    a, b = _model(), _model()
    a.fit(X, y, epochs=2, batch_size=8, sample_weight=[1, 2] * 20)
    b.fit(X, y, epochs=2, batch_size=8, sample_weight=np.tile([1.0, 2.0], 20))
    # Bitwise: the same float weights per row, whichever way they were given.
    assert _state(a) == _state(b)


# ----------------------------------------------------------------------------- class_weight
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "multiclass_hinge"])
@pytest.mark.parametrize("class_weight", [{0: 0.5, 2: 3.0}, {0: 1.0, 1: 0.0, 2: 2.5}, "balanced"])
def test_class_weight_equals_the_explicit_sample_weight(loss, class_weight):
    X, y = _data()
    counts = np.bincount(y, minlength=3)
    assert counts.min() > 0 and len(set(counts)) > 1  # "balanced" is not all ones
    if class_weight == "balanced":
        table = 40 / (3 * counts)
    else:
        table = np.array([class_weight.get(c, 1.0) for c in range(3)])
    kw = dict(epochs=3, batch_size=8)
    a, b = _model(loss), _model(loss)
    ha = a.fit(X, y, class_weight=class_weight, **kw)
    hb = b.fit(X, y, sample_weight=table[y], **kw)
    # Bitwise, as above.
    assert _state(a) == _state(b)
    assert ha.history == hb.history


def test_sample_weight_and_class_weight_multiply():
    X, y = _data()
    w = np.random.default_rng(4).uniform(0, 2, size=40)
    kw = dict(epochs=2, batch_size=8)
    a, b = _model(), _model()
    a.fit(X, y, sample_weight=w, class_weight={1: 4.0, 2: 0.25}, **kw)
    b.fit(X, y, sample_weight=w * np.array([1.0, 4.0, 0.25])[y], **kw)
    # Bitwise: the products of the weights are the same floats.
    assert _state(a) == _state(b)


@pytest.mark.parametrize("class_weight", [{0: 0.25, 1: 2.0}, {1: 3.0}, "balanced"])
def test_class_weight_for_single_output_binary_cross_entropy(class_weight):
    X, y = _data()
    t = (y > 0).astype(int)
    counts = np.bincount(t, minlength=2)
    table = (40 / (2 * counts) if class_weight == "balanced"
             else np.array([class_weight.get(c, 1.0) for c in range(2)]))
    a, b = _model("binary_cross_entropy", 1), _model("binary_cross_entropy", 1)
    a.fit(X, t, epochs=2, batch_size=8, class_weight=class_weight)
    b.fit(X, t, epochs=2, batch_size=8, sample_weight=table[t])
    # Bitwise, as above.
    assert _state(a) == _state(b)


@pytest.mark.parametrize("loss,n_out", [("mse", 1), ("mse", 2), ("binary_cross_entropy", 2)])
def test_class_weight_needs_class_labels(loss, n_out):
    X, y = _data()
    target = (np.stack([y > 0, y > 1], axis=1).astype(int)[:, :n_out] if loss == "binary_cross_entropy"
              else np.random.default_rng(0).normal(size=(40, n_out)))
    model = _model(loss, n_out)
    before = _state(model)
    with pytest.raises(ValueError, match="class_weight needs class labels"):
        model.fit(X, target, epochs=2, class_weight={0: 1.0})
    _assert_unchanged(model, before)


@pytest.mark.parametrize("class_weight,message", [
    ({3: 1.0}, "class_weight has the key 3, not a class index in \\[0, 3\\)"),
    ({-1: 1.0}, "class_weight has the key -1"),
    ({1.5: 1.0}, "class_weight has the key 1.5"),
    ({True: 1.0}, "class_weight has the key True"),
    ({"0": 1.0}, "class_weight has the key '0'"),
    ({0: -1.0}, r"class_weight\[0\] = -1.0; weights must be finite and >= 0"),
    ({1: math.nan}, r"class_weight\[1\] = nan"),
    ({2: math.inf}, r"class_weight\[2\] = inf"),
    ({0: True}, r"class_weight\[0\] = True"),
    ({0: "2"}, r"class_weight\[0\] = '2'"),
    ("balance", "class_weight must be a dict or 'balanced'"),
    ([1.0, 2.0, 3.0], "class_weight must be a dict"),
    (np.ones(3), "class_weight must be a dict"),
])
def test_bad_class_weight_changes_nothing(class_weight, message):
    X, y = _data()
    model = _model()
    before = _state(model)
    with pytest.raises(ValueError, match=message):
        model.fit(X, y, epochs=2, class_weight=class_weight)
    _assert_unchanged(model, before)


@pytest.mark.parametrize("kwargs", [
    dict(sample_weight=np.zeros(40)),
    dict(class_weight={0: 0.0, 1: 0.0, 2: 0.0}),
    dict(sample_weight=np.zeros(40), class_weight="balanced"),
    # Each factor has non-zero entries, their product has none.
    dict(sample_weight="zero on classes 0 and 1", class_weight={2: 0.0}),
])
def test_all_zero_weights_are_refused(kwargs):
    X, y = _data()
    if isinstance(kwargs.get("sample_weight"), str):
        kwargs = dict(kwargs, sample_weight=(y == 2).astype(float))
    model = _model()
    before = _state(model)
    with pytest.raises(ValueError, match="every training row the weight 0"):
        model.fit(X, y, epochs=2, **kwargs)
    _assert_unchanged(model, before)


def test_all_zero_weights_on_the_training_rows_of_a_split_are_refused():
    """The weights left for training after validation_split are what must not all be 0."""
    X, y = _data()
    w = np.r_[np.zeros(30), np.ones(10)]  # only the 10 held-out rows weigh anything
    model = _model()
    before = _state(model)
    with pytest.raises(ValueError, match="weight 0"):
        model.fit(X, y, epochs=2, batch_size=8, sample_weight=w, validation_split=0.25)
    _assert_unchanged(model, before)


# ----------------------------------------------------------------------------- train_step, compute_gradients
def test_train_step_with_sample_weight(rng):
    X = rng.normal(size=(10, 4))
    y = rng.integers(0, 3, size=10)
    w = rng.uniform(0, 2, size=10)
    a, b = _model(dtype=np.float64), _model(dtype=np.float64)
    loss = a.train_step(X, y, sample_weight=w)
    # train_step is compute_gradients then apply_gradients: the same calls, bitwise.
    assert loss == b.compute_gradients(X, y, sample_weight=w)
    b.apply_gradients()
    # Bitwise: train_step is these two calls.
    assert _state(a) == _state(b)
    c = _model(dtype=np.float64)
    assert c.train_step(X, y) != pytest.approx(loss, rel=1e-6)  # the weights matter, by far
    assert not np.array_equal(c.params, a.params)
    # Keyword and positional forms agree; unit weights are no weights.
    d, e = _model(dtype=np.float64), _model(dtype=np.float64)
    # The weighted and the plain float64 sum of the same row losses (and the states bitwise).
    assert d.train_step(X, y, np.ones(10)) == pytest.approx(e.train_step(X, y), rel=FLOAT64_TRAJECTORY_RTOL)
    assert _state(d) == _state(e)


@pytest.mark.parametrize("method", ["train_step", "compute_gradients"])
@pytest.mark.parametrize("bad,error,message", [
    (np.ones(9), ValueError, r"sample_weight must have shape \(10,\)"),
    (np.ones((10, 1)), ValueError, r"sample_weight must have shape \(10,\)"),
    (np.r_[-0.5, np.ones(9)], ValueError, "is negative"),
    (np.r_[np.nan, np.ones(9)], ValueError, "NaN or Inf"),
    (["w"] * 10, TypeError, "text"),
])
def test_train_step_and_compute_gradients_check_sample_weight(rng, method, bad, error, message):
    X = rng.normal(size=(10, 4))
    y = rng.integers(0, 3, size=10)
    model = _model(optimizer=Adam(lr=0.01))
    model.train_step(X, y)
    grads = [g.copy() for g in model.get_gradients()]
    before = _state(model)
    with pytest.raises(error, match=message):
        getattr(model, method)(X, y, sample_weight=bad)
    assert _state(model) == before
    for got, want in zip(model.get_gradients(), grads):
        # Refused before anything changed: bitwise.
        np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- training accuracy
@pytest.mark.parametrize("loss,n_out", [("softmax_cross_entropy", 3), ("multiclass_hinge", 3),
                                        ("binary_cross_entropy", 1), ("binary_cross_entropy", 2)])
def test_accuracy_of_a_frozen_full_batch_epoch_is_the_score_before(rng, loss, n_out):
    X = rng.normal(size=(31, 4))
    y = random_targets(rng, loss, 31, n_out)
    model = _model(loss, n_out, np.float64, optimizer=SGD(lr=1e-30))
    score = model.score(X, y)
    assert 0 < score < 1
    history = model.fit(X, y, epochs=1, batch_size=31, shuffle=False)
    # A count of right answers over 31 rows, before a step of lr=1e-30: the same count.
    assert history["accuracy"] == [score]


@pytest.mark.parametrize("loss,n_out", [("softmax_cross_entropy", 3), ("binary_cross_entropy", 2)])
def test_accuracy_counts_rows_predicted_right_before_their_step(rng, loss, n_out):
    n, batch = 29, 6
    X = rng.normal(size=(n, 4))
    y = random_targets(rng, loss, n, n_out)
    w = rng.uniform(0, 2, size=n)
    w[::3] = 0.0  # the accuracy is not weighted: rows of weight 0 count like any other
    model, twin = _model(loss, n_out, np.float64), _model(loss, n_out, np.float64)
    history = model.fit(X, y, epochs=2, batch_size=batch, shuffle=False, sample_weight=w)
    for epoch in range(2):
        right = 0
        for start in range(0, n, batch):
            Xb, yb = X[start:start + batch], y[start:start + batch]
            hits = twin.predict(Xb) == yb
            right += int(hits.all(axis=1).sum() if hits.ndim == 2 else hits.sum())
            twin.train_step(Xb, yb, sample_weight=w[start:start + batch])
        assert history["accuracy"][epoch] == right / n
    # Not the accuracy after the epoch.
    assert history["accuracy"][-1] != model.score(X, y)
