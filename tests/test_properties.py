"""Property-based tests (hypothesis): over shapes, dtypes and extreme values (huge logits,
subnormal numbers, all-equal inputs) the kernels stay finite where the math is finite and
agree with the plain-numpy reference."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import reference as ref
from conftest import ACTIVATIONS
from tolerances import assert_within, dense_layer_bound, gamma, loss_bound, mean_loss_bound
from fastmlp import Dense, Sequential
from fastmlp.kernels import activations, dense, losses

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = st.sampled_from([np.float32, np.float64])


def _values(dtype, magnitude):
    """Finite values up to ``magnitude``, with zeros, subnormals and repeats in the mix."""
    tiny = float(np.finfo(dtype).smallest_subnormal)
    bound = float(dtype(magnitude))  # the nearest value the dtype holds
    finite = st.floats(-bound, bound, allow_nan=False, allow_infinity=False,
                       width=32 if dtype == np.float32 else 64)
    return st.one_of(finite, st.sampled_from([0.0, tiny, -tiny, 1.0, -1.0]))


@st.composite
def score_batches(draw, classification):
    dtype = draw(DTYPES)
    batch = draw(st.integers(1, 9))
    n_out = draw(st.integers(2 if classification else 1, 7))
    magnitude = draw(st.sampled_from([1.0, 1e3, 1e30]))
    scores = draw(hnp.arrays(dtype, (batch, n_out), elements=_values(dtype, magnitude)))
    if draw(st.booleans()):  # all-equal rows
        scores[:] = scores.flat[0]
    labels = draw(hnp.arrays(np.int64, batch, elements=st.integers(0, n_out - 1)))
    targets = draw(hnp.arrays(dtype, (batch, n_out), elements=st.sampled_from([0.0, 1.0])))
    return scores, labels, targets


def _checked_loss(name, scores, labels, targets, terms_per_row=1):
    """Run the loss kernel; assert value and gradient are finite and the value matches the
    reference.  Returns ``(grad, reference grad, magnitude of the largest score)``."""
    grad = np.full_like(scores, np.nan)
    row_loss = np.empty(len(scores))
    value = losses.loss_and_grad(losses.LOSSES[name], scores, labels, targets, grad, row_loss, 1, None)
    uses_labels = name in ("softmax_cross_entropy", "multiclass_hinge")
    want_value, want_grad = ref.LOSSES[name](scores, labels if uses_labels else targets)
    assert np.isfinite(value) and np.isfinite(grad).all()
    # The kernel's own rounding and the float64 reference's (tolerances.loss_bound): it
    # scales with |scores|, which reach 1e30 here.
    rows, grads = loss_bound(name, scores, 0.0, labels, targets, scores.dtype)
    rows64, grads64 = loss_bound(name, scores, 0.0, labels, targets, np.float64)
    assert_within(value, want_value, mean_loss_bound(rows + rows64, row_loss), "loss")
    return grad, want_grad, grads + grads64


@SETTINGS
@given(score_batches(classification=True))
def test_softmax_cross_entropy_is_finite_and_right_for_any_finite_logits(batch):
    grad, want_grad, bound = _checked_loss("softmax_cross_entropy", *batch)
    assert_within(grad, want_grad, bound)
    # Softmax rows minus one-hot sum to 0: the exact rows do, so the computed ones to the
    # sum of their bounds, and the float64 sum over the row adds its own rounding.
    n_out = grad.shape[1]
    assert_within(grad.sum(axis=1), 0, (bound.sum(axis=1) + n_out * np.finfo(np.float64).eps
                                        * np.abs(grad.astype(float)).sum(axis=1)))


@SETTINGS
@given(score_batches(classification=True))
def test_multiclass_hinge_matches_reference(batch):
    grad, want_grad, bound = _checked_loss("multiclass_hinge", *batch)
    # The gradient counts violated margins: exact, except where a margin is within rounding
    # of 0 (at 1e30 a margin's "+1" vanishes), which the bound counts as a possible flip.
    assert_within(grad, want_grad, bound)


@SETTINGS
@given(score_batches(classification=False))
def test_binary_cross_entropy_is_finite_and_right_for_any_finite_logits(batch):
    grad, want_grad, bound = _checked_loss("binary_cross_entropy", *batch)
    assert_within(grad, want_grad, bound)


@st.composite
def dense_problems(draw):
    dtype = draw(DTYPES)
    batch, n_in, n_out = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    x = draw(hnp.arrays(dtype, (batch, n_in), elements=_values(dtype, 30.0)))
    W = draw(hnp.arrays(dtype, (n_in, n_out), elements=_values(dtype, 3.0)))
    b = draw(hnp.arrays(dtype, n_out, elements=_values(dtype, 3.0)))
    name, param = draw(st.sampled_from(ACTIVATIONS))
    return x, W, b, name, param


@SETTINGS
@given(dense_problems())
def test_dense_forward_is_finite_and_matches_reference(problem):
    x, W, b, name, param = problem
    out = np.full((x.shape[0], W.shape[1]), np.nan, dtype=x.dtype)
    dense.dense_forward(x, W, b, activations.ACTIVATIONS[name][0], x.dtype.type(param or 0.0), out, 1)
    assert np.isfinite(out).all()
    want = ref.dense_forward(x, W, b, name, param)
    # The layer's bound (tolerances.dense_layer_bound) scales with |x| |W| + |b|, which
    # reaches 30 * 3 * 6 + 3; subnormal inputs add the underflow term.
    zeros = np.zeros(x.shape)
    bound = (dense_layer_bound(x.astype(float), zeros, W, b, name, param, 1, x.dtype)[3]
             + dense_layer_bound(x.astype(float), zeros, W, b, name, param, 1, np.float64)[3])
    assert_within(out, want, bound)


@SETTINGS
@given(st.sampled_from([1e-300, 1e-40, 1.0, 1e10, 1e30]), st.booleans(), DTYPES)
def test_model_probabilities_stay_finite_for_extreme_inputs(magnitude, equal_rows, dtype):
    magnitude = min(magnitude, float(np.finfo(dtype).max) / 1e6)
    model = Sequential([Dense(3, 4, activation="tanh"), Dense(4, 3)], seed=0, dtype=dtype)
    X = np.random.default_rng(0).normal(size=(5, 3)) * magnitude
    if equal_rows:
        X[:] = X[0]
    proba = model.predict_proba(X)
    assert np.isfinite(proba).all()
    # Each probability is e_j / sum(e) with e_j rounded once and the sum of 3 terms
    # gamma(3): a row sums to 1 within gamma(3 + 3) per term, and the check's own float64
    # sum adds nothing comparable.
    assert_within(proba.sum(axis=1), 1, 3 * gamma(6, dtype) + 3 * np.finfo(np.float64).eps)
    if equal_rows:
        # Equal rows in one call: the same kernels on the same values, row by row, bitwise.
        np.testing.assert_array_equal(proba, np.repeat(proba[:1], 5, axis=0))
