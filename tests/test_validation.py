"""Bad input gets a clear error that names the problem, before any state changes."""

import numpy as np
import pytest

from fastmlp import SGD, Dense, Maxout, Sequential


def _model(loss="softmax_cross_entropy", n_out=3):
    return Sequential([Dense(4, 5, activation="relu"), Dense(5, n_out)], loss=loss,
                      optimizer=SGD(lr=0.1, momentum=0.9), seed=0)


def _snapshot(model):
    return [w.copy() for w in model.get_weights()] + [model.optimizer.state.copy()], model.optimizer.step_count


def _assert_unchanged(model, snapshot):
    arrays, steps = snapshot
    for got, want in zip(model.get_weights() + [model.optimizer.state], arrays):
        # Refused before anything changed: bitwise.
        np.testing.assert_array_equal(got, want)
    assert model.optimizer.step_count == steps


X_OK = np.random.default_rng(0).normal(size=(6, 4))
Y_OK = np.array([0, 1, 2, 0, 1, 2])

BAD_FIT_INPUTS = [
    (np.zeros(4), Y_OK, "must be 2-D"),
    (np.zeros((6, 4, 1)), Y_OK, "must be 2-D"),
    (np.zeros((0, 4)), Y_OK[:0], "empty"),
    (np.zeros((6, 3)), Y_OK, "has 3 features per row, but the first layer expects 4"),
    (np.full((6, 4), "a"), Y_OK, "text"),
    (np.array([[1, 2, 3, "x"]] * 6, dtype=object), Y_OK, "non-numeric element 'x'"),
    (X_OK + 1j, Y_OK, "complex"),
    (np.where(np.eye(6, 4) > 0, np.nan, X_OK), Y_OK, "contains 4 NaN or Inf"),
    (np.where(np.eye(6, 4) > 0, np.inf, X_OK), Y_OK, "NaN or Inf"),
    (np.full((6, 4), 1e39), Y_OK, r"NaN or Inf value\(s\) \(after conversion to float32\)"),
    (X_OK, Y_OK[:5], "5 labels but X has 6 rows"),
    (X_OK, np.array([0, 1, 2, 3, 1, 2]), r"y\[3\] = 3 is not a class index in \[0, 3\)"),
    (X_OK, np.array([0, 1, -1, 0, 1, 2]), r"y\[2\] = -1"),
    (X_OK, np.array([0, 1, 0.5, 0, 1, 2]), "integer class labels"),
    (X_OK, np.array([0, 1, np.nan, 0, 1, 2]), "NaN or Inf"),
    (X_OK, np.eye(6, 3), "one-hot rows are not accepted"),
    (X_OK, np.array(list("abcabc")), "text"),
    (X_OK, None, "y is required"),
]


@pytest.mark.parametrize("X,y,match", BAD_FIT_INPUTS)
def test_bad_fit_input_is_refused_before_any_change(X, y, match):
    model = _model()
    model.fit(X_OK, Y_OK, epochs=1)  # some optimizer state to lose
    snapshot = _snapshot(model)
    with pytest.raises((ValueError, TypeError), match=match):
        model.fit(X, y, epochs=1)
    with pytest.raises((ValueError, TypeError), match=match):
        model.train_step(X, y)
    _assert_unchanged(model, snapshot)


@pytest.mark.parametrize("loss,y,match", [
    ("binary_cross_entropy", np.array([[0, 1], [1, 2]] * 3), "0/1 targets"),
    ("binary_cross_entropy", np.zeros((6, 3)), r"shape \(n_samples, 2\)"),
    ("mse", np.zeros(6), r"shape \(n_samples, 2\)"),
    ("mse", np.zeros((5, 2)), "5 rows but X has 6"),
    ("mse", np.full((6, 2), np.inf), "NaN or Inf"),
])
def test_bad_targets(loss, y, match):
    model = _model(loss, n_out=2)
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=match):
        model.fit(X_OK, y)
    _assert_unchanged(model, snapshot)


@pytest.mark.parametrize("kwargs,match", [
    (dict(epochs=0), "epochs must be a positive integer"),
    (dict(epochs=2.5), "epochs must be a positive integer"),
    (dict(batch_size=0), "batch_size must be a positive integer"),
    (dict(batch_size=True), "batch_size must be a positive integer"),
    (dict(shuffle="yes"), "shuffle must be True, False, 'chunks'"),
    (dict(validation_data=(X_OK,)), "validation_data must be a pair"),
    (dict(validation_data=(X_OK[:, :3], Y_OK)), "validation_data: X has 3 features"),
])
def test_bad_fit_arguments(kwargs, match):
    model = _model()
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match=match):
        model.fit(X_OK, Y_OK, **kwargs)
    _assert_unchanged(model, snapshot)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=-1e-9), r"lr must be in \[0"),
    (dict(lr=-1), r"lr must be in \[0"),
    (dict(lr=float("nan")), "lr must be a finite number"),
    (dict(momentum=1.0), r"momentum must be in \[0"),
    (dict(momentum=-0.1), r"momentum must be in \[0"),
    (dict(weight_decay=-1), "weight_decay"),
    (dict(nesterov=True), "nesterov=True needs momentum > 0"),
])
def test_bad_optimizer_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGD(**kwargs)


def test_hyperparameters_changed_later_are_checked_before_the_step():
    model = _model()
    snapshot = _snapshot(model)
    model.optimizer.lr = -0.5
    with pytest.raises(ValueError, match="lr must be"):
        model.fit(X_OK, Y_OK)
    _assert_unchanged(model, snapshot)


def test_lowering_the_learning_rate_between_steps_takes_effect():
    a, b = _model(), _model()
    b.optimizer.lr = 1e-9
    a.train_step(X_OK, Y_OK)
    b.train_step(X_OK, Y_OK)
    assert not np.allclose(a.get_weights()[0], b.get_weights()[0])  # other data, other weights: far apart


@pytest.mark.parametrize("build,error,match", [
    (lambda: Sequential([]), ValueError, "at least one layer"),
    (lambda: Sequential([Dense(4, 5), Dense(6, 3)]), ValueError, r"layer 2 \(Dense\(6, 3.*takes 6 inputs, but layer 1"),
    (lambda: Sequential([Dense(4, 3)], loss="hinge"), ValueError, "unknown loss 'hinge'; valid names: softmax_cross_entropy"),
    (lambda: Sequential([Dense(4, 1)]), ValueError, "needs at least 2 classes"),
    (lambda: Sequential([Dense(4, 3)], dtype=np.float16), ValueError, "float32 or float64"),
    (lambda: Sequential([Dense(4, 3)], optimizer="sgd"), TypeError, "optimizer must be"),
    (lambda: Sequential(["dense"]), TypeError, "not a fastmlp layer"),
    (lambda: Dense(4, 3, activation="swish"), ValueError, "unknown activation 'swish'; valid names: identity"),
    (lambda: Dense(4, 3, activation="relu", alpha=1.0), TypeError, "takes no parameters"),
    (lambda: Dense(4, 3, activation="elu", negative_slope=0.1), TypeError, "only parameter is 'alpha'"),
    (lambda: Dense(4, 3, activation="leaky_relu", negative_slope=-0.1), ValueError, "negative_slope must be in"),
    (lambda: Dense(4, 3, activation="elu", alpha=0.0), ValueError, "alpha must be a positive"),
    (lambda: Dense(0, 3), ValueError, "n_in must be a positive integer"),
    (lambda: Dense(4, 2.0), ValueError, "n_out must be a positive integer"),
    (lambda: Maxout(4, 3, pieces=1), ValueError, "at least 2 pieces"),
])
def test_bad_model_definitions(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_a_layer_or_optimizer_serves_one_model():
    layer = Dense(4, 3)
    Sequential([layer], seed=0)
    with pytest.raises(ValueError, match="already belongs to a model"):
        Sequential([layer])
    Sequential([layer.unbuilt_copy()])
    twice = Dense(3, 3)
    with pytest.raises(ValueError, match="appears twice"):
        Sequential([twice, twice])
    opt = SGD()
    Sequential([Dense(4, 3)], optimizer=opt)
    spare = Dense(4, 3)
    with pytest.raises(ValueError, match="already serves another model"):
        Sequential([spare], optimizer=opt)
    assert spare.W is None  # the refused model attached nothing


@pytest.mark.parametrize("X", [
    np.asfortranarray(X_OK),
    X_OK[:, ::-1][:, ::-1],
    X_OK.astype(">f8"),
    X_OK.astype(np.float16),
    (X_OK * 10).astype(np.int32),
    X_OK.tolist(),
    X_OK.astype(object),
])
def test_unusual_but_valid_inputs_are_converted(X):
    model = _model()
    expected = model.decision_function(np.asarray(X, dtype=np.float64))
    # Every form converts to the same float32 values (float16 and int32 values are exact in
    # float32; float64 rounds once, the same way from every layout): the same kernels on
    # the same inputs, bitwise.
    np.testing.assert_array_equal(model.decision_function(X), expected)
    model.fit(X, Y_OK.astype(np.int8), epochs=1)
    model.fit(X, Y_OK.astype(np.float64), epochs=1)


def test_readonly_input_is_fine():
    X = X_OK.astype(np.float32)
    X.flags.writeable = False
    model = _model()
    model.fit(X, Y_OK)
    model.train_step(X, Y_OK)
    assert model.predict(X).shape == (6,)


def _driver_signatures():
    from fastmlp.kernels import gather, network

    return {name: set(driver.overloads) for name, driver in
            [("train_epoch", network.train_epoch),
             ("predict_gathered", gather.predict_gathered),
             ("evaluate_gathered", gather.evaluate_gathered)]}


def test_read_only_and_writable_inputs_share_the_compiled_drivers(tmp_path):
    # numba gives a read-only array a type of its own: without fastmlp.compiled handing the
    # drivers every input read-only, a read-only input compiled the training loop again.
    # Memory-mapped files reach the drivers as they are: the float64 X (streamed into the
    # float32 model), the int64 labels and the float64 sample weights.
    def mapped(name, array, mode):
        np.save(tmp_path / name, array)
        return np.load(tmp_path / name, mmap_mode=mode)

    weights = np.linspace(0.5, 1.5, len(Y_OK))
    writable = [mapped(name, array, "r+") for name, array in
                [("X.npy", X_OK), ("y.npy", Y_OK.astype(np.int64)), ("w.npy", weights)]]
    read_only = [mapped(name, array, "r") for name, array in
                 [("X.npy", X_OK), ("y.npy", Y_OK.astype(np.int64)), ("w.npy", weights)]]
    results = []
    for X, y, w in (writable, read_only):
        model = _model()
        model.fit(X, y, validation_data=(X, y), epochs=1)
        model.fit(X, y, sample_weight=w, epochs=1)
        results.append((model.params.copy(), model.predict_proba(X)))
        if len(results) == 1:
            before = _driver_signatures()
    assert _driver_signatures() == before
    for first, second in zip(*results):
        np.testing.assert_array_equal(first, second)
    assert all(array.flags.writeable for array in writable)  # the caller's arrays as they were


def test_fortran_and_c_ordered_inputs_share_the_compiled_drivers(tmp_path):
    # numba types the layout as well: a Fortran-ordered input (a memmap of a Fortran .npy
    # file) reaches the drivers as its C-ordered transpose, so it compiles nothing more, and
    # the rows gathered from it are the same values, so everything is bitwise the same.
    X = np.random.default_rng(1).normal(size=(40, 4))
    y = np.arange(40) % 3
    results = []
    for name, array in [("C.npy", X), ("F.npy", np.asfortranarray(X))]:
        np.save(tmp_path / name, array)
        mapped = np.load(tmp_path / name, mmap_mode="r")
        assert mapped.flags.f_contiguous == (name == "F.npy") != mapped.flags.c_contiguous
        model = _model()
        history = model.fit(mapped, y, validation_data=(mapped, y), epochs=2, batch_size=8)
        results.append((model.params.copy(), model.predict_proba(mapped),
                        np.array(history.history["val_loss"]), model.evaluate(mapped, y)))
        if len(results) == 1:
            before = _driver_signatures()
    assert _driver_signatures() == before
    for first, second in zip(*results):
        np.testing.assert_array_equal(first, second)
