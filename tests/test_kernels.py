"""Every kernel against its plain-numpy twin in tests/reference.py, both dtypes, odd shapes."""

import numpy as np
import pytest

import reference as ref
from conftest import ACTIVATIONS, DTYPES, SHAPES
from tolerances import (assert_within, dense_backward_bound, dense_layer_bound, loss_bound,
                        elementwise_bound, maxout_backward_bound, mean_loss_bound, product_bound,
                        sum_bound)
from fastmlp.config import PARALLEL_MIN_ELEMENTS, PARALLEL_MIN_FLOPS
from fastmlp.kernels import activations, blas, dense, losses, optim
from fastmlp.kernels.checks import count_nonfinite, count_not_binary, first_label_out_of_range
from fastmlp.losses import get as get_loss

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
    # Within the layer's rounding bound of the exact result (tolerances.dense_layer_bound);
    # the float64 reference within its own.
    _, _, want, bound = _forward_bound(x, W, b, name, param, dtype)
    bound64 = _forward_bound(x, W, b, name, param, np.float64)[3]
    assert_within(out, ref.dense_forward(x, W, b, name, param), bound + bound64)


def _forward_bound(x, W, b, name, param, dtype, pieces=1):
    return dense_layer_bound(x.astype(float), np.zeros(x.shape), W, b, name, param, pieces, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [PARALLEL_SHAPE])
@pytest.mark.parametrize("name,param", ACTIVATIONS)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_dense_backward_matches_reference(rng, dtype, shape, name, param, n_threads):
    x, W, b = _dense_inputs(rng, shape, dtype)
    code = activations.ACTIVATIONS[name][0]
    a = np.empty((shape[0], shape[2]), dtype=dtype)
    dense.dense_forward(x, W, b, code, dtype(_param(name, param)), a, n_threads)
    upstream = rng.normal(size=a.shape).astype(dtype)
    delta = upstream.copy()
    grad_W = np.full(W.shape, np.nan, dtype=dtype)
    grad_b = np.full(b.shape, np.nan, dtype=dtype)
    grad_x = np.full(x.shape, np.nan, dtype=dtype)
    dense.dense_backward(x, W, a, code, dtype(_param(name, param)), delta, grad_W, grad_b, grad_x, True,
                         n_threads)
    # The reference differentiates through z, not a: an independent check of the from-output trick.
    want = ref.dense_backward(x, W, b, name, param, upstream)
    # Bounds: the forward's (f' is read off the computed output; at a ReLU-family kink
    # within rounding of 0 either side may be taken), then each product's gamma(k) |.||.|.
    z, E_z, _, E_out = _forward_bound(x, W, b, name, param, dtype)
    _, _, (_, bounds) = dense_backward_bound(x, np.zeros(x.shape), W, z, E_z, E_out, name, param,
                                             upstream, np.zeros(upstream.shape), dtype)
    z, E_z, _, E_out = _forward_bound(x, W, b, name, param, np.float64)
    _, _, (_, bounds64) = dense_backward_bound(x, np.zeros(x.shape), W, z, E_z, E_out, name, param,
                                               upstream, np.zeros(upstream.shape), np.float64)
    for got, w, bound, bound64, what in zip((grad_W, grad_b, grad_x), want, bounds, bounds64, "Wbx"):
        assert_within(got, w, bound + bound64, f"grad_{what}")


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
    zz, E_z, _, bound = _forward_bound(x, W, b, "maxout", None, dtype, pieces)
    zz64, E_z64, _, bound64 = _forward_bound(x, W, b, "maxout", None, np.float64, pieces)
    assert_within(out, want_out, bound + bound64)
    # The winner is the exact one wherever no other piece is within rounding of it, and
    # otherwise one of those that are (tolerances.maxout_backward_bound).
    upstream = rng.normal(size=out.shape).astype(dtype)
    _, _, (_, bounds), exact_winner, maybe = maxout_backward_bound(
        x, np.zeros(x.shape), W, zz, E_z + E_z64, pieces, upstream, np.zeros(upstream.shape), dtype)
    # The exact winners: numpy's argmax of the same float64 values.
    np.testing.assert_array_equal(exact_winner, want_winner)
    assert np.take_along_axis(maybe, winner[:, None, :].astype(np.intp), axis=1).all()
    # Where no other piece is within rounding of the winner, the kernel must pick it too.
    np.testing.assert_array_equal(winner[maybe.sum(axis=1) == 1], want_winner[maybe.sum(axis=1) == 1])

    grads = [np.empty_like(W), np.empty_like(b), np.empty_like(x)]
    dense.maxout_backward(x, W, winner, pieces, upstream, z, *grads, True, 2)
    _, _, (_, bounds64), _, _ = maxout_backward_bound(
        x, np.zeros(x.shape), W, zz, E_z + E_z64, pieces, upstream, np.zeros(upstream.shape), np.float64)
    want = ref.maxout_backward(x, W, b, pieces, upstream)
    for got, w, bound, bound64 in zip(grads, want, bounds, bounds64):
        assert_within(got, w, bound + bound64)


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
    bound = sum_bound(x, dtype, 0) + sum_bound(x, np.float64, 0)
    assert_within(out, x.astype(float).sum(axis=0), bound)


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
    got = losses.loss_and_grad(losses.LOSSES[loss], scores, labels, targets, grad, row_loss, n_threads,
                               get_loss(loss).kernel_params())
    _assert_loss_within(loss, scores, labels, targets, got, grad, want_loss, want_grad, row_loss, dtype)


def _assert_loss_within(loss, scores, labels, targets, got, grad, want_loss, want_grad, row_loss, dtype):
    # The scores are given exactly: only the loss kernel's own rounding (tolerances.loss_bound),
    # and the float64 reference's.
    rows, grads = loss_bound(loss, scores, 0.0, labels, targets, dtype)
    rows64, grads64 = loss_bound(loss, scores, 0.0, labels, targets, np.float64)
    assert_within(got, want_loss, mean_loss_bound(rows + rows64, row_loss), "loss")
    assert_within(grad, want_grad, grads + grads64, "gradient")


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "binary_cross_entropy"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_stay_finite_on_huge_scores(loss, dtype):
    scores = np.array([[1e4, -1e4, 0.0], [-3e4, 3e4, 5.0]], dtype=dtype)
    labels = np.array([1, 0], dtype=np.int64)
    targets = np.array([[0, 1, 1], [1, 0, 0]], dtype=dtype)
    grad = np.empty_like(scores)
    row_loss = np.empty(2)
    value = losses.loss_and_grad(losses.LOSSES[loss], scores, labels, targets, grad, row_loss, 1, None)
    assert np.isfinite(value) and np.isfinite(grad).all()
    want_loss, want_grad = ref.LOSSES[loss](scores, labels if loss.startswith("softmax") else targets)
    _assert_loss_within(loss, scores, labels, targets, value, grad, want_loss, want_grad, row_loss, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("n,n_threads", [(1, 1), (37, 2), (PARALLEL_MIN_ELEMENTS + 11, 2)])
def test_sgd_update_matches_reference(rng, dtype, momentum, nesterov, weight_decay, n, n_threads):
    params = rng.normal(size=n).astype(dtype)
    velocity = rng.normal(size=n).astype(dtype)
    grads = rng.normal(size=n).astype(dtype)
    n_weights = (2 * n) // 3
    params_before, velocity_before = params.copy(), velocity.copy()
    want_params, want_velocity = ref.sgd_update(params.astype(float), grads, velocity.astype(float),
                                                n_weights, 0.05, momentum, nesterov, weight_decay)
    optim.sgd_update(params, grads, velocity, n_weights, dtype(0.05), dtype(momentum), nesterov,
                     dtype(weight_decay), n_threads)
    # With S = |p| + |g| + |v|: g' = g + wd p, v' = mu v + g', step = g' + mu v' or v',
    # p' = p - lr step.  Every value is at most 4 S; 8 operations and 3 hyperparameter
    # casts round (11 roundings) on the way to p', 6 on the way to v' (at most 2 S).
    S = np.abs(params_before).astype(float) + np.abs(grads) + np.abs(velocity_before)
    assert_within(params, want_params,
                  elementwise_bound(11, 4 * S, dtype) + elementwise_bound(11, 4 * S, np.float64))
    assert_within(velocity, want_velocity,
                  elementwise_bound(6, 2 * S, dtype) + elementwise_bound(6, 2 * S, np.float64))


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
# One row of output takes the gemv path: (1, k, n) with k and n above 1.
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 9, 13), (1, 70, 3), (3, 1, 5), (7, 9, 2), (33, 17, 65)])
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
    # gamma(k) |a||b| for the product, and as much for the float64 reference.
    bound = product_bound(a.T if transpose_a else a, b.T if transpose_b else b, dtype)
    bound += product_bound(a.T if transpose_a else a, b.T if transpose_b else b, np.float64)
    assert_within(c, want, bound)
    np.testing.assert_array_equal(c_full[:, 0], before[:, 0])  # outside the view: untouched
    np.testing.assert_array_equal(c_full[:, 1 + n:], before[:, 1 + n:])
    blas.gemm(a, transpose_a, b, transpose_b, c, True)
    # c (within bound of want) plus a second product (as much), rounded once more.
    assert_within(c, 2 * want, 2 * bound + np.finfo(dtype).eps * np.abs(2 * want))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(300, 64, 200), (40, 64, 900), (900, 64, 40)])
def test_matmul_in_blocks_agrees_with_one_block(rng, dtype, m, k, n):
    a = rng.normal(size=(m, k)).astype(dtype)
    b = rng.normal(size=(k, n)).astype(dtype)
    assert 2 * m * n * k >= PARALLEL_MIN_FLOPS  # the parallel path runs
    one, two = np.empty((m, n), dtype), np.empty((m, n), dtype)
    blas.matmul(a, False, b, False, one, 1)
    blas.matmul(a, False, b, False, two, 2)
    # OpenBLAS chooses kernels (and so the order of the k products) by block size: each is
    # within gamma(k) |a||b| of the exact product, so the two within twice that.
    bound = product_bound(a, b, dtype)
    assert_within(one, two, 2 * bound)
    assert_within(one, a.astype(float) @ b, bound + product_bound(a, b, np.float64))
    assert_within(two, a.astype(float) @ b, bound + product_bound(a, b, np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_parallel_kernels_are_bitwise_independent_of_the_split(rng, dtype):
    rows, cols = 300, PARALLEL_MIN_ELEMENTS // 300 + 13
    z = rng.normal(size=(rows, cols)).astype(dtype)
    b = rng.normal(size=cols).astype(dtype)
    labels = rng.integers(0, cols, size=rows).astype(np.int64)
    results = []
    # 2, 3 and 4 chunks (more chunks than threads is fine: they queue): the same compiled
    # prange driver, the rows (columns) split elsewhere.  Bitwise by construction: each
    # element is computed by the same machine code whichever thread runs it, and the only
    # sums (a row's softmax, a column's rows, the loss over rows) run in a fixed order.
    # One thread takes the serial path, another compilation of the same loops, which
    # fastmath's reassoc/contract may vectorise into another order of a row's sum (seen:
    # float32 softmax cross-entropy on an AVX-512 CPU): serial and parallel agree to
    # rounding, which the reference tests above check at n_threads 1 and 2 alike.
    for n_threads in (2, 3, 4):
        a = z.copy()
        activations.bias_activation(a, b, activations.ELU, dtype(0.5), n_threads)
        delta = z.copy()
        activations.activation_grad(a, delta, activations.ELU, dtype(0.5), n_threads)
        sums = np.empty(cols, dtype)
        dense.column_sum(delta, sums, n_threads)
        grad = np.empty_like(z)
        loss = losses.loss_and_grad(losses.SOFTMAX_CROSS_ENTROPY, z, labels, z[:0], grad,
                                    np.empty(rows), n_threads, None)
        params, velocity = z.ravel().copy(), np.zeros(z.size, dtype)
        optim.sgd_update(params, delta.ravel(), velocity, z.size // 2, dtype(0.1), dtype(0.9), True,
                         dtype(0.01), n_threads)
        results.append((a, delta, sums, grad, loss, params, velocity))
    for other in results[1:]:
        for one, two in zip(results[0], other):
            np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_views_are_the_reshaped_segments_of_their_buffer(dtype):
    # kernels.network builds its (rows, cols) views of the flat buffers in place of numba's
    # reshape: they must be what numpy's reshape of the segment gives, share its memory,
    # and refuse a segment that runs past the buffer's end as reshape did.
    from fastmlp.kernels import network

    buf = np.arange(23, dtype=dtype)
    view = network._rows(buf, 3, 4, 5)
    assert view.dtype == dtype and view.shape == (4, 5) and view.flags.c_contiguous
    np.testing.assert_array_equal(view, buf[3:23].reshape(4, 5))
    view[1, 2] = -1.0
    assert buf[3 + 1 * 5 + 2] == -1.0
    np.testing.assert_array_equal(network._rows(buf, 0, 0, 5), np.empty((0, 5), dtype))
    with pytest.raises(ValueError, match="runs past the end of its buffer"):
        network._rows(buf, 4, 4, 5)
