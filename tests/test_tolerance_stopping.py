"""callbacks.ToleranceStopping (scikit-learn's ``tol`` / ``n_iter_no_change`` rule) and
``fit(fresh_order=True)``: the rule against a plain-Python twin of scikit-learn's, its state
across fits and through a checkpoint, argument checks; fresh_order's promise that
``fit(epochs=k)`` trains as ``k`` calls of ``fit(epochs=1)``."""

import math

import numpy as np
import pytest

from fastmlp import SGD, Adam, Dense, Sequential
from fastmlp import io as fio
from fastmlp.callbacks import Callback, ToleranceStopping
from conftest import three_class_data as _data, training_state as _state

INF, NAN = math.inf, math.nan
METRICS = ["loss", "accuracy", "val_loss", "val_accuracy", "lr"]


# ----------------------------------------------------------------------------- helpers
def _model(optimizer=None, dtype=np.float32, seed=3):
    # The shapes, loss and optimizer of test_callbacks.py's model: the kernels compiled for
    # one file serve the other.
    return Sequential([Dense(4, 8, activation="tanh"), Dense(8, 3)],
                      optimizer=optimizer or SGD(lr=0.1, momentum=0.9), seed=seed, dtype=dtype)


class RaiseAt(Callback):
    """Raises ``exc`` in epoch ``epoch``'s on_epoch_end: the process "dies" there, after
    the epoch ran and before its checkpoint was written."""

    def __init__(self, epoch, exc):
        self.epoch, self.exc = epoch, exc

    def on_epoch_end(self, epoch, logs):
        if epoch == self.epoch:
            raise self.exc


def sklearn_rule(values, tol, n_iter_no_change, minimize=True, best=None, count=0):
    """scikit-learn's rule in plain Python: ``_update_no_improvement_count`` (the loss
    branch when minimising, the validation-score branch when maximising) and the test
    ``_no_improvement_count > n_iter_no_change`` after it in ``_fit_stochastic``, with one
    deliberate difference: a NaN never improves (there a NaN compares False and so resets
    the count).

    Returns ``(trace, stopped)``: ``(best, count, best_epoch)`` after each epoch run, and
    the epoch after which training stops (None if the values run out first)."""
    best = (INF if minimize else -INF) if best is None else best
    trace, best_epoch = [], None
    for epoch, value in enumerate(values, 1):
        no_better = value > best - tol if minimize else value < best + tol
        count = count + 1 if no_better or math.isnan(value) else 0
        if (value < best) if minimize else (value > best):
            best, best_epoch = value, epoch
        trace.append((best, count, best_epoch))
        if count > n_iter_no_change:
            return trace, epoch
    return trace, None


def _drive(rule, values, metric="loss", model=None):
    """Run ``rule``'s hooks over ``values`` as fit would; the parameters after epoch ``e``
    are all equal to ``e``.  Returns the model and the trace as :func:`sklearn_rule`'s."""
    model = model or _model(dtype=np.float64)
    model.stop_training = False
    rule.set_model(model)
    rule.on_train_begin({"metrics": METRICS, "epochs": len(values)})
    trace = []
    for epoch, value in enumerate(values, 1):
        model.params[:] = epoch
        logs = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5, "lr": 0.1}
        logs[metric] = value
        rule.on_epoch_end(epoch, logs)
        trace.append((rule.best, rule.no_improvement_count, rule.best_epoch))
        if model.stop_training:
            break
    rule.on_train_end({"error": None})
    return model, trace


def _same_trace(got, want):
    # Bitwise: the rule only compares and copies the values it is given.
    assert len(got) == len(want)
    for (b1, c1, e1), (b2, c2, e2) in zip(got, want):
        assert (b1 == b2 or (math.isnan(b1) and math.isnan(b2))) and c1 == c2 and e1 == e2


# ----------------------------------------------------------------------------- the rule, by hand
# (values, tol, n_iter_no_change, epoch it stops after or None).  Powers of two keep
# `best - tol` exact, so the ties at exactly tol are ties.
MIN_CASES = [
    # best follows every new best, improved by tol or not: a slow, steady decrease stops.
    ([1.0, 0.95, 0.9, 0.85, 0.5], 0.1, 2, 4),
    # An improvement by more than tol resets the count.
    ([1.0, 0.95, 0.8, 0.79, 0.78, 0.77], 0.1, 2, 6),
    ([1.0, 1.5, 1.5, 0.5, 1.5, 1.5, 1.5], 0.25, 2, 7),
    # Exactly tol below the best improves (scikit-learn counts `loss > best - tol`).
    ([1.0, 0.75, 0.5, 0.25, 0.0, -0.25], 0.25, 1, None),
    # tol=0: a tie improves, a worse value does not.
    ([1.0, 1.0, 1.0, 1.0, 1.0], 0.0, 1, None),
    ([1.0, 1.25, 1.5], 0.0, 1, 3),
    # n_iter_no_change: stop once the count *exceeds* it.
    ([1.0] + [2.0] * 6, 0.0, 3, 5),
    ([1.0] + [2.0] * 6, 0.0, 5, 7),
    # NaN never improves, and never becomes the best.
    ([1.0, NAN, NAN, 0.5], 0.1, 1, 3),
    ([1.0, NAN, 0.5, NAN, NAN], 0.1, 1, 5),
    ([NAN, 1.0, NAN, 2.0, 0.5], 0.0, 2, None),
    # tol=inf: the first epoch improves (best - tol is NaN, `loss > NaN` is False), none after.
    ([1.0, 0.5, 0.25, 0.125, 0.0625], INF, 2, 4),
    ([1.0, 0.5], INF, 2, None),
]


@pytest.mark.parametrize("values, tol, n, stopped", MIN_CASES)
def test_minimising_follows_scikit_learn(values, tol, n, stopped):
    want, want_stop = sklearn_rule(values, tol, n)
    assert want_stop == stopped  # the twin says what the comment above the case says
    rule = ToleranceStopping("loss", tol=tol, n_iter_no_change=n)
    model, trace = _drive(rule, values)
    _same_trace(trace, want)
    assert rule.stopped_epoch == stopped and model.stop_training == (stopped is not None)


MAX_CASES = [
    ([0.5, 0.55, 0.6, 0.65, 0.9], 0.1, 2, 4),
    ([0.5, 0.55, 0.7, 0.71, 0.72, 0.73], 0.1, 2, 6),
    # Exactly tol above the best improves (scikit-learn counts `score < best + tol`).
    ([0.0, 0.25, 0.5, 0.75, 1.0], 0.25, 1, None),
    ([0.5, 0.5, 0.5, 0.5], 0.0, 1, None),
    ([0.5, 0.25, 0.0], 0.0, 1, 3),
    ([0.5, NAN, NAN, 0.75], 0.1, 1, 3),
    ([NAN, 0.5, NAN, 0.25, 0.75], 0.0, 2, None),
    # tol=inf: the first epoch improves (best + tol is NaN, `score < NaN` is False), none after.
    ([0.5, 0.6, 0.7, 0.8, 0.9], INF, 2, 4),
    ([0.5, 0.6], INF, 2, None),
]


@pytest.mark.parametrize("values, tol, n, stopped", MAX_CASES)
@pytest.mark.parametrize("metric, mode", [("val_accuracy", "auto"), ("accuracy", "max"),
                                          ("val_loss", "max")])
def test_maximising_follows_scikit_learn(values, tol, n, stopped, metric, mode):
    want, want_stop = sklearn_rule(values, tol, n, minimize=False)
    assert want_stop == stopped
    rule = ToleranceStopping(metric, tol=tol, n_iter_no_change=n, mode=mode)
    model, trace = _drive(rule, values, metric=metric)
    _same_trace(trace, want)
    assert rule.stopped_epoch == stopped and model.stop_training == (stopped is not None)


def test_mode_min_on_an_accuracy_and_auto_on_a_loss():
    for metric, mode in [("val_accuracy", "min"), ("val_loss", "auto"), ("accuracy", "min")]:
        values = [0.5, 0.25, 0.5, 0.5]
        rule = ToleranceStopping(metric, tol=0.0, n_iter_no_change=1, mode=mode)
        _, trace = _drive(rule, values, metric=metric)
        _same_trace(trace, sklearn_rule(values, 0.0, 1)[0])
        assert rule.stopped_epoch == 4 and rule.best == 0.25


@pytest.mark.parametrize("minimize", [True, False])
@pytest.mark.parametrize("tol", [0.0, 1e-3, 0.05, 0.3, INF])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_random_sequences_follow_the_twin(minimize, tol, n):
    rng = np.random.default_rng(17 * n + int(minimize))
    for _ in range(20):
        # A noisy drift in the direction that improves, ties (rounding) and a few NaNs.
        steps = rng.normal(-0.02 if minimize else 0.02, 0.05, size=12)
        values = np.round(1.0 + np.cumsum(steps), 2)
        values[rng.random(12) < 0.1] = NAN
        values = [float(v) for v in values]
        want, stopped = sklearn_rule(values, tol, n, minimize)
        rule = ToleranceStopping("loss", tol=tol, n_iter_no_change=n,
                                 mode="min" if minimize else "max")
        _, trace = _drive(rule, values)
        _same_trace(trace, want)
        assert rule.stopped_epoch == stopped


class _Stub:
    """What scikit-learn's ``_update_no_improvement_count`` reads and writes of an MLP."""

    verbose = False
    coefs_ = intercepts_ = ()

    def __init__(self, tol, scores):
        self.tol, self._scores = tol, iter(scores)
        self._no_improvement_count = 0
        self.best_loss_, self.best_validation_score_ = INF, -INF
        self.loss_curve_, self.validation_scores_ = [], []

    def _score(self, X, y, sample_weight=None):
        return next(self._scores)


@pytest.mark.parametrize("minimize", [True, False])
def test_the_twin_is_scikit_learns_rule(minimize):
    """The twin against scikit-learn's own method, where they agree by design: without NaN."""
    mlp = pytest.importorskip("sklearn.neural_network._multilayer_perceptron")
    update = mlp.BaseMultilayerPerceptron._update_no_improvement_count
    cases = [c for c in (MIN_CASES if minimize else MAX_CASES)
             if not any(math.isnan(v) for v in c[0])]
    for values, tol, n, _ in cases:
        stub = _Stub(tol, values)
        got = []
        for value in values:
            if minimize:
                stub.loss_curve_.append(value)
            try:
                update(stub, not minimize, None, None, None)
            except TypeError:  # another signature: a scikit-learn older than the twin
                pytest.skip("scikit-learn's _update_no_improvement_count has changed")
            got.append((stub.best_loss_ if minimize else stub.best_validation_score_,
                        stub._no_improvement_count))
        want = [(best, count) for best, count, _ in sklearn_rule(values, tol, 10 ** 9, minimize)[0]]
        assert got == want


def test_a_callable_monitor_is_called_once_per_epoch():
    scores = iter([0.5, 0.4, 0.3, 0.2])
    calls = []

    def score():
        calls.append(1)
        return next(scores)

    rule = ToleranceStopping(score, tol=0.0, n_iter_no_change=1, mode="max")
    model, trace = _drive(rule, [0.0] * 4)
    assert len(calls) == 3 and rule.stopped_epoch == 3 and rule.best == 0.5


# ----------------------------------------------------------------------------- restore_best_weights
def test_restore_best_weights_puts_back_the_epoch_that_set_best():
    # Epoch 4 sets best (0.85) without improving by tol: it is still the one restored.
    values = [1.0, 0.95, 0.9, 0.85, 0.9, 0.9]
    rule = ToleranceStopping("loss", tol=0.1, n_iter_no_change=2, restore_best_weights=True)
    model, _ = _drive(rule, values)
    assert rule.stopped_epoch == 4 and rule.best_epoch == rule.restored_epoch == 4
    assert (model.params == 4).all()
    rule = ToleranceStopping("loss", tol=0.0, n_iter_no_change=2, restore_best_weights=True)
    model, _ = _drive(rule, [1.0, 0.5, 0.75, 0.75, 0.75, 0.1])
    assert rule.stopped_epoch == 5 and rule.restored_epoch == 2 and (model.params == 2).all()
    # When the epochs run out, too.
    rule = ToleranceStopping("loss", tol=0.0, n_iter_no_change=5, restore_best_weights=True)
    model, _ = _drive(rule, [1.0, 0.5, 0.75])
    assert rule.stopped_epoch is None and rule.restored_epoch == 2 and (model.params == 2).all()


def test_without_restore_the_last_parameters_stay():
    rule = ToleranceStopping("loss", tol=0.0, n_iter_no_change=1)
    model, _ = _drive(rule, [1.0, 2.0, 2.0])
    assert rule.stopped_epoch == 3 and rule.restored_epoch is None and (model.params == 3).all()


def test_nothing_is_restored_when_no_epoch_of_this_fit_set_best():
    rule = ToleranceStopping("loss", tol=0.0, n_iter_no_change=1, restore_best_weights=True,
                             best=0.5)
    model, trace = _drive(rule, [1.0, 0.75, 0.75])
    assert trace == [(0.5, 1, None), (0.5, 2, None)]
    assert rule.restored_epoch is None and (model.params == 2).all()


# ----------------------------------------------------------------------------- state across fits
def test_best_and_count_given_at_construction_start_the_rule():
    values = [0.75, 0.5, 0.4375]
    want, stopped = sklearn_rule(values, 0.125, 3, best=0.5, count=2)
    rule = ToleranceStopping("loss", tol=0.125, n_iter_no_change=3, best=0.5,
                             no_improvement_count=2)
    _, trace = _drive(rule, values)
    _same_trace(trace, want)
    assert stopped == 2 == rule.stopped_epoch


def test_state_carries_over_from_one_fit_to_the_next():
    """As across scikit-learn's partial_fit calls: the second fit goes on counting from the
    first's best and count; only best_epoch (an epoch of *this* fit) starts afresh."""
    X, y = _data(37)
    model = _model(SGD(lr=0.3, momentum=0.9))
    rule = ToleranceStopping("loss", tol=0.01, n_iter_no_change=2)
    losses = []
    for _ in range(6):
        carried = rule.best, rule.no_improvement_count
        history = model.fit(X, y, epochs=4, batch_size=5, callbacks=[rule], fresh_order=True)
        losses += history["loss"]
        want, stopped = sklearn_rule(losses, 0.01, 2)
        assert (rule.best, rule.no_improvement_count) == want[-1][:2]
        this_fit = sklearn_rule(history["loss"], 0.01, 2, best=carried[0], count=carried[1])
        assert rule.best_epoch == this_fit[0][-1][2] and rule.stopped_epoch == this_fit[1]
        if stopped is not None:
            break
    # The case is real: the rule stopped a fit in its middle, after a new best in an
    # earlier fit.
    assert stopped is not None and len(history.epoch) < 4 and len(losses) > 4
    assert rule.stopped_epoch == len(history.epoch) and rule.best_epoch is None
    # One fit over all those epochs (fresh_order: each epoch's order is that of a fit of its
    # own) gives the same losses, stops at the same epoch, and ends with the same model.
    again = _model(SGD(lr=0.3, momentum=0.9))
    rule2 = ToleranceStopping("loss", tol=0.01, n_iter_no_change=2)
    continuous = again.fit(X, y, epochs=len(losses) + 3, batch_size=5, callbacks=[rule2],
                           fresh_order=True)
    assert continuous["loss"] == losses and rule2.stopped_epoch == len(losses)
    assert _state(again) == _state(model)


# ----------------------------------------------------------------------------- checkpoints
_RUN = dict(epochs=30, batch_size=5)


def _tolerance(restore=True):
    # On this run (seed 3, lr 0.3) the rule stops after epoch 11, epoch 8 being the best.
    return ToleranceStopping("loss", tol=0.01, n_iter_no_change=2, restore_best_weights=restore)


@pytest.mark.parametrize("interrupt_at", [3, 10])
def test_resume_through_a_checkpoint_ends_as_the_uninterrupted_run(tmp_path, interrupt_at):
    """Killed in epoch 3 (best, count early in the run) or 10 (after the best epoch: only the
    checkpoint still holds its weights), rerun from the checkpoint: same epochs, same stop,
    same restored weights, same final model as a run that was never interrupted."""
    X, y = _data(37)
    reference = _model(SGD(lr=0.3, momentum=0.9))
    ref_rule = _tolerance()
    ref_history = reference.fit(X, y, callbacks=[ref_rule], **_RUN)
    # The case is real: the rule stopped the run, and its best epoch is before interrupt_at
    # for the late interruption.
    assert ref_rule.stopped_epoch is not None
    assert ref_rule.restored_epoch < 10 < ref_rule.stopped_epoch

    path = tmp_path / "ck.fmlp"
    first = _model(SGD(lr=0.3, momentum=0.9))
    with pytest.raises(KeyboardInterrupt):
        first.fit(X, y, callbacks=[_tolerance(), RaiseAt(interrupt_at, KeyboardInterrupt())],
                  checkpoint=path, **_RUN)
    assert fio.read(path).header["training"]["epochs_completed"] == interrupt_at - 1
    resumed = _model(SGD(lr=0.3, momentum=0.9))  # a fresh process: fresh model and rule
    rule = _tolerance()
    history = resumed.fit(X, y, callbacks=[rule], checkpoint=path, resume=True, **_RUN)
    assert history.epoch == list(range(interrupt_at, ref_rule.stopped_epoch + 1))
    for key, values in ref_history.history.items():
        assert history.history[key] == values[interrupt_at - 1:]
    for name in ("best", "no_improvement_count", "best_epoch", "stopped_epoch", "restored_epoch"):
        assert getattr(rule, name) == getattr(ref_rule, name), name
    assert _state(resumed) == _state(reference)


def test_the_checkpoint_records_the_rules_state(tmp_path):
    X, y = _data(37)
    path = tmp_path / "ck.fmlp"
    model = _model(SGD(lr=0.3, momentum=0.9))
    rule = _tolerance()
    model.fit(X, y, epochs=10, batch_size=5, callbacks=[rule], checkpoint=path)
    contents = fio.read(path)
    entry, = contents.header["training"]["callbacks"]
    assert entry["class"] == "ToleranceStopping"
    assert entry["state"] == {"best": rule.best, "best_epoch": 8,
                              "no_improvement_count": rule.no_improvement_count,
                              "stopped_epoch": 0}
    assert entry["tensors"] == ["best_params"]
    # The weights of epoch 8, which on_train_end put back into the model.
    assert np.array_equal(contents.tensors["callbacks.0.best_params"], model.params)
    # Without restore_best_weights there are no weights to keep.
    _model(SGD(lr=0.3, momentum=0.9)).fit(X, y, epochs=2, batch_size=5, checkpoint=path,
                                          callbacks=[_tolerance(restore=False)])
    assert fio.read(path).header["training"]["callbacks"][0]["tensors"] == []


def test_resume_with_another_rule_is_refused_before_any_change(tmp_path):
    X, y = _data(37)
    path = tmp_path / "ck.fmlp"
    _model(SGD(lr=0.3, momentum=0.9)).fit(X, y, epochs=4, batch_size=5, callbacks=[_tolerance()],
                                          checkpoint=path)
    model = _model(SGD(lr=0.3, momentum=0.9))
    before = _state(model)
    with pytest.raises(ValueError, match=r"ToleranceStopping\(restore_best_weights=False\)"):
        model.fit(X, y, callbacks=[_tolerance(restore=False)], checkpoint=path, resume=True, **_RUN)
    with pytest.raises(ValueError, match="stateful callbacks"):
        model.fit(X, y, checkpoint=path, resume=True, **_RUN)
    assert _state(model) == before
    assert fio.read(path).header["training"]["epochs_completed"] == 4


# ----------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("kwargs, message", [
    (dict(tol=-1e-4), "tol must be a number >= 0"),
    (dict(tol=NAN), "tol must be a number >= 0"),
    (dict(tol=True), "tol must be a number >= 0"),
    (dict(tol="1e-4"), "tol must be a number >= 0"),
    (dict(tol=None), "tol must be a number >= 0"),
    (dict(n_iter_no_change=0), "n_iter_no_change must be an integer >= 1"),
    (dict(n_iter_no_change=2.0), "n_iter_no_change must be an integer >= 1"),
    (dict(n_iter_no_change=True), "n_iter_no_change must be an integer >= 1"),
    (dict(no_improvement_count=-1), "no_improvement_count must be an integer >= 0"),
    (dict(no_improvement_count=1.5), "no_improvement_count must be an integer >= 0"),
    (dict(restore_best_weights=1), "restore_best_weights must be True or False"),
    (dict(restore_best_weights="yes"), "restore_best_weights must be True or False"),
    (dict(mode="minimize"), "mode must be 'auto', 'min' or 'max'"),
    (dict(monitor=3), "monitor must be a metric name"),
    (dict(monitor=lambda: 0.0), "mode must be 'min' or 'max' with a callable monitor"),
    (dict(best=NAN), "best must be"),
    (dict(best="0.5"), "best must be"),
    (dict(best=True), "best must be"),
    # The infinity no value can beat: a checkpoint could not keep it.
    (dict(best=-INF), "best must be"),
    (dict(best=INF, mode="max"), "best must be"),
])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ToleranceStopping(**kwargs)


def test_the_accepted_edge_values():
    assert ToleranceStopping(tol=INF).tol == INF
    assert ToleranceStopping(tol=0).tol == 0.0
    assert ToleranceStopping(best=INF).best == INF  # "none yet", as MLPRegressor passes it
    assert ToleranceStopping(best=-INF, mode="max").best == -INF
    assert ToleranceStopping(best=np.float32(0.5), n_iter_no_change=np.int64(3)).best == 0.5
    assert ToleranceStopping(restore_best_weights=np.True_).restore_best_weights is True


@pytest.mark.parametrize("monitor", ["val_loss", "val_accuracy", "error_rate"])
def test_a_metric_fit_will_not_report_is_refused_before_any_change(monitor):
    X, y = _data()
    model = _model()
    before = _state(model)
    with pytest.raises(ValueError, match=f"ToleranceStopping monitors '{monitor}'"):
        model.fit(X, y, epochs=2, callbacks=[ToleranceStopping(monitor)])
    assert _state(model) == before and model._train_workspace is None


# ----------------------------------------------------------------------------- fresh_order
@pytest.mark.parametrize("dtype, make_opt", [
    (np.float32, lambda: SGD(lr=0.1, momentum=0.9)),
    (np.float64, lambda: SGD(lr=0.1, momentum=0.9)),
    (np.float32, lambda: Adam(lr=0.01)),
])
@pytest.mark.parametrize("kw", [dict(batch_size=5), dict(batch_size=8, validation_split=0.25)])
def test_fresh_order_equals_one_epoch_fits_bitwise(dtype, make_opt, kw):
    X, y = _data(37)
    k = 4
    together = _model(make_opt(), dtype)
    history = together.fit(X, y, epochs=k, fresh_order=True, **kw)
    apart = _model(make_opt(), dtype)
    losses = [apart.fit(X, y, epochs=1, **kw)["loss"][0] for _ in range(k)]
    # Bitwise: the same compiled kernels run the same steps on the same rows in the same
    # order (the shuffle of arange(n) by the same generator state), on one thread count.
    assert _state(together) == _state(apart)
    assert np.array_equal(together.params, apart.params)
    assert history["loss"] == losses
    # Without fresh_order each epoch shuffles the last one's order: another run.  (Else
    # the comparison above would prove nothing.)
    plain = _model(make_opt(), dtype)
    plain.fit(X, y, epochs=k, **kw)
    assert plain.params.tobytes() != together.params.tobytes()
    assert plain._rng.bit_generator.state == together._rng.bit_generator.state


def test_fresh_order_changes_nothing_without_shuffle():
    X, y = _data(37)
    a, b = _model(), _model()
    a.fit(X, y, epochs=3, batch_size=5, shuffle=False, fresh_order=True)
    b.fit(X, y, epochs=3, batch_size=5, shuffle=False)
    assert _state(a) == _state(b)  # bitwise: the same steps in the same order


def test_fresh_order_accepts_a_numpy_bool():
    X, y = _data(37)
    a, b = _model(), _model()
    a.fit(X, y, epochs=2, batch_size=5, fresh_order=np.True_)
    b.fit(X, y, epochs=2, batch_size=5, fresh_order=True)
    assert _state(a) == _state(b)


@pytest.mark.parametrize("kwargs, message", [
    (dict(fresh_order=True, checkpoint="CK"), "fresh_order does not go with checkpoint"),
    (dict(fresh_order=True, checkpoint="CK", resume=True),
     "fresh_order does not go with checkpoint"),
    (dict(fresh_order=np.True_, checkpoint="CK", checkpoint_every=2),
     "fresh_order does not go with checkpoint"),
    (dict(fresh_order=1), "fresh_order must be True or False"),
    (dict(fresh_order=0), "fresh_order must be True or False"),
    (dict(fresh_order=None), "fresh_order must be True or False"),
    (dict(fresh_order="True"), "fresh_order must be True or False"),
    (dict(fresh_order=1, checkpoint="CK"), "fresh_order must be True or False"),
])
def test_bad_fresh_order_is_refused_before_the_model_changes(tmp_path, kwargs, message):
    X, y = _data(37)
    kwargs = {k: str(tmp_path / "ck.fmlp") if v == "CK" else v for k, v in kwargs.items()}
    model = _model()
    before = _state(model)
    rule = ToleranceStopping("loss", tol=0.0, n_iter_no_change=1)
    with pytest.raises(ValueError, match=message):
        model.fit(X, y, epochs=2, batch_size=5, callbacks=[rule], **kwargs)
    assert _state(model) == before and model._train_workspace is None
    assert rule.model is None and rule.best == INF  # no hook ran
    assert list(tmp_path.iterdir()) == []
