"""Every kernel against its plain-numpy twin in tests/reference.py, both dtypes, odd shapes."""

import numpy as np
import pytest

import reference as ref
from conftest import ACTIVATIONS, DTYPES, SHAPES, tolerance
from fastmlp.config import PARALLEL_MIN_ELEMENTS, PARALLEL_MIN_FLOPS
from fastmlp.kernels import activations, blas, dense, losses, optim
from fastmlp.kernels.checks import count_nonfinite, count_not_binary, first_label_out_of_range

# Big enough that the prange drivers, not the serial paths, run with 2 threads.
PARALLEL_SHAPE = (300, 40, PARALLEL_MIN_ELEMENTS // 300 + 7)


def _dense_inputs(rng, shape, dtype):
    batch, n_in, n_out = shape
    x = rng.normal(size=(batch, n_in)).astype(dtype)
    W = (rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)).astype(dtype)
    b = rng.normal(size=n_out).astype(dtype)
    return x, W, b


def _param(name, param):
    return 0.0 if param is None else param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [PARALLEL_SHAPE])
@pytest.mark.parametrize("name,param", ACTIVATIONS)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_dense_forward_matches_reference(rng, dtype, shape, name, param, n_threads):
    x, W, b = _dense_inputs(rng, shape, dtype)
    code = activations.ACTIVATIONS[name][0]
    out = np.full((shape[0], shape[2]), np.nan, dtype=dtype)
    dense.dense_forward(x, W, b, code, dtype(_param(name, param)), out, n_threads)
    np.testing.assert_allclose(out, ref.dense_forward(x, W, b, name, param), **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [PARALLEL_SHAPE])
@pytest.mark.parametrize("name,param", ACTIVATIONS)
def test_dense_backward_matches_reference(rng, dtype, shape, name, param):
    x, W, b = _dense_inputs(rng, shape, dtype)
    code = activations.ACTIVATIONS[name][0]
    a = np.empty((shape[0], shape[2]), dtype=dtype)
    dense.dense_forward(x, W, b, code, dtype(_param(name, param)), a, 2)
    upstream = rng.normal(size=a.shape).astype(dtype)
    delta = upstream.copy()
    grad_W = np.full(W.shape, np.nan, dtype=dtype)
    grad_b = np.full(b.shape, np.nan, dtype=dtype)
    grad_x = np.full(x.shape, np.nan, dtype=dtype)
    dense.dense_backward(x, W, a, code, dtype(_param(name, param)), delta, grad_W, grad_b, grad_x, True, 2)
    # The reference differentiates through z, not a: an independent check of the from-output trick.
    want_W, want_b, want_x = ref.dense_backward(x, W, b, name, param, upstream)
    tol = tolerance(dtype)
    np.testing.assert_allclose(grad_W, want_W, **tol)
    np.testing.assert_allclose(grad_b, want_b, **tol)
    np.testing.assert_allclose(grad_x, want_x, **tol)


def test_dense_backward_leaves_grad_x_alone_when_not_asked(rng):
    x, W, b = _dense_inputs(rng, (4, 3, 2), np.float64)
    a = np.empty((4, 2))
    dense.dense_forward(x, W, b, activations.TANH, 0.0, a, 1)
    grad_x = np.full(x.shape, 7.0)
    dense.dense_backward(x, W, a, activations.TANH, 0.0, np.ones_like(a), np.empty_like(W),
                         np.empty_like(b), grad_x, False, 1)
    assert (grad_x == 7.0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pieces", [2, 3])
@pytest.mark.parametrize("shape", SHAPES + [PARALLEL_SHAPE])
def test_maxout_forward_and_backward_match_reference(rng, dtype, pieces, shape):
    batch, n_in, n_out = shape
    x, W, b = _dense_inputs(rng, (batch, n_in, pieces * n_out), dtype)
    z = np.empty((batch, pieces * n_out), dtype=dtype)
    out = np.empty((batch, n_out), dtype=dtype)
    winner = np.empty((batch, n_out), dtype=np.int32)
    dense.maxout_forward(x, W, b, pieces, z, out, winner, 2)
    want_out, want_winner = ref.maxout_forward(x, W, b, pieces)
    tol = tolerance(dtype)
    np.testing.assert_allclose(out, want_out, **tol)
    np.testing.assert_array_equal(winner, want_winner)

    upstream = rng.normal(size=out.shape).astype(dtype)
    grads = [np.empty_like(W), np.empty_like(b), np.empty_like(x)]
    dense.maxout_backward(x, W, winner, pieces, upstream, z, *grads, True, 2)
    for got, want in zip(grads, ref.maxout_backward(x, W, b, pieces, upstream)):
        np.testing.assert_allclose(got, want, **tol)


def test_maxout_ties_go_to_the_first_piece():
    x = np.ones((1, 1))
    W = np.array([[1.0, 1.0, 1.0]])  # 3 pieces of one unit, all equal
    b = np.zeros(3)
    winner = np.full((1, 1), -1, dtype=np.int32)
    dense.maxout_forward(x, W, b, 3, np.empty((1, 3)), np.empty((1, 1)), winner, 1)
    assert winner[0, 0] == 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (300, PARALLEL_MIN_ELEMENTS // 300 + 3)])
def test_column_sum(rng, dtype, n_threads, shape):
    x = rng.normal(size=shape).astype(dtype)
    out = np.full(shape[1], np.nan, dtype=dtype)
    dense.column_sum(x, out, n_threads)
    np.testing.assert_allclose(out, x.astype(float).sum(axis=0), **tolerance(dtype))


def _loss_inputs(rng, loss, batch, n_out, dtype):
    scores = (3 * rng.normal(size=(batch, n_out))).astype(dtype)
    labels = rng.integers(0, n_out, size=batch).astype(np.int64)
    if loss == "binary_cross_entropy":
        targets = rng.integers(0, 2, size=(batch, n_out)).astype(dtype)
    else:
        targets = rng.normal(size=(batch, n_out)).astype(dtype)
    want = ref.LOSSES[loss](scores, labels if loss in ("softmax_cross_entropy", "multiclass_hinge") else targets)
    return scores, labels, targets, want


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", list(losses.LOSSES))
@pytest.mark.parametrize("batch,n_out", [(1, 2), (5, 3), (17, 10), (2000, 40)])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_loss_and_grad_match_reference(rng, dtype, loss, batch, n_out, n_threads):
    scores, labels, targets, (want_loss, want_grad) = _loss_inputs(rng, loss, batch, n_out, dtype)
    grad = np.full_like(scores, np.nan)
    row_loss = np.full(batch, np.nan)
    got = losses.loss_and_grad(losses.LOSSES[loss], scores, labels, targets, grad, row_loss, n_threads)
    tol = tolerance(dtype)
    np.testing.assert_allclose(got, want_loss, rtol=tol["rtol"], atol=tol["atol"])
    np.testing.assert_allclose(grad, want_grad, rtol=tol["rtol"], atol=tol["atol"] / batch)


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "binary_cross_entropy"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_stay_finite_on_huge_scores(loss, dtype):
    scores = np.array([[1e4, -1e4, 0.0], [-3e4, 3e4, 5.0]], dtype=dtype)
    labels = np.array([1, 0], dtype=np.int64)
    targets = np.array([[0, 1, 1], [1, 0, 0]], dtype=dtype)
    grad = np.empty_like(scores)
    value = losses.loss_and_grad(losses.LOSSES[loss], scores, labels, targets, grad, np.empty(2), 1)
    assert np.isfinite(value) and np.isfinite(grad).all()
    want_loss, want_grad = ref.LOSSES[loss](scores, labels if loss.startswith("softmax") else targets)
    np.testing.assert_allclose(value, want_loss, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("n,n_threads", [(1, 1), (37, 2), (PARALLEL_MIN_ELEMENTS + 11, 2)])
def test_sgd_update_matches_reference(rng, dtype, momentum, nesterov, weight_decay, n, n_threads):
    params = rng.normal(size=n).astype(dtype)
    velocity = rng.normal(size=n).astype(dtype)
    grads = rng.normal(size=n).astype(dtype)
    n_weights = (2 * n) // 3
    want_params, want_velocity = ref.sgd_update(params.astype(float), grads, velocity.astype(float),
                                                n_weights, 0.05, momentum, nesterov, weight_decay)
    optim.sgd_update(params, grads, velocity, n_weights, dtype(0.05), dtype(momentum), nesterov,
                     dtype(weight_decay), n_threads)
    tol = tolerance(dtype)
    np.testing.assert_allclose(params, want_params, **tol)
    np.testing.assert_allclose(velocity, want_velocity, **tol)


def test_input_checks_see_nan_and_inf_despite_fastmath():
    x = np.zeros((3, 4), dtype=np.float32)
    assert count_nonfinite(x) == 0
    x[1, 2], x[2, 3] = np.nan, -np.inf
    assert count_nonfinite(x) == 2
    assert count_not_binary(np.array([0.0, 1.0, 0.5, 2.0])) == 2
    assert first_label_out_of_range(np.array([0, 2, 3, -1]), 3) == 2
    assert first_label_out_of_range(np.array([0, 2, 1]), 3) == -1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("transpose_a", [False, True])
@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 1, 5), (7, 9, 2), (33, 17, 65)])
def test_gemm_on_views_with_transposes_and_accumulation(rng, dtype, transpose_a, transpose_b, m, k, n):
    # Operands are column blocks of wider arrays: strided rows, unit inner stride.
    a_full = rng.normal(size=(k, m + 3) if transpose_a else (m, k + 3)).astype(dtype)
    b_full = rng.normal(size=(n, k + 2) if transpose_b else (k, n + 2)).astype(dtype)
    a = a_full[:, 1:1 + m] if transpose_a else a_full[:, 1:1 + k]
    b = b_full[:, 2:2 + k] if transpose_b else b_full[:, 2:2 + n]
    want = (a.T if transpose_a else a).astype(float) @ (b.T if transpose_b else b).astype(float)
    c_full = rng.normal(size=(m, n + 4)).astype(dtype)
    before = c_full.copy()
    c = c_full[:, 1:1 + n]
    blas.gemm(a, transpose_a, b, transpose_b, c, False)
    np.testing.assert_allclose(c, want, **tolerance(dtype))
    np.testing.assert_array_equal(c_full[:, 0], before[:, 0])  # outside the view: untouched
    np.testing.assert_array_equal(c_full[:, 1 + n:], before[:, 1 + n:])
    blas.gemm(a, transpose_a, b, transpose_b, c, True)
    np.testing.assert_allclose(c, 2 * want, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(300, 64, 200), (40, 64, 900), (900, 64, 40)])
def test_matmul_in_blocks_agrees_with_one_block(rng, dtype, m, k, n):
    a = rng.normal(size=(m, k)).astype(dtype)
    b = rng.normal(size=(k, n)).astype(dtype)
    assert 2 * m * n * k >= PARALLEL_MIN_FLOPS  # the parallel path runs
    one, two = np.empty((m, n), dtype), np.empty((m, n), dtype)
    blas.matmul(a, False, b, False, one, 1)
    blas.matmul(a, False, b, False, two, 2)
    # OpenBLAS chooses kernels (and so the order of the k products) by block size: the
    # results differ by rounding only.
    np.testing.assert_allclose(one, two, **tolerance(dtype))
    np.testing.assert_allclose(one, a.astype(float) @ b, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_parallel_kernels_are_bitwise_independent_of_threads(rng, dtype):
    rows, cols = 300, PARALLEL_MIN_ELEMENTS // 300 + 13
    z = rng.normal(size=(rows, cols)).astype(dtype)
    b = rng.normal(size=cols).astype(dtype)
    labels = rng.integers(0, cols, size=rows).astype(np.int64)
    results = []
    for n_threads in (1, 2):
        a = z.copy()
        activations.bias_activation(a, b, activations.ELU, dtype(0.5), n_threads)
        delta = z.copy()
        activations.activation_grad(a, delta, activations.ELU, dtype(0.5), n_threads)
        sums = np.empty(cols, dtype)
        dense.column_sum(delta, sums, n_threads)
        grad = np.empty_like(z)
        loss = losses.loss_and_grad(losses.SOFTMAX_CROSS_ENTROPY, z, labels, z[:0], grad,
                                    np.empty(rows), n_threads)
        params, velocity = z.ravel().copy(), np.zeros(z.size, dtype)
        optim.sgd_update(params, delta.ravel(), velocity, z.size // 2, dtype(0.1), dtype(0.9), True,
                         dtype(0.01), n_threads)
        results.append((a, delta, sums, grad, loss, params, velocity))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)
