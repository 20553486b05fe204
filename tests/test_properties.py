"""Property-based tests (hypothesis): over shapes, dtypes and extreme values (huge logits,
subnormal numbers, all-equal inputs) the kernels stay finite where the math is finite and
agree with the plain-numpy reference."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import reference as ref
from conftest import ACTIVATIONS, tolerance
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
    value = losses.loss_and_grad(losses.LOSSES[name], scores, labels, targets, grad,
                                 np.empty(len(scores)), 1)
    uses_labels = name in ("softmax_cross_entropy", "multiclass_hinge")
    want_value, want_grad = ref.LOSSES[name](scores, labels if uses_labels else targets)
    assert np.isfinite(value) and np.isfinite(grad).all()
    # The loss itself is up to ~|score| large: compare relative to that scale.
    scale = max(1.0, float(np.abs(scores.astype(float)).max()))
    assert abs(value - want_value) <= tolerance(scores.dtype)["rtol"] * scale * terms_per_row * 4
    return grad, want_grad, scale


@SETTINGS
@given(score_batches(classification=True))
def test_softmax_cross_entropy_is_finite_and_right_for_any_finite_logits(batch):
    grad, want_grad, _ = _checked_loss("softmax_cross_entropy", *batch)
    np.testing.assert_allclose(grad, want_grad, atol=1e-5 if grad.dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-5)  # softmax rows minus one-hot


@SETTINGS
@given(score_batches(classification=True))
def test_multiclass_hinge_matches_reference(batch):
    scores = batch[0]
    grad, want_grad, scale = _checked_loss("multiclass_hinge", *batch, terms_per_row=scores.shape[1])
    if scale < 1e6:  # at 1e30 a margin of "+1" vanishes in rounding: which side is ambiguous
        np.testing.assert_allclose(grad, want_grad)


@SETTINGS
@given(score_batches(classification=False))
def test_binary_cross_entropy_is_finite_and_right_for_any_finite_logits(batch):
    grad, want_grad, _ = _checked_loss("binary_cross_entropy", *batch)
    np.testing.assert_allclose(grad, want_grad, atol=1e-6 if grad.dtype == np.float32 else 1e-12)


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
    # |x W| reaches 30 * 3 * 6: absolute error scales with it in float32.
    scale = max(1.0, float((np.abs(x.astype(float)) @ np.abs(W.astype(float))).max()))
    np.testing.assert_allclose(out, want, rtol=tolerance(x.dtype)["rtol"],
                               atol=tolerance(x.dtype)["atol"] * scale)


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
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    if equal_rows:
        np.testing.assert_array_equal(proba, np.repeat(proba[:1], 5, axis=0))
