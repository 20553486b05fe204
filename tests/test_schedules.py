"""Sample weights and the learning-rate schedule kernels against their twins in
tests/reference.py; the finite checks between a schedule and the optimizer."""

import math

import numpy as np
import pytest

import reference as ref
from conftest import DTYPES
from tolerances import assert_within, eps, loss_bound, mean_loss_bound, unit_roundoff
import fastmlp.losses
from fastmlp import SGD, Dense, Sequential
from fastmlp.callbacks import (CosineAnnealing, ExponentialDecay, LearningRateSchedule,
                               ReduceLROnPlateau, StepDecay)
from fastmlp.kernels import losses, schedules


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", list(losses.LOSSES))
@pytest.mark.parametrize("batch,n_out", [(1, 2), (6, 3), (33, 5)])
def test_weighted_loss_matches_reference(rng, dtype, loss, batch, n_out):
    scores = (3 * rng.normal(size=(batch, n_out))).astype(dtype)
    labels = rng.integers(0, n_out, size=batch).astype(np.int64)
    targets = (rng.random((batch, n_out)) < 0.5).astype(dtype) if loss == "binary_cross_entropy" \
        else rng.normal(size=(batch, n_out)).astype(dtype)
    weights = rng.uniform(0, 3, size=batch).astype(dtype)
    weights[::4] = 0.0  # rows that count for nothing
    y = labels if loss in ("softmax_cross_entropy", "multiclass_hinge") else targets
    want_loss, want_grad = ref.weighted_loss(loss, scores, y, weights)

    code = losses.LOSSES[loss]
    grad = np.full_like(scores, np.nan)
    row_loss = np.full(batch, np.nan)
    losses.loss_and_grad(code, scores, labels, targets, grad, row_loss, 1,
                         fastmlp.losses.get(loss).kernel_params())
    got = losses.weight_rows(code, weights, grad, row_loss)
    # The unweighted kernel's bounds (tolerances.loss_bound) and the float64 reference's,
    # scaled by each row's weight, plus the multiply by the weight: one rounding (u) of the
    # gradient in the dtype, and the float64 row sum of the weighted losses.
    rows, grads = loss_bound(loss, scores, 0.0, labels, targets, dtype)
    rows64, grads64 = loss_bound(loss, scores, 0.0, labels, targets, np.float64)
    w = weights.astype(float)
    weighted_rows = w * (rows + rows64 + 2 * unit_roundoff(np.float64) * np.abs(row_loss))
    assert_within(got, want_loss, mean_loss_bound(weighted_rows, w * row_loss), "weighted loss")
    assert_within(grad, want_grad, w[:, None] * (grads + grads64)
                  + unit_roundoff(dtype) * np.abs(want_grad), "weighted gradient")


def test_unit_weights_change_nothing(rng):
    scores = rng.normal(size=(9, 4))
    labels = rng.integers(0, 4, size=9).astype(np.int64)
    grad, row_loss = np.empty_like(scores), np.empty(9)
    plain = losses.loss_and_grad(0, scores, labels, scores[:0], grad, row_loss, 1, None)
    plain_grad = grad.copy()
    # Multiplying by 1.0 is exact, and the weighted sum adds the same rows in the same order.
    assert losses.weight_rows(0, np.ones(9), grad, row_loss) == plain
    np.testing.assert_array_equal(grad, plain_grad)


EPOCHS = [0, 1, 2, 3, 7, 10, 99, 1000]


@pytest.mark.parametrize("step_size,gamma", [(1, 0.5), (3, 0.1), (10, 1.0), (7, 0.97)])
def test_step_decay_matches_reference(step_size, gamma):
    # float64 scalars: a power and a product, each within 1 ulp in libm and numba: 50 eps
    # covers them, however either side evaluates gamma ** k.
    for done in EPOCHS:
        assert schedules.step_decay_lr(0.3, done, step_size, gamma) == pytest.approx(
            ref.step_decay_lr(0.3, done, step_size, gamma), rel=50 * eps(np.float64), abs=1e-300)


@pytest.mark.parametrize("gamma", [0.5, 0.9, 0.999, 1.0])
def test_exponential_decay_matches_reference(gamma):
    # gamma ** done for done up to 1000: a pow within 1 ulp, or up to 1000 rounded products
    # if either side multiplies: 5000 eps covers both.
    for done in EPOCHS:
        assert schedules.exponential_decay_lr(0.3, done, gamma) == pytest.approx(
            ref.exponential_decay_lr(0.3, done, gamma), rel=5000 * eps(np.float64), abs=1e-300)


@pytest.mark.parametrize("min_lr,period", [(0.0, 1), (0.0, 10), (0.01, 7), (0.1, 100)])
def test_cosine_annealing_matches_reference(min_lr, period):
    # min + (max - min) (1 + cos(pi t / T)) / 2 in float64: pi t / T rounds by up to
    # eps * pi * t / T (t <= 1000: ~4500 eps of the angle when t / T is large), cos is
    # 1-Lipschitz, and a few more roundings of values <= 0.5: 5000 eps relative and
    # 10 eps absolute (where cos is near -1 and the rate near min_lr) cover them.
    rel, tiny = 5000 * eps(np.float64), 10 * eps(np.float64)
    for done in EPOCHS:
        got = schedules.cosine_annealing_lr(0.5, min_lr, done, period)
        assert got == pytest.approx(ref.cosine_annealing_lr(0.5, min_lr, done, period), rel=rel, abs=tiny)
        assert min_lr - tiny <= got <= 0.5
    assert schedules.cosine_annealing_lr(0.5, min_lr, 0, period) == pytest.approx(0.5, rel=rel)
    assert schedules.cosine_annealing_lr(0.5, min_lr, period, period) == pytest.approx(min_lr, abs=tiny)


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("patience,cooldown,factor,threshold,min_lr",
                         [(0, 0, 0.5, 1e-4, 0.0), (2, 0, 0.1, 0.0, 1e-3), (3, 2, 0.5, 0.01, 0.0),
                          (1, 5, 0.9, 0.1, 0.05)])
def test_plateau_update_matches_reference(rng, mode, patience, cooldown, factor, threshold, min_lr):
    # A noisy metric that improves, stalls and jumps: every branch of the state machine.
    metric = np.concatenate([np.linspace(2, 1, 8), np.full(6, 1.0), rng.uniform(0.5, 1.5, 30),
                             np.linspace(0.5, 0.2, 5), np.full(10, 0.2)])
    if mode == "max":
        metric = 3 - metric
    twin = ref.ReduceLROnPlateau(0.1, mode, factor, patience, threshold, cooldown, min_lr)
    lr, best, bad, cool = 0.1, (math.inf if mode == "min" else -math.inf), 0, 0
    lrs = []
    for value in metric:
        lr, best, bad, cool = schedules.plateau_update(float(value), lr, best, bad, cool, mode == "min",
                                                       factor, patience, threshold, min_lr, cooldown)
        # Bitwise: a new rate is one correctly rounded product (lr * factor) or min_lr on
        # both sides; the comparisons with best * (1 -+ threshold) could only differ for a
        # metric within an ulp of that threshold (fastmath may fuse it), which this data
        # (plateaus exactly equal, jumps of >= 1e-3) never is.
        assert lr == twin.step(float(value))
        assert (best, bad, cool) == (twin.best, twin.num_bad_epochs, twin.cooldown_counter)
        lrs.append(lr)
    assert min(lrs) < 0.1  # the sequence did trigger reductions
    assert min(lrs) >= min_lr


def test_schedule_kernels_stay_finite_far_out():
    assert schedules.exponential_decay_lr(0.1, 10 ** 6, 0.5) == 0.0  # underflows to 0, not NaN
    assert schedules.step_decay_lr(0.1, 10 ** 9, 1, 0.5) == 0.0
    assert np.isfinite(schedules.cosine_annealing_lr(0.1, 0.0, 10 ** 9, 3))


def _model(lr=0.1):
    return Sequential([Dense(3, 4, activation="tanh"), Dense(4, 2)], optimizer=SGD(lr=lr), seed=0)


class _Broken(LearningRateSchedule):
    def __init__(self, bad):
        super().__init__()
        self.bad = bad

    def rate(self, base_lr, epochs_done):
        return self.bad if epochs_done == 1 else base_lr


@pytest.mark.parametrize("bad", [math.inf, math.nan, -0.1])
def test_a_schedule_cannot_hand_the_optimizer_a_bad_rate(rng, bad):
    model = _model()
    X, y = rng.normal(size=(10, 3)), rng.integers(0, 2, size=10)
    with pytest.raises(ValueError, match="epoch 2"):
        model.fit(X, y, epochs=3, callbacks=[_Broken(bad)])
    assert model.optimizer.lr == 0.1  # the bad rate never reached it
    assert len(model.history.epoch) == 1


def test_plateau_refuses_what_its_kernel_cannot_take():
    for kwargs in ({"factor": 1.0}, {"factor": 0.0}, {"patience": -1}, {"threshold": -1e-4},
                   {"min_lr": math.nan}, {"cooldown": 1.5}, {"mode": "up"}, {"monitor": 3}):
        with pytest.raises(ValueError):
            ReduceLROnPlateau(**kwargs)


@pytest.mark.parametrize("schedule,want", [
    (StepDecay(2, gamma=0.5), [0.1, 0.1, 0.05, 0.05, 0.025]),
    (ExponentialDecay(0.5), [0.1, 0.05, 0.025, 0.0125, 0.00625]),
    (CosineAnnealing(4), [0.1, 0.1 * (1 + math.cos(math.pi / 4)) / 2, 0.05,
                          0.1 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.0]),
])
def test_each_epoch_runs_at_its_scheduled_rate(rng, schedule, want):
    model = _model()
    X, y = rng.normal(size=(12, 3)), rng.integers(0, 2, size=12)
    history = model.fit(X, y, epochs=5, batch_size=4, callbacks=[schedule])
    # The callbacks' float64 arithmetic against the same formulas written out: a few
    # roundings of values <= 0.1 (see the schedule tests above for the 5000 eps).
    np.testing.assert_allclose(history["lr"], want, rtol=5000 * eps(np.float64),
                               atol=10 * eps(np.float64) * 0.1)
