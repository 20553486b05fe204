"""fastmlp.sklearn: the scikit-learn estimators (skipped when scikit-learn is not installed)."""

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

from fastmlp import Sequential  # noqa: E402
from fastmlp.datasets import load_digits, make_spiral  # noqa: E402
from fastmlp.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# Small networks and few epochs keep the ~330 checks at a few seconds once numba's cache is
# warm; the learning rate is raised so that the checks that want a decent score get one.
SMALL = dict(hidden_layer_sizes=(16,), max_iter=30, learning_rate_init=0.01, random_state=0)


ESTIMATORS = [
    MLPClassifier(**SMALL),
    MLPClassifier(loss="multiclass_hinge", **SMALL),
    MLPClassifier(loss="binary_cross_entropy", **SMALL),
    MLPClassifier(optimizer="sgd", activation="maxout", dtype="float64",
                  **dict(SMALL, learning_rate_init=0.005)),
    MLPRegressor(**SMALL),
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


@pytest.mark.parametrize("estimator,check", CHECKS,
                         ids=[f"{type(e).__name__}-{_check_name(c)}" for e, c in CHECKS])
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is small on purpose
        check(estimator)


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
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(X))
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), proba)


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "multiclass_hinge", "binary_cross_entropy"])
def test_binary_decision_function_is_one_column(loss):
    X, y = make_spiral(n_per_class=30, n_classes=2, seed=1)
    labels = np.where(y == 1, 5, -3)
    clf = fit_quiet(MLPClassifier(hidden_layer_sizes=(8,), loss=loss, max_iter=5, random_state=0),
                    X, labels)
    scores = clf.decision_function(X)
    assert scores.shape == (len(X),)
    np.testing.assert_array_equal(clf.predict(X), np.where(scores > 0, 5, -3))
    assert hasattr(clf, "predict_proba") == (loss != "multiclass_hinge")
    if loss == "binary_cross_entropy":
        assert clf.model_.n_outputs == 1
        np.testing.assert_allclose(clf.predict_proba(X)[:, 1], 1 / (1 + np.exp(-scores)))


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
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    full = a.decision_function(X)
    for rows in (slice(0, 1), slice(5, 12), slice(60, 170)):
        np.testing.assert_array_equal(a.decision_function(X[rows]), full[rows])  # bitwise


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
           dict(shuffle="yes")]
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
    np.testing.assert_array_equal(twin.predict_proba(X), clf.predict_proba(X))
    twin.partial_fit(X, y)
    # get_weights() must show the trained parameters, not a stale copy from before the pickle
    W = twin.model_.get_weights()[0]
    assert np.shares_memory(twin.model_.layers[0].W, twin.model_.params)
    assert not np.array_equal(W, clf.model_.get_weights()[0])


def test_verbose_prints_loss(spiral, capsys):
    X, y = spiral
    fit_quiet(MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, verbose=1), X, y)
    assert capsys.readouterr().out.count("Iteration") == 2
