"""fastmlp.sklearn: the scikit-learn estimators (skipped when scikit-learn is not installed)."""

import json
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import estimator_checks_generator  # noqa: E402

from tolerances import ELEMENTARY_ROUNDINGS, assert_trajectories_agree, eps, gamma  # noqa: E402
from fastmlp import DivergenceError, Sequential  # noqa: E402
from fastmlp.datasets import load_digits, make_spiral  # noqa: E402
from fastmlp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# Small networks and few epochs keep the ~330 checks at a few seconds once numba's cache is
# warm; the learning rate is raised so that the checks that want a decent score get one.
SMALL = dict(hidden_layer_sizes=(16,), max_iter=30, learning_rate_init=0.01, random_state=0)


# An explicit dtype on each: the checks' data is mostly float64, which dtype=None (the
# default, tested on its own by test_check_estimator_on_defaults) would follow.
ESTIMATORS = [
    MLPClassifier(dtype="float32", **SMALL),
    MLPClassifier(loss="multiclass_hinge", dtype="float32", **SMALL),
    MLPClassifier(loss="binary_cross_entropy", dtype="float32", **SMALL),
    MLPClassifier(optimizer="sgd", activation="maxout", dtype="float64",
                  **dict(SMALL, learning_rate_init=0.005)),
    MLPRegressor(dtype="float32", **SMALL),
    MLPRegressor(optimizer="adamw", activation="tanh", dtype="float64", **SMALL),
]


def _check_name(check):
    return getattr(check, "func", check).__name__


# Every check scikit-learn generates, except the array-API ones: they feed CuPy/torch-style
# array namespaces, which numba kernels cannot take (inputs are converted to numpy), and
# scikit-learn itself only runs them under SCIPY_ARRAY_API=1.  Left out rather than shown as
# skipped-but-passing.
CHECKS = [(estimator, check) for estimator in ESTIMATORS
          for estimator, check in estimator_checks_generator(estimator, legacy=True)
          if "array_api" not in _check_name(check)]


# Parameters a check runs with, as scikit-learn's own PER_ESTIMATOR_CHECK_PARAMS
# (sklearn/utils/_test_common/instance_generator.py) runs its MLPClassifier's
# check_sample_weight_equivalence_on_dense_data with solver="lbfgs" and its MLPRegressor's
# with solver="sgd", tol=1e-2.  That check compares weighted and repeated-row fits to
# rtol=1e-7: our estimators pass it in float64; in float32 the two fits agree only to float32
# rounding (carried over 30 Adam epochs), which
# test_sample_weight_equivalence_float32 checks at a float32 tolerance instead.
CHECK_PARAMS = {"check_sample_weight_equivalence_on_dense_data": dict(dtype="float64")}


@pytest.mark.parametrize("estimator,check", CHECKS,
                         ids=[f"{type(e).__name__}-{_check_name(c)}" for e, c in CHECKS])
def test_sklearn_estimator_checks(estimator, check):
    params = CHECK_PARAMS.get(_check_name(check))
    if params:
        estimator = clone(estimator).set_params(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is small on purpose
        check(estimator)


def test_sample_weight_checks_are_generated():
    # scikit-learn runs its sample-weight checks only for a fit that takes sample_weight:
    # losing the parameter would quietly drop them from the list above.
    names = {_check_name(check) for _, check in CHECKS}
    assert {"check_sample_weight_equivalence_on_dense_data", "check_sample_weights_shape",
            "check_sample_weights_not_overwritten", "check_all_zero_sample_weights_error",
            "check_classifiers_one_label_sample_weights"} <= names
    assert set(CHECK_PARAMS) <= names


@pytest.fixture(scope="module")
def spiral():
    return make_spiral(n_per_class=60, n_classes=3, noise=0.2, seed=0)


def fit_quiet(estimator, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(*args, **kwargs)


def test_import_fastmlp_does_not_import_sklearn():
    code = "import sys, fastmlp; print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_classifier_learns_spiral_with_string_labels(spiral):
    X, y = spiral
    names = np.array(["red", "green", "blue"])[y]
    clf = fit_quiet(MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.02, max_iter=300,
                                  tol=0.0, random_state=0), X, names)
    assert list(clf.classes_) == ["blue", "green", "red"]
    assert clf.n_features_in_ == 2 and clf.n_outputs_ == 3
    assert isinstance(clf.model_, Sequential)
    assert clf.n_iter_ == len(clf.loss_curve_) == 300
    assert clf.loss_curve_[-1] < 0.3 * clf.loss_curve_[0]
    assert set(clf.predict(X)) <= set(names)
    assert clf.score(X, names) > 0.9
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3) and proba.dtype == np.float64
    # float64 softmax in numpy: each p_j within (6 + |s_j - max|) u of itself relatively
    # (p_j |s_j - max| <= 1/e), so a row sums to 1 within gamma(6) + u.
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=gamma(6, np.float64) + eps(np.float64))
    # The argmax of these same probabilities: exact.
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(X))
    # exp(log p) in float64: within (|log p| + 2) u of p, |log p| < 746: far below rtol=1e-7.
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), proba)


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "multiclass_hinge", "binary_cross_entropy"])
def test_binary_decision_function_is_one_column(loss):
    X, y = make_spiral(n_per_class=30, n_classes=2, seed=1)
    labels = np.where(y == 1, 5, -3)
    clf = fit_quiet(MLPClassifier(hidden_layer_sizes=(8,), loss=loss, max_iter=5, random_state=0),
                    X, labels)
    scores = clf.decision_function(X)
    assert scores.shape == (len(X),)
    # The sign of these same scores: exact.
    np.testing.assert_array_equal(clf.predict(X), np.where(scores > 0, 5, -3))
    assert hasattr(clf, "predict_proba") == (loss != "multiclass_hinge")
    if loss == "binary_cross_entropy":
        assert clf.model_.n_outputs == 1
        # Two float64 forms of the logistic of the same scores: a few roundings each, absolute
        # near 0 where 0.5 (1 + tanh(s / 2)) loses relative accuracy.
        ulps = ELEMENTARY_ROUNDINGS * eps(np.float64)
        np.testing.assert_allclose(clf.predict_proba(X)[:, 1], 1 / (1 + np.exp(-scores)),
                                   rtol=ulps, atol=ulps)


def test_hinge_has_no_predict_proba():
    clf = MLPClassifier(loss="multiclass_hinge")
    assert not hasattr(clf, "predict_proba")
    assert not hasattr(clf, "predict_log_proba")


def test_multilabel_binary_cross_entropy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    Y = np.column_stack([X[:, 0] > 0, X[:, 1] > 0, X[:, 0] + X[:, 1] > 0]).astype(int)
    clf = fit_quiet(MLPClassifier(hidden_layer_sizes=(16,), loss="binary_cross_entropy",
                                  learning_rate_init=0.02, max_iter=200, random_state=0), X, Y)
    # Class labels: integers.
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2])
    assert clf.predict(X).shape == Y.shape
    assert clf.predict_proba(X).shape == Y.shape
    assert clf.score(X, Y) > 0.85  # subset accuracy
    with pytest.raises(ValueError, match="need loss='binary_cross_entropy'"):
        MLPClassifier(max_iter=1).fit(X, Y)
    online = MLPClassifier(hidden_layer_sizes=(4,), loss="binary_cross_entropy", random_state=0)
    online.partial_fit(X, Y)  # the columns are the classes: no classes= needed
    online.partial_fit(X, Y)
    assert online.n_iter_ == 2 and online.predict(X[:5]).shape == (5, 3)


def test_partial_fit_classifier(spiral):
    X, y = spiral
    clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.02, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    assert clf.partial_fit(X[y < 2], y[y < 2], classes=[0, 1, 2]) is clf
    # Class labels: integers.
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2])
    for _ in range(5):
        clf.partial_fit(X, y)
    assert clf.n_iter_ == len(clf.loss_curve_) == 6
    with pytest.raises(ValueError, match=r"not in classes_"):
        clf.partial_fit(X[:3], [0, 1, 7])
    with pytest.raises(ValueError, match="differs from classes_"):
        clf.partial_fit(X, y, classes=[0, 1])
    # fit starts afresh
    fit_quiet(clf.set_params(max_iter=2), X, y)
    assert clf.n_iter_ == 2


def test_partial_fit_continues_fit_weights(spiral):
    X, y = spiral
    clf = fit_quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0), X, y)
    before = clf.model_.get_weights()[0]
    clf.partial_fit(X, y)
    assert clf.n_iter_ == 4
    # The weights moved, far beyond rounding.
    assert not np.array_equal(before, clf.model_.get_weights()[0])


def test_regressor_learns_and_multioutput():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(300, 2))
    y = np.sin(2 * X[:, 0]) + X[:, 1] ** 2
    reg = fit_quiet(MLPRegressor(hidden_layer_sizes=(32,), activation="tanh", learning_rate_init=0.01,
                                 max_iter=300, random_state=0), X, y)
    pred = reg.predict(X)
    assert pred.shape == (300,) and pred.dtype == np.float64
    assert reg.score(X, y) > 0.9
    Y = np.column_stack([y, -y])
    reg2 = fit_quiet(MLPRegressor(hidden_layer_sizes=(8,), max_iter=5, random_state=0), X, Y)
    assert reg2.n_outputs_ == 2 and reg2.predict(X).shape == (300, 2)
    reg.partial_fit(X, y)
    with pytest.raises(ValueError, match="target columns"):
        reg.partial_fit(X, Y)


def test_pipeline_and_grid_search_on_digits():
    X, y = load_digits()
    X, y = X[:400], y[:400]
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(32,), max_iter=40,
                                                         random_state=0))
    search = GridSearchCV(pipe, {"mlpclassifier__learning_rate_init": [1e-4, 1e-2]}, cv=2)
    fit_quiet(search, X, y)
    assert search.best_params_ == {"mlpclassifier__learning_rate_init": 1e-2}
    assert search.best_score_ > 0.85
    assert search.score(X, y) > 0.95


def test_same_random_state_same_model_and_batch_independent_predictions(spiral):
    X, y = spiral
    a = fit_quiet(MLPClassifier(hidden_layer_sizes=(100,), max_iter=5, random_state=3), X, y)
    b = fit_quiet(clone(a), X, y)
    # Bitwise: the same seed, data and thread count run the same kernels on the same shapes.
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    full = a.decision_function(X)
    for rows in (slice(0, 1), slice(5, 12), slice(60, 170)):
        # Bitwise by construction: rows go through 64-row blocks whatever the call (_forward).
        np.testing.assert_array_equal(a.decision_function(X[rows]), full[rows])


def test_stops_on_tol_and_warns_at_max_iter(spiral):
    X, y = spiral
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=500, tol=10.0, n_iter_no_change=2,
                        random_state=0).fit(X, y)
    # Epoch 1 improves on +inf; epochs 2, 3, 4 do not improve by 10, and the third of
    # them is more than n_iter_no_change (scikit-learn's rule).
    assert clf.n_iter_ == 4
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0).fit(X, y)


def test_params_checked_at_fit_not_init(spiral):
    X, y = spiral
    bad = [dict(hidden_layer_sizes=(0,)), dict(activation="softplus"), dict(loss="mse"),
           dict(optimizer="rmsprop"), dict(batch_size=0), dict(max_iter=0), dict(tol=-1.0),
           dict(dtype="float16"), dict(learning_rate_init=-1.0), dict(momentum=1.5, optimizer="sgd"),
           dict(shuffle="yes"), dict(early_stopping=1), dict(early_stopping="yes"),
           dict(early_stopping=None), dict(validation_fraction=0.0),
           dict(validation_fraction=1.0), dict(validation_fraction=-0.1),
           dict(validation_fraction=1.5), dict(validation_fraction=True),
           dict(validation_fraction="0.1"), dict(validation_fraction=np.nan),
           dict(warm_start=1), dict(warm_start="yes"), dict(dtype="int32")]
    for params in bad:
        clf = MLPClassifier(**params)  # no error yet
        with pytest.raises(ValueError, match=list(params)[0].replace("learning_rate_init", "lr")):
            clf.fit(X, y)
    with pytest.raises(NotFittedError):
        MLPRegressor().predict(X)


def test_activation_and_layers(spiral):
    X, y = spiral
    clf = fit_quiet(MLPClassifier(hidden_layer_sizes=(6, 5), activation="logistic", max_iter=1,
                                  batch_size=7, random_state=0), X, y)
    assert [(layer.n_in, layer.n_out, layer.activation) for layer in clf.model_.layers] == [
        (2, 6, "sigmoid"), (6, 5, "sigmoid"), (5, 3, "identity")]
    linear = fit_quiet(MLPClassifier(hidden_layer_sizes=(), max_iter=1), X, y)
    assert len(linear.model_.layers) == 1


def test_pickle_keeps_model_weights_live(spiral):
    X, y = spiral
    clf = fit_quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0), X, y)
    twin = pickle.loads(pickle.dumps(clf))
    # Bitwise: a copy of the same weights, the same kernels and shapes.
    np.testing.assert_array_equal(twin.predict_proba(X), clf.predict_proba(X))
    twin.partial_fit(X, y)
    # get_weights() must show the trained parameters, not a stale copy from before the pickle
    W = twin.model_.get_weights()[0]
    assert np.shares_memory(twin.model_.layers[0].W, twin.model_.params)
    # The weights moved, far beyond rounding.
    assert not np.array_equal(W, clf.model_.get_weights()[0])


def test_verbose_prints_loss(spiral, capsys):
    X, y = spiral
    fit_quiet(MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, verbose=1), X, y)
    assert capsys.readouterr().out.count("Iteration") == 2


# ----------------------------------------------------------------- early stopping
class SplitSpy:
    """Stands in for ``fastmlp.sklearn.train_test_split``; records each call's ``stratify``
    and the validation part it returned (X_val, y_val and, when weighted, its weights)."""

    def __init__(self, monkeypatch):
        import fastmlp.sklearn as module

        self.real = module.train_test_split
        self.calls = []
        monkeypatch.setattr(module, "train_test_split", self)

    def __call__(self, *arrays, **kwargs):
        parts = self.real(*arrays, **kwargs)
        # fastmlp passes (X, targets, y[, sample_weight]): keep each one's validation half
        self.calls.append(dict(stratify=kwargs["stratify"], X_val=parts[1], y_val=parts[5],
                               w_val=parts[7] if len(parts) == 8 else None))
        return parts


def no_improvement_stop(scores, tol, n_iter_no_change):
    """The epoch (1-based) at which scikit-learn's validation rule stops, or None."""
    best, count = -np.inf, 0
    for epoch, score in enumerate(scores, start=1):
        count = count + 1 if score < best + tol else 0
        best = max(best, score)
        if count > n_iter_no_change:
            return epoch
    return None


# On the spiral, the validation accuracy (18 rows) reaches a plateau within a few epochs.
ES = dict(hidden_layer_sizes=(32,), learning_rate_init=0.02, max_iter=400, early_stopping=True,
          random_state=0)


def test_early_stopping_stops_on_the_validation_score(spiral, monkeypatch):
    X, y = spiral
    spy = SplitSpy(monkeypatch)
    clf = MLPClassifier(**ES).fit(X, y)  # no ConvergenceWarning: it stops first
    scores = clf.validation_scores_
    assert clf.n_iter_ < 400
    assert len(scores) == len(clf.loss_curve_) == clf.n_iter_
    # The validation part is 10% of the 180 rows, stratified: 6 per class.
    (call,) = spy.calls
    np.testing.assert_array_equal(np.bincount(call["y_val"]), [6, 6, 6])
    # Each score is the accuracy on those rows, a multiple of 1/18.
    # Accuracies of 18 rows are k / 18: times 18 within a rounding or two of an integer.
    np.testing.assert_allclose(np.array(scores) * 18, np.round(np.array(scores) * 18),
                               atol=18 * eps(np.float64))
    # It stopped exactly where scikit-learn's rule says: more than n_iter_no_change epochs
    # without beating the best score by tol, and not before.
    assert no_improvement_stop(scores, clf.tol, 10) == clf.n_iter_
    assert clf.best_validation_score_ == max(scores)
    assert clf.best_loss_ is None
    # Training did not stop on a training loss that was still falling.
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    # With tol=0 a score equal to the best counts as an improvement (scikit-learn's
    # `score < best + tol`), so the plateau of ties does not stop training.
    ties = fit_quiet(clone(clf).set_params(tol=0.0, n_iter_no_change=2), X, y)
    scores = ties.validation_scores_
    best_epoch = int(np.argmax(scores)) + 1
    assert scores[best_epoch] == scores[best_epoch + 1] == ties.best_validation_score_
    assert no_improvement_stop(scores, 0.0, 2) == ties.n_iter_ > best_epoch + 3


def test_early_stopping_keeps_the_best_epochs_parameters(spiral, monkeypatch):
    X, y = spiral
    spy = SplitSpy(monkeypatch)
    clf = MLPClassifier(**ES).fit(X, y)
    best_epoch = int(np.argmax(clf.validation_scores_)) + 1  # the first epoch with the best score
    assert best_epoch < clf.n_iter_  # so "last" and "best" differ
    # The same run cut at the best epoch: same split, same first best_epoch epochs, and that
    # epoch is its own best, so its parameters are the best epoch's.
    cut = fit_quiet(clone(clf).set_params(max_iter=best_epoch), X, y)
    np.testing.assert_array_equal(clf.model_.params, cut.model_.params)
    assert cut.validation_scores_ == clf.validation_scores_[:best_epoch]
    # The fitted estimator scores best_validation_score_ on its validation part.
    X_val, y_val = spy.calls[0]["X_val"], spy.calls[0]["y_val"]
    np.testing.assert_array_equal(spy.calls[1]["X_val"], X_val)  # the same split both times
    assert clf.score(X_val, y_val) == clf.best_validation_score_
    # ...which the last epoch's parameters did not: restoring them made a difference.
    assert clf.validation_scores_[-1] < clf.best_validation_score_


def test_early_stopping_regressor_r2():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(300, 2))
    y = np.sin(2 * X[:, 0]) + X[:, 1] ** 2 + 0.3 * rng.normal(size=300)
    reg = MLPRegressor(hidden_layer_sizes=(16,), activation="tanh", learning_rate_init=0.01,
                       max_iter=500, early_stopping=True, validation_fraction=0.2,
                       random_state=0).fit(X, y)
    assert reg.n_iter_ < 500 and len(reg.validation_scores_) == reg.n_iter_
    assert no_improvement_stop(reg.validation_scores_, reg.tol, 10) == reg.n_iter_
    assert 0.5 < reg.best_validation_score_ == max(reg.validation_scores_) <= 1
    assert reg.best_loss_ is None


def test_early_stopping_split_is_stratified_for_labels_only(monkeypatch):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(160, 3))
    y = np.repeat(["a", "b", "c"], [100, 40, 20])  # string labels, imbalanced
    spy = SplitSpy(monkeypatch)
    fit_quiet(MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, early_stopping=True,
                            validation_fraction=0.25, random_state=0), X, y)
    # Stratified: exactly a quarter of each class (a plain random split of 40 rows would
    # hold 25/10/5 by chance only).
    np.testing.assert_array_equal(spy.calls[-1]["stratify"], y)
    assert dict(zip(*np.unique(spy.calls[-1]["y_val"], return_counts=True))) == {
        "a": 25, "b": 10, "c": 5}
    # Multilabel indicator targets and regression targets are split without stratifying.
    Y = (X[:, :2] > 0).astype(int)
    fit_quiet(MLPClassifier(hidden_layer_sizes=(4,), loss="binary_cross_entropy", max_iter=2,
                            early_stopping=True, random_state=0), X, Y)
    assert spy.calls[-1]["stratify"] is None and spy.calls[-1]["y_val"].shape == (16, 2)
    fit_quiet(MLPRegressor(hidden_layer_sizes=(4,), max_iter=2, early_stopping=True,
                           random_state=0), X, X[:, 0])
    assert spy.calls[-1]["stratify"] is None
    # A split the class counts do not allow is one clear error.
    with pytest.raises(ValueError, match=r"early_stopping: cannot hold out a stratified "
                                         r"validation_fraction=0.1 of 20 samples"):
        MLPClassifier(early_stopping=True).fit(X[:20], np.arange(20) % 3)
    with pytest.raises(ValueError, match="The validation set is too small"):
        MLPRegressor(early_stopping=True).fit(X[:10], X[:10, 0])


def test_early_stopping_off_attributes_and_partial_fit(spiral):
    X, y = spiral
    clf = fit_quiet(MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0), X, y)
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None
    assert clf.best_loss_ == min(clf.loss_curve_)
    # partial_fit refuses early stopping, as scikit-learn's does, before changing anything.
    clf.set_params(early_stopping=True)
    before = clf.model_.params.copy()
    with pytest.raises(ValueError, match=r"^partial_fit does not support early_stopping=True$"):
        clf.partial_fit(X, y)
    # Refused before anything changed: bitwise.
    np.testing.assert_array_equal(clf.model_.params, before)
    assert clf.n_iter_ == 3
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        MLPRegressor(early_stopping=True).partial_fit(X, y)
    # After a fit with early stopping, partial_fit (early_stopping off again) tracks the
    # training loss from there.
    clf = fit_quiet(MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, early_stopping=True,
                                  random_state=0), X, y)
    clf.set_params(early_stopping=False).partial_fit(X, y)
    assert clf.n_iter_ == 4 and clf.best_loss_ == clf.loss_curve_[-1]
    assert len(clf.validation_scores_) == 3


def test_early_stopping_in_grid_search():
    X, y = load_digits()
    X, y = X[:400], y[:400]
    pipe = make_pipeline(StandardScaler(), MLPClassifier(
        hidden_layer_sizes=(32,), max_iter=200, early_stopping=True, validation_fraction=0.2,
        random_state=0))
    search = GridSearchCV(pipe, {"mlpclassifier__learning_rate_init": [1e-4, 1e-2]}, cv=2)
    fit_quiet(search, X, y)
    assert search.best_params_ == {"mlpclassifier__learning_rate_init": 1e-2}
    # Early stopping on 40 validation rows of each 200-row fold stops at ~0.8 accuracy.
    assert search.best_score_ > 0.8
    best = search.best_estimator_[-1]
    assert best.early_stopping and best.n_iter_ < 200
    assert best.best_validation_score_ == max(best.validation_scores_) > 0.85


def test_early_stopping_verbose_and_weighted_score(spiral, monkeypatch, capsys):
    X, y = spiral
    w = np.where(np.arange(len(y)) % 4 == 0, 3.0, 1.0)
    spy = SplitSpy(monkeypatch)
    clf = fit_quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=4, early_stopping=True,
                                  verbose=1, random_state=0, dtype="float32"), X, y,
                    sample_weight=w)
    assert capsys.readouterr().out.count("Validation score: ") == 4
    # The validation score is weighted by the held-out rows' weights, as scikit-learn's is.
    call = spy.calls[0]
    assert set(call["w_val"]) == {1.0, 3.0}
    best_epoch = int(np.argmax(clf.validation_scores_)) + 1
    cut = fit_quiet(clone(clf).set_params(max_iter=best_epoch, verbose=0), X, y, sample_weight=w)
    # Bitwise: the same run, stopped at the best epoch.
    np.testing.assert_array_equal(cut.model_.params, clf.model_.params)
    weighted = clf.score(call["X_val"], call["y_val"], sample_weight=call["w_val"])
    assert weighted == clf.best_validation_score_
    assert weighted != clf.score(call["X_val"], call["y_val"])
    # Zero weight on every held-out row leaves no score to stop on (the split does not
    # depend on the weights, so the same rows are held out).
    rows = np.column_stack([X.astype(np.float32), y])  # X alone repeats the spiral's centre
    held_out = (rows[:, None, :] == np.column_stack([call["X_val"], call["y_val"]])[None]).all(
        axis=2).any(axis=1)
    assert held_out.sum() == len(call["X_val"])
    with pytest.raises(ValueError, match="zero on every row of the validation set"):
        clone(clf).fit(X, y, sample_weight=np.where(held_out, 0.0, 1.0))


def test_divergence_after_the_best_epoch_keeps_the_best_parameters(spiral, monkeypatch):
    X, y = spiral
    clf = MLPClassifier(**ES).fit(X, y)
    best_epoch = int(np.argmax(clf.validation_scores_)) + 1
    real_steps, calls = Sequential.train_steps, []

    def diverging_steps(self, rows, order, batch_size, first, stop, batch_losses, *args):
        calls.append(None)  # one call per epoch (no progress bar)
        if len(calls) == best_epoch + 2:
            batch_losses[first] = np.nan  # the epoch's first step diverges
            return first
        return real_steps(self, rows, order, batch_size, first, stop, batch_losses, *args)

    monkeypatch.setattr(Sequential, "train_steps", diverging_steps)
    twin = clone(clf)
    with pytest.raises(DivergenceError, match=rf"^epoch {best_epoch + 2} of MLPClassifier: the "
                       rf".* keeps the parameters of epoch {best_epoch}, the best validation"):
        twin.fit(X, y)
    # Bitwise: the best epoch's parameters, kept as a copy.
    np.testing.assert_array_equal(twin.model_.params, clf.model_.params)


# ----------------------------------------------------------------- sample weights
def equivalence_data():
    """check_sample_weight_equivalence_on_dense_data's data: 15 rows, integer weights
    (zeros included), and the rows repeated as many times as their weight."""
    rng = np.random.RandomState(42)
    X, y, w = rng.rand(15, 30), rng.randint(0, 3, size=15), rng.randint(0, 5, size=15)
    return X, y, w, X.repeat(w, axis=0), y.repeat(w)


@pytest.mark.parametrize("estimator", [e for e in ESTIMATORS if e.dtype == "float32"],
                         ids=lambda e: f"{type(e).__name__}-{e.loss}")
def test_sample_weight_equivalence_float32(estimator):
    # The scikit-learn check, run in float64 above, at float32's tolerance: weights of k
    # are k repeated rows (0: a dropped row) while the batch is the whole data set.
    X, y, w, X_repeated, y_repeated = equivalence_data()
    weighted = fit_quiet(clone(estimator), X, y, sample_weight=w)
    repeated = fit_quiet(clone(estimator), X_repeated, y_repeated)
    assert weighted.n_iter_ == repeated.n_iter_
    method = "decision_function" if hasattr(weighted, "decision_function") else "predict"
    expected = getattr(repeated, method)(X)
    # Another order of the same float32 sums (15 weighted rows against 29 rows), over 30
    # epochs: tolerances.FLOAT32_TRAJECTORY_RTOL; ignoring the weights moves them by ~0.1.
    assert_trajectories_agree(getattr(weighted, method)(X), expected, method, np.float32)
    assert_trajectories_agree(weighted.loss_curve_, repeated.loss_curve_, "loss curve", np.float32)


def test_sample_weight_all_ones_is_no_weight_bit_for_bit(spiral):
    X, y = spiral
    ones = np.ones(len(y))
    # float32, as these were written for: in float64 the parameters are bitwise the same
    # too, but the reported loss of an epoch can differ in its last bit.
    for estimator, target in [(MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, batch_size=32,
                                             random_state=0, dtype="float32"), y),
                              (MLPRegressor(hidden_layer_sizes=(8,), max_iter=5, batch_size=32,
                                            random_state=0, dtype="float32"), X[:, 0] * X[:, 1]),
                              (MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, batch_size=32,
                                             early_stopping=True, random_state=0,
                                             dtype="float32"), y)]:
        plain = fit_quiet(clone(estimator), X, target)
        weighted = fit_quiet(clone(estimator), X, target, sample_weight=ones)
        # Bitwise: a weight of 1.0 (the mean-1 rescaling of all ones) multiplies exactly.
        np.testing.assert_array_equal(weighted.model_.params, plain.model_.params)
        assert weighted.loss_curve_ == plain.loss_curve_
        assert weighted.validation_scores_ == plain.validation_scores_
    online = MLPClassifier(hidden_layer_sizes=(8,), batch_size=32, random_state=0)
    online_weighted = clone(online)
    for _ in range(2):
        online.partial_fit(X, y, classes=[0, 1, 2])
        online_weighted.partial_fit(X, y, ones, [0, 1, 2])  # scikit-learn's argument order
    np.testing.assert_array_equal(online_weighted.model_.params, online.model_.params)


def test_sample_weight_is_normalised_to_mean_one(spiral):
    # Only relative weights matter, as in scikit-learn: 4 * w trains the same network bit for
    # bit (a power of 2 rescales exactly).  Without the normalisation, plain SGD would take
    # 4 times larger steps.
    X, y = spiral
    w = np.random.default_rng(0).uniform(0.1, 2.0, size=len(y))
    sgd = MLPClassifier(hidden_layer_sizes=(8,), optimizer="sgd", learning_rate_init=0.05,
                        max_iter=5, batch_size=32, random_state=0)
    a = fit_quiet(clone(sgd), X, y, sample_weight=w)
    b = fit_quiet(clone(sgd), X, y, sample_weight=4 * w)
    # Bitwise: 4 w / mean(4 w) = w / mean(w) exactly (a power of 2 rescales exactly).
    np.testing.assert_array_equal(a.model_.params, b.model_.params)
    c = fit_quiet(clone(sgd), X, y, sample_weight=w / w.mean())
    # w / mean(w) and w differ by float64 rounding before the float32 cast; a float32 weight
    # that lands on the other side of a rounding boundary then changes the float32 steps by
    # an ulp: a float32 trajectory (tolerances.FLOAT32_TRAJECTORY_RTOL), far below the 1e-3
    # the weights themselves make (checked next).
    assert_trajectories_agree(c.model_.params, a.model_.params, "params", np.float32)
    plain = fit_quiet(clone(sgd), X, y)
    assert np.abs(a.model_.params - plain.model_.params).max() > 1e-3  # the weights matter


def test_loss_curve_is_the_weighted_mean_loss(spiral):
    # One full-batch epoch at a negligible learning rate: its loss is that of the network
    # as it ends, averaged with the weights, sum(w * loss) / sum(w), as scikit-learn reports.
    X, y = spiral
    w = np.random.default_rng(0).uniform(0.1, 2.0, size=len(y))
    clf = fit_quiet(MLPClassifier(hidden_layer_sizes=(8,), optimizer="sgd", momentum=0.0,
                                  learning_rate_init=1e-12, max_iter=1, dtype="float64",
                                  random_state=0), X, y, sample_weight=w)
    row_loss = -np.log(clf.predict_proba(X)[np.arange(len(y)), y])
    # float64; a step of lr=1e-12 moves the loss by ~1e-12 relative, and the kernel's and
    # numpy's sums of the same rows differ by FLOAT64_TRAJECTORY_RTOL at most: 1e-9 covers both.
    np.testing.assert_allclose(clf.loss_curve_[0], np.average(row_loss, weights=w), rtol=1e-9)
    assert not np.isclose(clf.loss_curve_[0], row_loss.mean(), rtol=1e-4)  # the weights matter


def test_zero_weights_drop_rows_in_full_batch_training():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    keep = rng.random(150) < 0.6
    w = keep.astype(float)
    full_batch = MLPClassifier(hidden_layer_sizes=(8,), dtype="float64", max_iter=20,
                               learning_rate_init=0.01, random_state=0)  # "auto": 150 rows
    weighted = fit_quiet(clone(full_batch), X, y, sample_weight=w)
    dropped = fit_quiet(clone(full_batch), X[keep], y[keep])
    # float64: 150 rows of which 60 weigh 0 against the 90 rows alone, 20 full-batch steps:
    # another order of the same sums (tolerances.FLOAT64_TRAJECTORY_RTOL).
    assert_trajectories_agree(weighted.predict_proba(X), dropped.predict_proba(X), "proba")
    assert_trajectories_agree(weighted.loss_curve_, dropped.loss_curve_, "loss curve")
    # In minibatches the zero-weight rows still take up places in the batches, so the steps
    # differ (scikit-learn's MLP is no different there).
    mini = full_batch.set_params(batch_size=16)
    weighted = fit_quiet(clone(mini), X, y, sample_weight=w)
    dropped = fit_quiet(clone(mini), X[keep], y[keep])
    assert not np.allclose(weighted.predict_proba(X), dropped.predict_proba(X), rtol=1e-3)  # far apart


def test_sample_weight_shifts_the_decision():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 2))
    y = (X[:, 0] + rng.normal(size=400) > 0).astype(int)  # overlapping classes
    clf = MLPClassifier(hidden_layer_sizes=(8,), learning_rate_init=0.01, max_iter=50,
                        random_state=0)
    plain = fit_quiet(clone(clf), X, y)
    favour_1 = fit_quiet(clone(clf), X, y, sample_weight=np.where(y == 1, 5.0, 1.0))
    share_plain, share_favoured = plain.predict(X).mean(), favour_1.predict(X).mean()
    assert 0.4 < share_plain < 0.6
    assert share_favoured > share_plain + 0.2


def test_sample_weight_validation(spiral, monkeypatch):
    X, y = spiral
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=1)
    w = np.ones(len(y))
    for bad, message in [(-w, "Negative values in data passed to `sample_weight`"),
                         (0 * w, "Sample weights must contain at least one non-zero number"),
                         (w[:-1], r"sample_weight.shape == \(179,\), expected \(180,\)"),
                         (np.where(y == 0, np.nan, 1.0), "Input sample_weight contains NaN"),
                         (np.ones((len(y), 2)), "Sample weights must be 1D")]:
        with pytest.raises(ValueError, match=message):
            clone(clf).fit(X, y, sample_weight=bad)
        with pytest.raises(ValueError, match=message):
            clone(clf).partial_fit(X, y, sample_weight=bad, classes=[0, 1, 2])
    # Zero weight on every row the network would train on, once the validation rows are
    # held out, is refused too.
    spy = SplitSpy(monkeypatch)
    reg = MLPRegressor(hidden_layer_sizes=(4,), max_iter=1, early_stopping=True,
                       validation_fraction=0.5, dtype="float64", random_state=0)
    fit_quiet(reg, X[:6], X[:6, 0])
    held_out = (X[:6, None, :] == spy.calls[0]["X_val"][None]).all(axis=2).any(axis=1)
    assert held_out.sum() == 3
    with pytest.raises(ValueError, match="zero on every row of the training part left by "
                                         "early_stopping"):
        reg.fit(X[:6], X[:6, 0], sample_weight=held_out.astype(float))


# ----------------------------------------------------------------- check_estimator on defaults
# scikit-learn's check_estimator, as a user runs it: default arguments (every check,
# legacy ones included, raising on the first failure), on estimators with their default
# parameters.  In a fresh interpreter with SCIPY_ARRAY_API=1, which scipy reads when it is
# imported: without it scikit-learn skips check_array_api_input (it checks that array-API
# dispatch with numpy inputs changes nothing), and here every check must run.
CHECK_DEFAULTS = r"""
import json, sys, warnings
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import check_estimator
from fastmlp.sklearn import MLPClassifier, MLPRegressor
warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter=200 on tiny data, by design
statuses = []
def record(estimator, check_name, exception, status, expected_to_fail, expected_to_fail_reason):
    statuses.append([type(estimator).__name__, check_name, status, repr(exception)[:2000]])
for estimator in (MLPClassifier(), MLPRegressor()):
    check_estimator(estimator, on_fail=None, callback=record)  # every check, then report
json.dump(statuses, sys.stdout)
"""


def test_check_estimator_on_defaults():
    env = dict(os.environ, SCIPY_ARRAY_API="1")
    out = subprocess.run([sys.executable, "-c", CHECK_DEFAULTS], capture_output=True, text=True,
                         env=env, timeout=1200)
    assert out.returncode == 0, out.stderr[-5000:]
    statuses = json.loads(out.stdout)
    for name in ("MLPClassifier", "MLPRegressor"):
        checks = {check: (status, error) for estimator, check, status, error in statuses
                  if estimator == name}
        assert len(checks) > 50, checks  # 62 and 60 with scikit-learn 1.9
        failed = {check: result for check, result in checks.items() if result[0] != "passed"}
        assert not failed, failed
        assert {"check_sample_weight_equivalence_on_dense_data", "check_array_api_input",
                "check_readonly_memmap_input", "check_estimators_dtypes",
                "check_fit_idempotent"} <= set(checks)


# ----------------------------------------------------------------- dtype follows the input
@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_dtype_none_follows_the_input(spiral, Estimator):
    X, y = spiral
    small = dict(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    for X_fit, expected in [(X.astype(np.float32), np.float32), (X.astype(np.float64), np.float64),
                            (np.round(X * 10).astype(np.int64), np.float64),  # as scikit-learn
                            (X.tolist(), np.float64)]:
        est = fit_quiet(Estimator(**small), X_fit, y)
        assert est.model_.dtype == expected
        # Later calls convert X to the network's dtype, whatever they are given.
        assert est.predict(X.astype(np.float32)).shape == y.shape
        est.partial_fit(X.astype(np.float32 if expected == np.float64 else np.float64), y)
        assert est.model_.dtype == expected
    # An explicit dtype wins over the input's.
    for dtype, X_fit in [("float32", X.astype(np.float64)), ("float64", X.astype(np.float32)),
                         (np.float32, X.astype(np.float64))]:
        assert fit_quiet(Estimator(dtype=dtype, **small), X_fit, y).model_.dtype == np.dtype(dtype)
    assert Estimator().get_params()["dtype"] is None


def test_dtype_none_trains_the_explicit_dtypes_model_bit_for_bit(spiral):
    X, y = spiral
    for dtype in (np.float32, np.float64):
        following = fit_quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0),
                              X.astype(dtype), y)
        explicit = fit_quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0,
                                           dtype=dtype), X.astype(dtype), y)
        # Bitwise: the same network, data and seed.
        np.testing.assert_array_equal(following.model_.params, explicit.model_.params)


def test_read_only_inputs_and_memory_mapped_estimators(spiral, tmp_path):
    joblib = pytest.importorskip("joblib")  # a scikit-learn dependency
    X, y = spiral
    X_read_only = X.copy()
    X_read_only.flags.writeable = False
    clf = fit_quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0),
                    X_read_only, y)
    twin = fit_quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0), X, y)
    # Bitwise: a read-only X trains and predicts exactly as a writable one.
    np.testing.assert_array_equal(clf.model_.params, twin.model_.params)
    np.testing.assert_array_equal(clf.decision_function(X_read_only), twin.decision_function(X))
    joblib.dump(clf, tmp_path / "clf.joblib")
    mapped = joblib.load(tmp_path / "clf.joblib", mmap_mode="r")
    # The network owns writable arrays again (its layers view them), and keeps training.
    assert mapped.model_.params.flags.writeable and mapped.model_.optimizer.state.flags.writeable
    assert np.shares_memory(mapped.model_.layers[0].W, mapped.model_.params)
    np.testing.assert_array_equal(mapped.predict_proba(X), clf.predict_proba(X))
    mapped.partial_fit(X, y)
    clf.partial_fit(X, y)
    np.testing.assert_array_equal(mapped.model_.params, clf.model_.params)


# ----------------------------------------------------------------- warm_start
WARM = dict(hidden_layer_sizes=(8,), learning_rate_init=0.01, tol=0.0, random_state=0)


@pytest.mark.parametrize("Estimator,optimizer", [(MLPClassifier, "adam"), (MLPClassifier, "sgd"),
                                                 (MLPRegressor, "adam")])
def test_warm_start_continues_weights_and_optimizer_state(spiral, Estimator, optimizer):
    X, y = spiral
    if Estimator is MLPRegressor:
        y = X[:, 0] * X[:, 1]
    params = dict(WARM, optimizer=optimizer, shuffle=False, batch_size=32)
    warm = fit_quiet(Estimator(warm_start=True, max_iter=4, **params), X, y)
    step_count = warm.model_.optimizer.step_count
    model = warm.model_
    fit_quiet(warm, X, y)
    assert warm.model_ is model and warm.n_iter_ == len(warm.loss_curve_) == 8
    assert warm.model_.optimizer.step_count == 2 * step_count  # 4 epochs of 6 batches, twice
    once = fit_quiet(Estimator(max_iter=8, **params), X, y)
    # Bitwise: the same 8 epochs in the same order, the optimizer's state carried over
    # (scikit-learn's MLP would restart Adam's moments and bias correction here).
    np.testing.assert_array_equal(warm.model_.params, once.model_.params)
    np.testing.assert_array_equal(warm.model_.optimizer.state, once.model_.optimizer.state)
    assert warm.loss_curve_ == once.loss_curve_
    # A fresh optimizer after 4 epochs (scikit-learn's warm start) trains another model.
    restarted = fit_quiet(Estimator(max_iter=4, **params), X, y)
    restarted.model_.optimizer.state[...] = 0
    restarted.model_.optimizer.step_count = 0
    restarted.partial_fit(X, y)
    once_more = fit_quiet(Estimator(max_iter=5, **params), X, y)
    assert not np.array_equal(restarted.model_.params, once_more.model_.params)


def test_warm_start_with_shuffling_matches_one_long_fit(spiral):
    X, y = spiral
    warm = fit_quiet(MLPClassifier(warm_start=True, max_iter=3, **WARM), X, y)
    fit_quiet(warm, X, y)
    once = fit_quiet(MLPClassifier(max_iter=6, **WARM), X, y)
    # Bitwise: fresh_order makes each epoch's order depend on the model's RNG only, which
    # carries over with the network.
    np.testing.assert_array_equal(warm.model_.params, once.model_.params)


def test_warm_start_false_starts_afresh_and_new_hyperparameters_apply(spiral):
    X, y = spiral
    cold = fit_quiet(MLPClassifier(max_iter=3, **WARM), X, y)
    first = cold.model_
    fit_quiet(cold, X, y)
    assert cold.model_ is not first and cold.n_iter_ == 3
    np.testing.assert_array_equal(cold.model_.params, first.params)  # same seed, same data
    warm = fit_quiet(MLPClassifier(warm_start=True, max_iter=3, **WARM), X, y)
    before = warm.model_.params.copy()
    steps = warm.model_.optimizer.step_count
    fit_quiet(warm.set_params(learning_rate_init=0.0), X, y)  # lr 0 freezes the weights
    # Bitwise: Adam's update is lr times a finite number.
    np.testing.assert_array_equal(warm.model_.params, before)
    assert warm.model_.optimizer.lr == 0.0 and warm.model_.optimizer.step_count > steps
    # n_iter_, loss_curve_ and the stopping rule's best loss go on from the first fit.
    assert warm.n_iter_ == len(warm.loss_curve_) == 6 and warm.best_loss_ == min(warm.loss_curve_)


def test_warm_start_refuses_a_different_network_before_changing_anything(spiral):
    X, y = spiral
    clf = fit_quiet(MLPClassifier(warm_start=True, max_iter=2, **WARM), X, y)
    state = training_state_of(clf)
    for params, match in [(dict(hidden_layer_sizes=(9,)), "hidden_layer_sizes"),
                          (dict(activation="tanh"), "activation"),
                          (dict(optimizer="sgd"), "optimizer='sgd'"),
                          (dict(dtype="float32"), "dtype='float32'"),
                          (dict(loss="multiclass_hinge"), "loss")]:
        with pytest.raises(ValueError, match=match):
            fit_quiet(clf.set_params(**params), X, y)
        clf.set_params(**MLPClassifier(warm_start=True, max_iter=2, **WARM).get_params())
        assert training_state_of(clf) == state
    with pytest.raises(ValueError, match="same classes"):
        fit_quiet(clf, X[y < 2], y[y < 2])
    with pytest.raises(ValueError, match="features"):
        fit_quiet(clf, np.hstack([X, X]), y)
    assert training_state_of(clf) == state
    regressor = fit_quiet(MLPRegressor(warm_start=True, max_iter=2, **WARM), X, y.astype(float))
    with pytest.raises(ValueError, match="target columns"):
        fit_quiet(regressor, X, np.c_[y, y].astype(float))
    # explicit float64, as the fitted network: accepted
    fit_quiet(clf.set_params(dtype="float64"), X, y)
    assert clf.n_iter_ == 4


def test_warm_start_stopping_rule_goes_on_as_scikit_learns(spiral):
    X, y = spiral
    # tol=10: only the first epoch improves (on inf); the 4th is the third without.
    clf = fit_quiet(MLPClassifier(warm_start=True, n_iter_no_change=2, max_iter=50,
                                  **dict(WARM, tol=10.0)), X, y)
    assert clf.n_iter_ == 4
    fit_quiet(clf, X, y)  # the count goes on: a fourth epoch without improvement stops it
    assert clf.n_iter_ == 5


def training_state_of(estimator):
    model = estimator.model_
    return (model.params.tobytes(), model.optimizer.state.tobytes(), model.optimizer.step_count,
            estimator.n_iter_, list(estimator.loss_curve_))


def test_warm_start_with_early_stopping(spiral):
    X, y = spiral
    clf = fit_quiet(MLPClassifier(warm_start=True, early_stopping=True, max_iter=5,
                                  n_iter_no_change=100, **WARM), X, y)
    fit_quiet(clf, X, y)
    assert clf.n_iter_ == len(clf.validation_scores_) == 10
    # The best of the second fit's epochs, whose parameters the network has.
    assert clf.best_validation_score_ == max(clf.validation_scores_[5:])
    plain = fit_quiet(MLPClassifier(warm_start=True, max_iter=2, **WARM), X, y)
    fit_quiet(plain.set_params(early_stopping=True), X, y)
    assert len(plain.validation_scores_) == 2 and plain.n_iter_ == 4


def test_reproducible_mode_predicts_rows_alone_without_padding(monkeypatch):
    import fastmlp

    X, y = make_spiral(n_per_class=40, seed=3)
    clf = MLPClassifier(dtype="float32", **SMALL).fit(X, y)
    with fastmlp.reproducible():
        full = clf.predict_proba(X)
        rows = [0, 1, 13, 64, 119]
        alone = np.stack([clf.predict_proba(X[i:i + 1])[0] for i in rows])
        np.testing.assert_array_equal(alone, full[rows])
        # The 64-row padding is left out: the network sees the caller's rows only.
        seen = []
        real = Sequential.decision_function
        monkeypatch.setattr(Sequential, "decision_function",
                            lambda self, Z: seen.append(len(Z)) or real(self, Z))
        clf.predict_proba(X[:3])
    assert seen == [3]
    # Outside the mode the same estimator still pads to 64-row blocks.
    clf.predict_proba(X[:3])
    assert seen == [3, 64]
