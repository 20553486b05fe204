"""fit(callbacks=...): hook order and arguments, stopping, exceptions, EarlyStopping, the
learning-rate schedules, ReduceLROnPlateau, resuming with a schedule, argument checks."""

import copy
import math

import numpy as np
import pytest

import reference as ref

from fastmlp import SGD, Adam, AdamW, Dense, DivergenceError, Sequential
from fastmlp import io as fio
from fastmlp.callbacks import (Callback, CosineAnnealing, EarlyStopping, ExponentialDecay,
                               ReduceLROnPlateau, StepDecay)
from conftest import three_class_data as _data, training_state as _state
from tolerances import eps


# ----------------------------------------------------------------------------- helpers
def _model(optimizer=None, dtype=np.float32, seed=3, loss="softmax_cross_entropy", n_out=3, width=8):
    return Sequential([Dense(4, width, activation="tanh"), Dense(width, n_out)], loss=loss,
                      optimizer=optimizer or SGD(lr=0.1, momentum=0.9), seed=seed, dtype=dtype)


def _regression(n=24):
    X = np.random.default_rng(0).normal(size=(n, 4))
    return X, X @ np.ones((4, 2))


def _mse_model(lr=0.01):
    return Sequential([Dense(4, 8, activation="relu"), Dense(8, 2)], loss="mse",
                      optimizer=SGD(lr=lr), seed=3)


class Recorder(Callback):
    """Records every hook call, and the parameters after each epoch."""

    def __init__(self):
        self.calls = []
        self.params = {}
        self.final_params = None

    def set_model(self, model):
        super().set_model(model)
        self.calls.append(("set_model", model))

    def on_train_begin(self, logs):
        self.calls.append(("on_train_begin", copy.deepcopy(logs)))

    def on_epoch_begin(self, epoch, logs):
        self.calls.append(("on_epoch_begin", epoch, dict(logs)))

    def on_epoch_end(self, epoch, logs):
        self.calls.append(("on_epoch_end", epoch, dict(logs)))
        self.params[epoch] = self.model.params.copy()

    def on_train_end(self, logs):
        self.calls.append(("on_train_end", dict(logs)))
        self.final_params = self.model.params.copy()


class StopAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs):
        if epoch == self.epoch:
            self.model.stop_training = True


class RaiseAt(Callback):
    def __init__(self, epoch, exc, hook="on_epoch_end"):
        self.epoch, self.exc, self.hook = epoch, exc, hook

    def on_epoch_begin(self, epoch, logs):
        if self.hook == "on_epoch_begin" and epoch == self.epoch:
            raise self.exc

    def on_epoch_end(self, epoch, logs):
        if self.hook == "on_epoch_end" and epoch == self.epoch:
            raise self.exc


class BlowUpAt(Callback):
    """Sets an absurd learning rate before ``epoch``: the mse model then diverges in it."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs):
        if epoch == self.epoch:
            self.model.optimizer.lr = 1e30


# ----------------------------------------------------------------------------- hooks
@pytest.mark.parametrize("kind", ["classifier", "regressor"])
@pytest.mark.parametrize("with_validation", [True, False])
def test_hooks_are_called_in_order_with_their_arguments(kind, with_validation):
    if kind == "classifier":
        X, y = _data()
        model = _model()
        metrics = ["loss", "accuracy"] + (["val_loss", "val_accuracy"] if with_validation else []) + ["lr"]
    else:
        X, y = _regression()
        model = _mse_model()
        metrics = ["loss"] + (["val_loss"] if with_validation else []) + ["lr"]
    rec = Recorder()
    kw = dict(validation_data=(X[:8], y[:8])) if with_validation else {}
    history = model.fit(X, y, epochs=3, batch_size=8, callbacks=[rec], **kw)

    assert [c[0] for c in rec.calls] == (["set_model", "on_train_begin"]
                                         + ["on_epoch_begin", "on_epoch_end"] * 3 + ["on_train_end"])
    assert rec.calls[0][1] is model
    assert rec.calls[1][1] == {"metrics": metrics, "epochs": 3, "initial_epoch": 0,
                                 "resume": False}
    begins = [c for c in rec.calls if c[0] == "on_epoch_begin"]
    ends = [c for c in rec.calls if c[0] == "on_epoch_end"]
    assert [c[1] for c in begins] == [1, 2, 3] and [c[1] for c in ends] == [1, 2, 3]
    for _, epoch, logs in ends:
        assert list(logs) == metrics  # exactly the names promised, in that order
        for name in metrics:
            # The History holds the very floats the callbacks were given: exact.
            assert logs[name] == history.history[name][epoch - 1]
    assert ends[0][2]["lr"] == model.optimizer.lr
    assert rec.calls[-1] == ("on_train_end", {"error": None})
    assert history.epoch == [1, 2, 3]
    # Bitwise: the recorder copied these very parameters at the end of epoch 3.
    np.testing.assert_array_equal(rec.params[3], model.params)


def test_on_epoch_end_sees_the_parameters_after_that_epoch():
    X, y = _data()
    rec = Recorder()
    _model().fit(X, y, epochs=3, batch_size=8, callbacks=[rec])
    for epochs in (1, 2):
        shorter = _model()
        shorter.fit(X, y, epochs=epochs, batch_size=8)  # same seed: the same first epochs
        np.testing.assert_array_equal(rec.params[epochs], shorter.params)
    assert not np.array_equal(rec.params[1], rec.params[2])


def test_each_callback_gets_its_own_copy_of_the_logs():
    class Vandal(Callback):
        def on_epoch_end(self, epoch, logs):
            logs["loss"] = -1.0
            logs.clear()

    X, y = _data()
    rec = Recorder()
    history = _model().fit(X, y, epochs=2, batch_size=8, callbacks=[Vandal(), rec])
    ends = [c for c in rec.calls if c[0] == "on_epoch_end"]
    assert [c[2]["loss"] for c in ends] == history["loss"]  # the very floats the History holds
    assert all(v > 0 for v in history["loss"])


# ----------------------------------------------------------------------------- stopping
def test_stop_training_ends_fit_after_that_epoch_and_checkpoints_it(tmp_path):
    X, y = _data()
    path = tmp_path / "c.fmlp"
    model = _model()
    rec = Recorder()
    history = model.fit(X, y, epochs=10, batch_size=8, callbacks=[StopAt(3), rec],
                        checkpoint=path, checkpoint_every=5)
    assert history.epoch == [1, 2, 3] and len(history["loss"]) == 3
    assert model.optimizer.step_count == 3 * 5
    assert [c[1] for c in rec.calls if c[0] == "on_epoch_end"] == [1, 2, 3]
    assert rec.calls[-1] == ("on_train_end", {"error": None})
    contents = fio.read(path)  # written at the stop, though 3 is not a multiple of 5
    assert contents.header["training"]["epochs_completed"] == 3
    np.testing.assert_array_equal(contents.tensors["params"], model.params)
    # The next fit starts with stop_training reset.
    assert model.fit(X, y, epochs=2, batch_size=8).epoch == [1, 2]
    # And the checkpoint resumes at epoch 4.
    resumed = _model()
    assert resumed.fit(X, y, epochs=5, batch_size=8, checkpoint=path, resume=True).epoch == [4, 5]


def test_on_train_end_gets_the_divergence_error():
    X, y = _regression()
    model = _mse_model(lr=1e30)  # float32: the second step's loss overflows
    rec = Recorder()
    with pytest.raises(DivergenceError, match="at epoch 1, step 2") as info:
        model.fit(X, y, epochs=3, batch_size=8, callbacks=[rec])
    assert rec.calls[-1][0] == "on_train_end"
    assert rec.calls[-1][1]["error"] is info.value
    assert [c[0] for c in rec.calls] == ["set_model", "on_train_begin", "on_epoch_begin", "on_train_end"]
    assert np.isfinite(model.params).all()


@pytest.mark.parametrize("hook", ["on_epoch_end", "on_epoch_begin"])
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, RuntimeError])
def test_on_train_end_gets_an_exception_raised_by_a_callback(hook, exc_type):
    X, y = _data()
    model = _model()
    rec = Recorder()
    exc = exc_type("stop here")
    with pytest.raises(exc_type) as info:
        model.fit(X, y, epochs=5, batch_size=8, callbacks=[rec, RaiseAt(2, exc, hook)])
    assert info.value is exc
    assert rec.calls[-1] == ("on_train_end", {"error": exc})
    epochs_ended = [c[1] for c in rec.calls if c[0] == "on_epoch_end"]
    assert epochs_ended == ([1, 2] if hook == "on_epoch_end" else [1])
    assert model.history.epoch == epochs_ended


# ----------------------------------------------------------------------------- EarlyStopping, hooks driven by hand
def _drive(es, values, metric="val_loss", model=None):
    """Run EarlyStopping's hooks over ``values`` as fit would; the parameters after epoch
    ``e`` are all equal to ``e``.  Returns the model and the epochs run."""
    model = model or _model(dtype=np.float64)
    model.stop_training = False
    es.set_model(model)
    es.on_train_begin({"metrics": ["loss", "accuracy", "val_loss", "val_accuracy", "lr"],
                       "epochs": len(values)})
    run = 0
    for epoch, value in enumerate(values, 1):
        model.params[:] = epoch
        logs = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5, "lr": 0.1}
        logs[metric] = value
        es.on_epoch_end(epoch, logs)
        run = epoch
        if model.stop_training:
            break
    es.on_train_end({"error": None})
    return model, run


@pytest.mark.parametrize("patience,values,stopped,best", [
    # patience 0 acts as 1 (Keras): the first epoch without improvement stops.
    (0, [1.0, 0.9, 0.95, 0.5], 3, 2),
    (1, [1.0, 0.9, 0.95, 0.5], 3, 2),
    (2, [1.0, 0.9, 0.95, 0.91, 0.5], 4, 2),
    # An improvement resets the count.
    (2, [1.0, 1.1, 0.9, 1.0, 0.95, 0.5], 5, 3),
    # An equal value is no improvement.
    (2, [1.0, 0.5, 0.5, 0.5, 0.1], 4, 2),
    (3, [1.0, 1.0, 1.0, 1.0, 0.1], 4, 1),
])
def test_early_stopping_patience(patience, values, stopped, best):
    es = EarlyStopping(patience=patience)
    model, run = _drive(es, values)
    assert run == stopped and es.stopped_epoch == stopped
    assert es.best_epoch == best and es.best == values[best - 1]
    assert es.restored_epoch == best
    assert (model.params == best).all()


def test_early_stopping_that_never_triggers():
    es = EarlyStopping(patience=2)
    model, run = _drive(es, [1.0, 0.8, 0.9, 0.7, 0.75])
    assert run == 5 and es.stopped_epoch is None
    assert es.best_epoch == 4 and es.restored_epoch == 4
    assert (model.params == 4).all()


def test_early_stopping_min_delta():
    # An epoch improves when it beats the best by MORE than min_delta (values exact in binary).
    es = EarlyStopping(min_delta=0.25, patience=2)
    model, run = _drive(es, [1.0, 0.75, 0.5, 0.375, 0.25, 0.0])
    # 0.75 is not < 1.0 - 0.25; 0.5 is; 0.375 and 0.25 are not < 0.5 - 0.25.
    assert es.best_epoch == 3 and es.stopped_epoch == 5 and run == 5
    assert (model.params == 3).all()


@pytest.mark.parametrize("metric,mode", [("val_accuracy", "auto"), ("accuracy", "auto"),
                                         ("val_loss", "max")])
def test_early_stopping_maximises_accuracy(metric, mode):
    es = EarlyStopping(monitor=metric, mode=mode, patience=2)
    model, run = _drive(es, [0.5, 0.625, 0.5, 0.625, 0.75], metric=metric)
    assert es.best_epoch == 2 and es.stopped_epoch == 4 and run == 4
    assert es.best == 0.625 and (model.params == 2).all()


def test_early_stopping_mode_min_on_an_accuracy():
    es = EarlyStopping(monitor="val_accuracy", mode="min", patience=1)
    _drive(es, [0.5, 0.25, 0.75], metric="val_accuracy")
    assert es.best_epoch == 2 and es.stopped_epoch == 3


def test_early_stopping_without_restore_keeps_the_last_parameters():
    es = EarlyStopping(patience=2, restore_best_weights=False)
    model, run = _drive(es, [1.0, 0.9, 0.95, 0.91, 0.5])
    assert run == 4 and es.best_epoch == 2 and es.stopped_epoch == 4
    assert es.restored_epoch is None
    assert (model.params == 4).all()


def test_early_stopping_is_reset_by_each_fit():
    es = EarlyStopping(patience=1)
    _drive(es, [1.0, 0.5, 0.75])
    assert es.best_epoch == 2 and es.stopped_epoch == 3
    model, run = _drive(es, [2.0, 3.0])  # a best of 0.5 would be remembered otherwise
    assert es.best_epoch == 1 and es.best == 2.0 and es.stopped_epoch == 2
    assert (model.params == 1).all()


@pytest.mark.parametrize("kwargs", [
    dict(monitor=3), dict(monitor=None), dict(mode="up"), dict(mode=None), dict(patience=-1),
    dict(patience=1.5), dict(patience=True), dict(min_delta=-0.1), dict(min_delta=math.nan),
    dict(min_delta=math.inf), dict(min_delta="0"), dict(restore_best_weights="yes"),
    dict(restore_best_weights=1),
])
def test_early_stopping_refuses_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        EarlyStopping(**kwargs)


# ----------------------------------------------------------------------------- EarlyStopping through fit
def _classifier_run():
    """Noisy training labels, clean validation rows: val_loss goes down, then up and down."""
    X, y = _data()
    y = y.copy()
    y[::3] = (y[::3] + 1) % 3
    X_val, y_val = _data(16, seed=5)
    return X, y, (X_val, y_val)


def _expected_early_stop(values, patience, epochs):
    best, best_epoch, wait = math.inf, None, 0
    for epoch, value in enumerate(values, 1):
        if value < best:
            best, best_epoch, wait = value, epoch, 0
        else:
            wait += 1
            if wait >= max(patience, 1):
                return best_epoch, epoch
    return best_epoch, None


def test_early_stopping_restores_the_best_epoch_when_it_stops():
    X, y, val = _classifier_run()
    model = _model(SGD(lr=0.3, momentum=0.9), width=16)
    es, rec = EarlyStopping(patience=2), Recorder()
    history = model.fit(X, y, epochs=12, batch_size=8, validation_data=val, callbacks=[es, rec])
    best, stopped = _expected_early_stop(history["val_loss"], 2, 12)
    assert stopped is not None and stopped < 12  # the case under test really happened
    assert best > 1  # and the best epoch is not simply the first
    assert history.epoch == list(range(1, stopped + 1))
    assert (es.best_epoch, es.stopped_epoch, es.restored_epoch) == (best, stopped, best)
    assert es.best == history["val_loss"][best - 1]  # the very float it was given
    # Bitwise: EarlyStopping puts back a copy of the best epoch's parameters.
    np.testing.assert_array_equal(model.params, rec.params[best])
    assert not np.array_equal(model.params, rec.params[stopped])
    np.testing.assert_array_equal(rec.final_params, rec.params[best])  # restored before it ran


@pytest.mark.parametrize("restore", [True, False])
def test_early_stopping_when_the_epochs_run_out(restore):
    X, y, val = _classifier_run()
    model = _model(SGD(lr=0.1, momentum=0.9), width=16)
    es, rec = EarlyStopping(patience=100, restore_best_weights=restore), Recorder()
    history = model.fit(X, y, epochs=6, batch_size=8, validation_data=val, callbacks=[rec, es])
    best = int(np.argmin(history["val_loss"])) + 1
    assert best < 6 and history.epoch == [1, 2, 3, 4, 5, 6]
    assert es.stopped_epoch is None and es.best_epoch == best
    if restore:
        assert es.restored_epoch == best
        # Bitwise: a restored copy, as above.
        np.testing.assert_array_equal(model.params, rec.params[best])
    else:
        assert es.restored_epoch is None
        # Bitwise: the parameters of the last epoch, copied, untouched since.
        np.testing.assert_array_equal(model.params, rec.params[6])


def test_early_stopping_restores_when_another_callback_stops():
    X, y = _data()
    model = _model()
    # min_delta=10: only the first epoch (from +inf) counts as an improvement.
    es, rec = EarlyStopping(monitor="loss", min_delta=10.0, patience=100), Recorder()
    history = model.fit(X, y, epochs=10, batch_size=8, callbacks=[es, rec, StopAt(3)])
    assert history.epoch == [1, 2, 3]
    assert es.stopped_epoch is None and es.best_epoch == 1 and es.restored_epoch == 1
    # Bitwise: a restored copy, as above.
    np.testing.assert_array_equal(model.params, rec.params[1])


def test_early_stopping_restores_when_training_diverges():
    X, y = _regression()
    model = _mse_model()
    es, rec = EarlyStopping(monitor="loss", patience=100), Recorder()
    with pytest.raises(DivergenceError, match="epoch 4") as info:
        model.fit(X, y, epochs=8, batch_size=8, callbacks=[es, rec, BlowUpAt(4)])
    losses = model.history["loss"]
    assert len(losses) == 3
    best = int(np.argmin(losses)) + 1
    assert es.best_epoch == best and es.restored_epoch == best and es.stopped_epoch is None
    # Bitwise: a restored copy, as above.
    np.testing.assert_array_equal(model.params, rec.params[best])
    message = str(info.value)
    assert "EarlyStopping restores" in message and "training loss became" in message
    assert rec.calls[-1][1]["error"] is info.value


def test_divergence_without_restore_keeps_the_message_and_last_finite_step():
    X, y = _regression()
    model = _mse_model()
    es, rec = EarlyStopping(monitor="loss", patience=100, restore_best_weights=False), Recorder()
    with pytest.raises(DivergenceError) as info:
        model.fit(X, y, epochs=8, batch_size=8, callbacks=[es, rec, BlowUpAt(4)])
    assert "restores" not in str(info.value) and es.restored_epoch is None
    assert np.isfinite(model.params).all()
    assert not np.array_equal(model.params, rec.params[3])  # one huge step of epoch 4 stays


def test_divergence_before_any_epoch_ended_restores_nothing():
    X, y = _regression()
    model = _mse_model(lr=1e30)
    es = EarlyStopping(monitor="loss")
    with pytest.raises(DivergenceError) as info:
        model.fit(X, y, epochs=3, batch_size=8, callbacks=[es])
    assert es.best_epoch is None and es.restored_epoch is None
    assert "restores" not in str(info.value)


# ----------------------------------------------------------------------------- a metric fit won't produce
@pytest.mark.parametrize("kind,callback,validation,missing", [
    ("classifier", lambda: EarlyStopping("val_loss"), False, "val_loss"),
    ("classifier", lambda: EarlyStopping("val_accuracy"), False, "val_accuracy"),
    ("classifier", lambda: ReduceLROnPlateau("val_loss"), False, "val_loss"),
    ("classifier", lambda: EarlyStopping("los"), True, "los"),
    ("regressor", lambda: EarlyStopping("val_accuracy"), True, "val_accuracy"),
    ("regressor", lambda: ReduceLROnPlateau("accuracy"), True, "accuracy"),
])
def test_monitoring_a_metric_fit_will_not_produce_changes_nothing(kind, callback, validation, missing):
    if kind == "classifier":
        X, y = _data()
        model = _model(Adam(lr=0.01))
    else:
        X, y = _regression()
        model = Sequential([Dense(4, 8, activation="relu"), Dense(8, 2)], loss="mse",
                           optimizer=Adam(lr=0.01), seed=3)
    model.fit(X, y, epochs=1, batch_size=8)  # non-trivial optimizer state and RNG position
    before = _state(model)
    lr = model.optimizer.lr
    history = model.history
    rec = Recorder()
    kw = dict(validation_data=(X[:8], y[:8])) if validation else {}
    with pytest.raises(ValueError, match=f"monitors '{missing}'") as info:
        model.fit(X, y, epochs=3, batch_size=8, shuffle=True,
                  callbacks=[StepDecay(1, 0.5), rec, callback()], **kw)
    if missing.startswith("val_") and not validation:
        assert "validation_data or validation_split" in str(info.value)
    assert _state(model) == before
    assert model.optimizer.lr == lr and model.history is history
    assert "on_epoch_begin" not in [c[0] for c in rec.calls]


# ----------------------------------------------------------------------------- closed-form schedules
def _step(base, epoch):
    return base * 0.5 ** ((epoch - 1) // 2)


def _exponential(base, epoch):
    return base * 0.8 ** (epoch - 1)


def _cosine(base, epoch, period=4, min_lr=1e-4):
    t = min(epoch - 1, period)
    return min_lr + (base - min_lr) * (1 + math.cos(math.pi * t / period)) / 2


SCHEDULES = {
    "step": (lambda: StepDecay(step_size=2, gamma=0.5), _step),
    "exponential": (lambda: ExponentialDecay(gamma=0.8), _exponential),
    "cosine": (lambda: CosineAnnealing(period=4, min_lr=1e-4), _cosine),
}
OPTIMIZERS = {
    "sgd": lambda: SGD(lr=0.1, momentum=0.5),
    "adam": lambda: Adam(lr=0.01),
    "adamw": lambda: AdamW(lr=0.01, weight_decay=0.1),
}


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedules_follow_their_formulas_and_reach_the_optimizer(name, opt):
    make_schedule, formula = SCHEDULES[name]
    X, y = _data()
    epochs = 7
    model = _model(OPTIMIZERS[opt](), dtype=np.float64)
    base = model.optimizer.lr
    schedule = make_schedule()
    history = model.fit(X, y, epochs=epochs, batch_size=8, shuffle=False, callbacks=[schedule])
    want = [formula(base, e) for e in range(1, epochs + 1)]
    # float64 scalars, the schedule kernels against the formulas: a pow or a cos and a few
    # roundings, within 500 eps (test_schedules gives the per-formula reasons).
    np.testing.assert_allclose(history["lr"], want, rtol=500 * eps(np.float64), atol=0)
    assert schedule.base_lr == base
    assert model.optimizer.lr == history["lr"][-1]
    # The same rates set by hand, one epoch per fit (shuffle=False: no RNG involved), give
    # the same parameters bit for bit: the scheduled rate is the rate the steps used.
    by_hand = _model(OPTIMIZERS[opt](), dtype=np.float64)
    for lr in history["lr"]:
        by_hand.optimizer.lr = lr
        by_hand.fit(X, y, epochs=1, batch_size=8, shuffle=False)
    # Bitwise: the same steps at the same rates, the same compiled loop and batch shapes.
    np.testing.assert_array_equal(by_hand.params, model.params)
    np.testing.assert_array_equal(by_hand.optimizer.state, model.optimizer.state)


def test_schedule_with_an_explicit_base_lr():
    X, y = _data()
    model = _model(SGD(lr=0.1))
    history = model.fit(X, y, epochs=4, batch_size=8, callbacks=[StepDecay(1, 0.5, base_lr=0.4)])
    # 0.4 * 0.5 ** k: halving is exact, so only 0.4's own rounding, the same in both.
    np.testing.assert_allclose(history["lr"], [0.4, 0.2, 0.1, 0.05], rtol=eps(np.float64))


def test_base_lr_is_taken_at_the_first_fit_only():
    X, y = _data()
    model = _model(SGD(lr=0.2))
    schedule = ExponentialDecay(0.5)
    assert schedule.base_lr is None
    model.fit(X, y, epochs=3, batch_size=8, callbacks=[schedule])
    # 0.2 * 0.5 ** 2: exact halvings; the rate is stored in the model's float32 (0.05 to ~3e-9).
    assert schedule.base_lr == 0.2 and model.optimizer.lr == pytest.approx(0.05, rel=eps(np.float32))
    # A second fit with the same schedule starts again from 0.2, not from the decayed 0.05.
    history = model.fit(X, y, epochs=2, batch_size=8, callbacks=[schedule])
    np.testing.assert_allclose(history["lr"], [0.2, 0.1], rtol=eps(np.float64))  # halvings


def test_cosine_annealing_reaches_min_lr_zero_and_stays():
    X, y = _data()
    model = _model(SGD(lr=0.1), dtype=np.float64)
    rec = Recorder()
    history = model.fit(X, y, epochs=4, batch_size=8, shuffle=False,
                        callbacks=[CosineAnnealing(period=2), rec])
    # 0.1 (1 + cos(pi t / 2)) / 2: cos(pi / 2) and cos(3 pi / 2) are ~1e-16 from 0 (pi is
    # rounded), which leaves 0.1 * 1e-16 / 2 where the exact rate is 0.
    np.testing.assert_allclose(history["lr"], [0.1, 0.05, 0.0, 0.0], rtol=2 * eps(np.float64),
                               atol=0.1 * eps(np.float64))
    np.testing.assert_array_equal(rec.params[4], rec.params[2])  # lr 0, no momentum: frozen


@pytest.mark.parametrize("make", [
    lambda: StepDecay(0), lambda: StepDecay(-1), lambda: StepDecay(1.5), lambda: StepDecay(True),
    lambda: StepDecay(2, gamma=0), lambda: StepDecay(2, gamma=1.5), lambda: StepDecay(2, gamma=math.nan),
    lambda: StepDecay(2, gamma=-0.5), lambda: StepDecay(2, base_lr=0), lambda: StepDecay(2, base_lr=-0.1),
    lambda: ExponentialDecay(0), lambda: ExponentialDecay(1.5), lambda: ExponentialDecay(math.nan),
    lambda: ExponentialDecay(math.inf), lambda: ExponentialDecay("0.5"), lambda: ExponentialDecay(0.5, base_lr=math.inf),
    lambda: CosineAnnealing(0), lambda: CosineAnnealing(2.0), lambda: CosineAnnealing(3, min_lr=-0.1),
    lambda: CosineAnnealing(3, min_lr=math.nan),
    lambda: ReduceLROnPlateau(factor=0), lambda: ReduceLROnPlateau(factor=1.0),
    lambda: ReduceLROnPlateau(patience=-1), lambda: ReduceLROnPlateau(threshold=-1e-4),
    lambda: ReduceLROnPlateau(min_lr=-1.0), lambda: ReduceLROnPlateau(cooldown=-1),
    lambda: ReduceLROnPlateau(mode="x"),
])
def test_schedules_refuse_bad_arguments(make):
    with pytest.raises(ValueError):
        make()


def test_gamma_one_is_allowed():
    assert StepDecay(2, gamma=1.0).rate(0.3, 10) == 0.3
    assert ExponentialDecay(1.0).rate(0.3, 10) == 0.3


def test_cosine_min_lr_above_the_base_rate_is_refused_before_training():
    X, y = _data()
    model = _model(SGD(lr=0.1))
    before = _state(model)
    with pytest.raises(ValueError, match="min_lr=0.5 is above the base learning rate 0.1"):
        model.fit(X, y, epochs=3, batch_size=8, callbacks=[CosineAnnealing(3, min_lr=0.5)])
    assert _state(model) == before and model.optimizer.lr == 0.1 and model.history is None
    with pytest.raises(ValueError, match="above the base learning rate 0.2"):
        model.fit(X, y, epochs=3, batch_size=8, callbacks=[CosineAnnealing(3, min_lr=0.5, base_lr=0.2)])
    assert _state(model) == before


# ----------------------------------------------------------------------------- ReduceLROnPlateau
def _drive_plateau(plateau, values, lr=0.1, metric="val_loss"):
    model = _model(SGD(lr=lr))
    plateau.set_model(model)
    plateau.on_train_begin({"metrics": ["loss", "accuracy", "val_loss", "val_accuracy", "lr"],
                            "epochs": len(values)})
    lrs = []
    for epoch, value in enumerate(values, 1):
        logs = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5, "lr": model.optimizer.lr}
        logs[metric] = value
        plateau.on_epoch_end(epoch, logs)
        lrs.append(model.optimizer.lr)  # the rate for the next epoch
    return lrs


# The plateau rates below are exact: 0.1 halved any number of times is 0.1's float times a
# power of 2, and the floor is min_lr itself.
def test_plateau_drops_after_patience_plus_one_bad_epochs():
    flat = [1.0] * 10
    lrs = _drive_plateau(ReduceLROnPlateau(factor=0.5, patience=2), flat)
    # Epoch 1 improves on +inf; epochs 2, 3, 4 are bad: the drop comes at the end of 4.
    assert lrs == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.0125]


def test_plateau_cooldown():
    lrs = _drive_plateau(ReduceLROnPlateau(factor=0.5, patience=2, cooldown=2), [1.0] * 10)
    # Drop at 4; epochs 5 and 6 cool down; 7, 8, 9 bad: the next drop at 9.
    assert lrs == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025]


def test_plateau_min_lr_floor():
    lrs = _drive_plateau(ReduceLROnPlateau(factor=0.5, patience=0, min_lr=0.03), [1.0] * 5)
    assert lrs == [0.1, 0.05, 0.03, 0.03, 0.03]


def test_plateau_relative_threshold():
    # best 1.0, threshold 0.1: 0.95 is no improvement (not < 0.9), 0.85 is.
    plateau = ReduceLROnPlateau(factor=0.5, patience=1, threshold=0.1)
    lrs = _drive_plateau(plateau, [1.0, 0.95, 0.85, 0.8, 0.95])
    assert lrs == [0.1, 0.1, 0.1, 0.1, 0.05]
    assert plateau.best == 0.85


@pytest.mark.parametrize("metric,mode", [("val_loss", "min"), ("val_accuracy", "max"), ("loss", "min")])
@pytest.mark.parametrize("patience,cooldown,factor,threshold,min_lr", [
    (0, 0, 0.5, 1e-4, 0.0), (2, 1, 0.3, 0.05, 0.004), (1, 3, 0.1, 0.0, 1e-5),
])
def test_plateau_matches_pytorch_rules(metric, mode, patience, cooldown, factor, threshold, min_lr):
    rng = np.random.default_rng(patience * 10 + cooldown)
    # A noisy sequence that improves, stalls, and improves a little now and then.
    values = np.round(np.abs(1 + np.cumsum(rng.normal(0, 0.05, size=40)) * (1 if mode == "min" else -1)), 3)
    values = [float(v) for v in values]
    plateau = ReduceLROnPlateau(monitor=metric, factor=factor, patience=patience, threshold=threshold,
                                min_lr=min_lr, cooldown=cooldown)
    torch = ref.ReduceLROnPlateau(0.1, mode, factor, patience, threshold, cooldown, min_lr)
    got = _drive_plateau(plateau, values, metric=metric)
    assert got == [torch.step(v) for v in values]
    assert min(got) < 0.1


def test_plateau_through_fit_matches_pytorch_rules_on_the_real_losses():
    X, y = _data()
    model = _model(SGD(lr=0.05, momentum=0.9))
    plateau = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, threshold=0.2, cooldown=1,
                                min_lr=0.01)
    history = model.fit(X, y, epochs=14, batch_size=8, callbacks=[plateau])
    torch = ref.ReduceLROnPlateau(0.05, "min", 0.5, 0, 0.2, 1, 0.01)
    want = [0.05] + [torch.step(v) for v in history["loss"][:-1]]
    # Bitwise: the kernel and the reference each compute a drop as one correctly rounded
    # product or the floor, on the same float64 losses (test_schedules: comparisons).
    assert history["lr"] == want
    assert len(set(want)) >= 3 and min(want) == 0.01  # several drops, down to the floor
    # The memory is reset by the next fit.
    again = model.fit(X, y, epochs=1, batch_size=8, callbacks=[plateau])
    assert again["lr"] == [0.01] and plateau.bad_epochs == 0 and plateau.best == again["loss"][0]


# ----------------------------------------------------------------------------- resume with a schedule
@pytest.mark.parametrize("make_opt", [lambda: SGD(lr=0.1, momentum=0.9), lambda: Adam(lr=0.02)])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_resume_with_a_schedule_is_bit_identical(tmp_path, name, make_opt):
    make_schedule = SCHEDULES[name][0]
    X, y = _data(37)
    kw = dict(epochs=6, batch_size=5, shuffle=True, validation_data=(X[:9], y[:9]))
    reference = _model(make_opt())
    ref_history = reference.fit(X, y, callbacks=[make_schedule()], **kw)
    assert len(set(ref_history["lr"])) > 1

    path = tmp_path / "ck.fmlp"
    first = _model(make_opt())
    with pytest.raises(KeyboardInterrupt):
        first.fit(X, y, callbacks=[make_schedule(), RaiseAt(4, KeyboardInterrupt())],
                  checkpoint=path, **kw)
    # Interrupted in epoch 4's on_epoch_end, before that epoch's checkpoint.
    assert fio.read(path).header["training"]["epochs_completed"] == 3

    resumed = _model(make_opt())  # a fresh process: a fresh model and schedule
    history = resumed.fit(X, y, callbacks=[make_schedule()], checkpoint=path, resume=True, **kw)
    assert history.epoch == [4, 5, 6]
    # Bitwise: the resumed run replays the same kernels on the same shapes from an exact copy of the state.
    assert _state(resumed) == _state(reference)
    for key, values in ref_history.history.items():
        assert history.history[key] == values[3:]  # the same steps' figures: bitwise too


# ----------------------------------------------------------------------------- the callbacks argument
@pytest.mark.parametrize("bad,index", [
    ([Callback(), "not a callback"], 1), ([Recorder], 0), ([None], 0), ("abc", 0),
    ([EarlyStopping(monitor="loss"), lambda epoch: None], 1),
])
def test_callbacks_must_be_callback_instances(bad, index):
    X, y = _data()
    model = _model()
    before = _state(model)
    with pytest.raises(TypeError, match=rf"callbacks\[{index}\]"):
        model.fit(X, y, epochs=2, callbacks=bad)
    assert _state(model) == before


def test_a_single_callback_need_not_be_in_a_list():
    X, y = _data()
    rec = Recorder()
    history = _model().fit(X, y, epochs=2, batch_size=8, callbacks=rec)
    assert [c[1] for c in rec.calls if c[0] == "on_epoch_end"] == [1, 2]
    assert history.epoch == [1, 2]
    rec2 = Recorder()
    _model().fit(X, y, epochs=1, batch_size=8, callbacks=(rec2,))
    assert rec2.calls[-1] == ("on_train_end", {"error": None})


# ----------------------------------------------------------------------------- resume with stateful callbacks
def _stateful_callbacks():
    return [ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=0, threshold=0.05),
            EarlyStopping(monitor="val_loss", patience=3)]


@pytest.mark.parametrize("interrupt", ["early", "after the best epoch"])
def test_resume_keeps_the_memory_of_plateau_and_early_stopping(tmp_path, interrupt):
    """A run killed and resumed ends where the uninterrupted run ends: same rates, same stop,
    same restored weights (ReduceLROnPlateau's and EarlyStopping's state are in the checkpoint;
    interrupted after the best epoch, only the checkpoint still has that epoch's weights)."""
    X, y = _data(37)
    kw = dict(epochs=30, batch_size=5, validation_data=(X[:9], y[:9]))
    reference = _model(SGD(lr=0.3, momentum=0.9))
    ref_callbacks = _stateful_callbacks()
    ref_history = reference.fit(X, y, callbacks=ref_callbacks, **kw)
    best, stopped = ref_callbacks[1].restored_epoch, ref_callbacks[1].stopped_epoch
    interrupt_at = 3 if interrupt == "early" else best + 2
    # The case is real: the rate dropped, and early stopping ended the run after a best epoch.
    assert len(set(ref_history["lr"])) > 1 and 2 < best and interrupt_at < stopped

    path = tmp_path / "ck.fmlp"
    first = _model(SGD(lr=0.3, momentum=0.9))
    with pytest.raises(KeyboardInterrupt):
        # The interrupting callback keeps no state, so the resumed run may leave it out.
        first.fit(X, y, callbacks=_stateful_callbacks() + [RaiseAt(interrupt_at, KeyboardInterrupt())],
                  checkpoint=path, **kw)
    resumed = _model(SGD(lr=0.3, momentum=0.9))
    callbacks = _stateful_callbacks()
    history = resumed.fit(X, y, callbacks=callbacks, checkpoint=path, resume=True, **kw)
    assert history.epoch[0] == interrupt_at
    assert history["lr"] == ref_history["lr"][interrupt_at - 1:]  # restored state: bitwise
    assert callbacks[1].stopped_epoch == ref_callbacks[1].stopped_epoch
    assert callbacks[1].restored_epoch == ref_callbacks[1].restored_epoch
    # Bitwise, as above.
    assert _state(resumed) == _state(reference)


def test_resume_with_other_stateful_callbacks_is_refused_before_any_change(tmp_path):
    X, y = _data(37)
    kw = dict(epochs=4, batch_size=5, validation_data=(X[:9], y[:9]), checkpoint=tmp_path / "ck.fmlp")
    _model().fit(X, y, callbacks=_stateful_callbacks(), **{**kw, "epochs": 2})
    model = _model()
    before = _state(model)
    with pytest.raises(ValueError, match="stateful callbacks"):
        model.fit(X, y, callbacks=_stateful_callbacks()[::-1], resume=True, **kw)
    with pytest.raises(ValueError, match="stateful callbacks"):
        model.fit(X, y, resume=True, **kw)
    # Same class, another configuration whose state cannot take the saved one.
    with pytest.raises(ValueError, match="restore_best_weights=False"):
        model.fit(X, y, callbacks=[_stateful_callbacks()[0],
                                   EarlyStopping(patience=3, restore_best_weights=False)],
                  resume=True, **kw)
    assert _state(model) == before


def test_a_checkpoint_records_callback_state_in_its_header(tmp_path):
    X, y = _data(37)
    path = tmp_path / "ck.fmlp"
    model = _model(SGD(lr=0.3))
    model.fit(X, y, epochs=2, batch_size=5, validation_data=(X[:9], y[:9]), checkpoint=path,
              callbacks=[StepDecay(1, 0.5), Recorder()] + _stateful_callbacks())
    contents = fio.read(path)
    entries = contents.header["training"]["callbacks"]
    assert [e["class"] for e in entries] == ["StepDecay", "ReduceLROnPlateau", "EarlyStopping"]
    assert entries[0]["state"] == {"base_lr": 0.3}
    assert entries[1]["state"]["lr"] == model.optimizer.lr  # JSON round-trips floats exactly
    assert entries[2]["tensors"] == ["best_params"]
    best = contents.tensors["callbacks.2.best_params"]
    assert best.shape == model.params.shape and best.dtype == model.params.dtype
