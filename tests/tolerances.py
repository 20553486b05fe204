"""Rounding bounds for the tests: one place for every per-dtype epsilon and error bound.

A float comparison in this suite is either bitwise, where the code guarantees it by
construction (the same kernels on the same shapes in the same order), or it checks
``|got - want| <= bound`` with a bound derived from the computation, never the error one
machine happened to show.  OpenBLAS picks its kernels by CPU family and by matrix size
(docs/architecture.md, "Threads"), so any two evaluations of one product that differ in
shape, blocking or machine may round differently, within these bounds.

The model used throughout (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd
ed., sec. 2.2 and 3.1): every operation rounds with relative error at most the unit
roundoff ``u = eps / 2``; a computed sum of ``k`` terms, in any order (fastmath's
``reassoc``) and with or without fused multiply-adds (``contract``), satisfies
``|fl(sum x_i) - sum x_i| <= gamma(k) * sum |x_i|`` with ``gamma(k) = k u / (1 - k u)``.
So a computed product ``a @ b`` of inner length ``k`` is within ``gamma(k) * |a| @ |b|`` of
the exact one, and two computations of it (two kernels) within twice that.  fastmath also
lets LLVM rewrite an expression (``(1 - b) x`` as ``x - b x``, seen in Adam's update), and
two compilations of one loop (the serial path and a ``prange`` driver) may order a sum
differently: nothing here assumes the written order.  Results that underflow add an
absolute error of up to one smallest subnormal per operation.
"""

import numpy as np

#: Rounding of one elementary function call and the few operations around it (``exp``,
#: ``tanh``, ``log1p`` are correctly rounded to within 1 ulp in libm and LLVM; the
#: activation and loss formulas add at most 3 more roundings, as ``1 / (1 + exp(-z))``).
ELEMENTARY_ROUNDINGS = 4


def eps(dtype):
    """Machine epsilon of ``dtype`` (the gap between 1 and the next float)."""
    return float(np.finfo(dtype).eps)


def unit_roundoff(dtype):
    """``u = eps / 2``: the largest relative error of one correctly rounded operation."""
    return eps(dtype) / 2


def gamma(k, dtype):
    """Higham's ``gamma_k = k u / (1 - k u)``: relative bound of a ``k``-term sum (or dot
    product) in any order, against ``sum |terms|``."""
    ku = k * unit_roundoff(dtype)
    assert ku < 0.5, "the bound needs k u < 1"
    return ku / (1 - ku)


def product_bound(a, b, dtype):
    """Bound on ``|fl(a @ b) - a @ b|``, elementwise: ``gamma(k) |a| @ |b|``."""
    a, b = np.abs(np.asarray(a, float)), np.abs(np.asarray(b, float))
    return gamma(a.shape[-1], dtype) * (a @ b)


def sum_bound(x, dtype, axis=None):
    """Bound on ``|fl(sum x) - sum x|`` along ``axis``: ``gamma(n) sum |x|``."""
    x = np.abs(np.asarray(x, float))
    n = x.size if axis is None else x.shape[axis]
    return gamma(max(n, 1), dtype) * x.sum(axis=axis)


def elementwise_bound(n_roundings, magnitude, dtype):
    """Bound on an elementwise formula of ``n_roundings`` rounded operations (casts of
    hyperparameters to ``dtype`` included), none of whose intermediate values exceeds
    ``magnitude`` and whose coefficients are at most 1 in size: every rounding adds at most
    ``u * magnitude``, and errors already made pass through with a factor of at most 1."""
    return n_roundings * unit_roundoff(dtype) * np.abs(np.asarray(magnitude, float))


def assert_within(got, want, bound, what="values"):
    """``|got - want| <= bound`` elementwise, with the worst element named on failure."""
    got, want = np.asarray(got, float), np.asarray(want, float)
    bound = np.broadcast_to(np.asarray(bound, float), np.broadcast_shapes(got.shape, want.shape))
    err = np.abs(got - want)
    bad = ~(err <= bound)  # NaN counts as a failure
    if bad.any():
        ratio = np.where(bound > 0, err / np.where(bound > 0, bound, 1), np.inf)
        i = np.unravel_index(np.nanargmax(np.where(bad, ratio, -1)), err.shape) if err.ndim else ()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.size} elements beyond the rounding bound; worst at "
            f"{i}: got {got[i]!r}, want {want[i]!r}, |diff| {err[i]:.3g} > bound {bound[i]:.3g}")


# --- One layer ---------------------------------------------------------------------------

def _lipschitz(name, param):
    """``L`` with ``|f(x) - f(y)| <= L |x - y|``."""
    return {"identity": 1.0, "sigmoid": 0.25, "tanh": 1.0, "relu": 1.0,
            "leaky_relu": max(1.0, abs(param or 0.0)), "elu": max(1.0, abs(param or 0.0)),
            "maxout": 1.0, "gelu": 1.13, "silu": 1.1}[name]


def _activation_error(name, param, out, dtype):
    """Rounding of evaluating ``f`` itself: none for identity, ReLU and max; one multiply
    for leaky ReLU; a few roundings for the ``exp``/``tanh`` ones, absolute near 0 where
    ``exp(z) - 1`` and ``1 / (1 + e)`` lose their relative accuracy."""
    u = unit_roundoff(dtype)
    if name in ("identity", "relu", "maxout"):
        return 0.0
    if name == "leaky_relu":
        return u * np.abs(out)
    return ELEMENTARY_ROUNDINGS * u * (np.abs(out) + 1 + abs(param or 0.0))


def dense_layer_bound(a, E, W, b, name, param, pieces, dtype):
    """One layer ``f(a W + b)`` (maxout: the max over ``pieces`` column blocks) whose input
    ``a`` (exact) is known to the computation only within ``E``.

    ``|z_computed - z| <= gamma(k + 1) ((|a| + E) @ |W| + |b|) + E @ |W|`` (the product,
    then the bias add, in any order), then ``L_f`` times that through ``f`` plus ``f``'s
    own rounding; maxout's max is exact and 1-Lipschitz.  Returns ``(z, E_z, out, E_out)``.
    """
    a, E = np.asarray(a, float), np.asarray(E, float)
    W, b = np.asarray(W, float), np.asarray(b, float)
    z = a @ W + b
    # (k + 1) smallest subnormals: the absolute error of products and sums that underflow.
    E_z = (gamma(W.shape[0] + 1, dtype) * ((np.abs(a) + E) @ np.abs(W) + np.abs(b)) + E @ np.abs(W)
           + (W.shape[0] + 1) * float(np.finfo(dtype).smallest_subnormal))
    if name == "maxout":
        n_out = W.shape[1] // pieces
        out = z.reshape(len(z), pieces, n_out).max(axis=1)
        E_out = E_z.reshape(len(z), pieces, n_out).max(axis=1)
    else:
        import reference
        out = reference.activation(z, name, param)
        E_out = _lipschitz(name, param) * E_z + _activation_error(name, param, out, dtype)
    return z, E_z, out, E_out


# f' as the kernels compute it, from the cached output: its largest value, its jump at 0
# (where |z| is within its error bound of 0 either side may be taken), and its slope as a
# function of the output it is read from (tanh' = 1 - a^2: 2; sigmoid' = a (1 - a): 1;
# ELU' = a + alpha below 0: 1).
def _derivative_shape(name, param):
    alpha = abs(param or 0.0)
    return {"identity": (1.0, 0.0, 0.0), "relu": (1.0, 1.0, 0.0), "tanh": (1.0, 0.0, 2.0),
            "sigmoid": (0.25, 0.0, 1.0), "leaky_relu": (max(1.0, alpha), abs(1 - alpha), 0.0),
            "elu": (max(1.0, alpha), abs(1 - alpha), 1.0),
            # gelu/silu: f' is read from the cached z, not the output; its slope in z is
            # f'' <= 0.8 (gelu) and 0.5 (silu), entered as that of the output (|z| error).
            "gelu": (1.13, 0.0, 0.8), "silu": (1.1, 0.0, 0.5)}[name]


def derivative_bound(z, E_z, E_out, name, param, dtype):
    """``(f'(z), E_f')``: the exact derivative and the bound on the computed one."""
    import reference
    f_max, jump, slope = _derivative_shape(name, param)
    kink = np.abs(z) <= E_z
    E = slope * E_out + jump * kink + ELEMENTARY_ROUNDINGS * unit_roundoff(dtype) * f_max * (slope > 0)
    return reference.activation_derivative(z, name, param), E


def dense_backward_bound(a, E_a, W, z, E_z, E_out, name, param, g, E_g, dtype):
    """Bounds on the computed ``(dW, db, dx)`` of a dense layer for the upstream gradient
    ``g`` (exact, known within ``E_g``): ``dz = g f'(z)``, ``dW = a^T dz``,
    ``db = sum_rows dz``, ``dx = dz W^T``, each product adding ``gamma(k) |.| @ |.|`` and
    each error already present carried through the absolute values."""
    u = unit_roundoff(dtype)
    g, E_g = np.asarray(g, float), np.asarray(E_g, float)
    fprime, E_fprime = derivative_bound(z, E_z, E_out, name, param, dtype)
    f_max = _derivative_shape(name, param)[0]
    d = g * fprime
    E_d = E_g * f_max + (np.abs(g) + E_g) * E_fprime + u * (np.abs(g) + E_g) * f_max
    return d, E_d, _linear_backward_bound(a, E_a, W, d, E_d, dtype)


def maxout_backward_bound(a, E_a, W, z, E_z, pieces, g, E_g, dtype):
    """As :func:`dense_backward_bound` for maxout: the upstream gradient goes to each unit's
    winning piece; where another piece is within rounding of the winner, either may get it.
    Also returns the exact ``winner`` ``(n, n_out)`` and ``maybe`` ``(n, pieces, n_out)``,
    the pieces that may win in some computation."""
    n = len(z)
    n_out = W.shape[1] // pieces
    g, E_g = np.asarray(g, float), np.asarray(E_g, float)
    z3, E3 = z.reshape(n, pieces, n_out), E_z.reshape(n, pieces, n_out)
    winner = z3.argmax(axis=1)
    top = z3.max(axis=1, keepdims=True)
    E_top = np.take_along_axis(E3, winner[:, None, :], axis=1)
    maybe = (top - z3) <= (E_top + E3)  # pieces that may win in one computation or another
    ambiguous = maybe.sum(axis=1, keepdims=True) > 1
    is_winner = np.zeros_like(z3, dtype=bool)
    np.put_along_axis(is_winner, winner[:, None, :], True, axis=1)
    d = np.where(is_winner, g[:, None, :], 0.0).reshape(n, -1)
    E_d = np.where(ambiguous & maybe, (np.abs(g) + E_g)[:, None, :],
                   np.where(is_winner, E_g[:, None, :], 0.0)).reshape(n, -1)
    return d, E_d, _linear_backward_bound(a, E_a, W, d, E_d, dtype), winner, maybe


def _linear_backward_bound(a, E_a, W, d, E_d, dtype):
    a, E_a, W = np.asarray(a, float), np.asarray(E_a, float), np.asarray(W, float)
    abs_a, abs_d = np.abs(a) + E_a, np.abs(d) + E_d
    n = len(a)
    exact = [a.T @ d, d.sum(axis=0), d @ W.T]
    bounds = [gamma(n, dtype) * (abs_a.T @ abs_d) + E_a.T @ abs_d + np.abs(a).T @ E_d,
              gamma(n, dtype) * abs_d.sum(axis=0) + E_d.sum(axis=0),
              gamma(W.shape[1], dtype) * (abs_d @ np.abs(W).T) + E_d @ np.abs(W).T]
    return exact, bounds


# --- Losses ------------------------------------------------------------------------------

def loss_bound(loss, scores, E_scores, labels, targets, dtype):
    """``(row_loss_bound, grad_bound)`` for the loss kernels on scores known within
    ``E_scores`` (0 for scores given exactly), against the exact loss of the exact scores.

    softmax cross-entropy: ``logsumexp(s) - s_y`` is 2-Lipschitz in the max norm of the
    scores, and ``softmax(s + d) / softmax(s)`` lies in ``[e^-2|d|, e^2|d|]``; its own
    rounding is that of ``n_out`` exps, their sum, a log and a few operations,
    ``gamma(n_out + 4)`` of the terms' size.  Hinge: a sum of ``n_out`` margins, 2-Lipschitz
    each; its gradient is a count, which may change only where a margin is within rounding
    of 0.  BCE: ``max(s, 0) - s t + log1p(exp(-|s|))``, 2-Lipschitz, a few roundings per
    output.  MSE: ``d^2`` and ``2 d``, with ``d = s - t`` rounded once.  The mean over the
    batch (over the elements for BCE and MSE) divides all of it by ``n``.
    """
    s = np.asarray(scores, float)
    E = np.broadcast_to(np.asarray(E_scores, float), s.shape)
    n, n_out = s.shape
    u = unit_roundoff(dtype)
    g_k = gamma(n_out + 4, dtype)
    D = E.max(axis=1, keepdims=True)
    rows = np.arange(n)
    if loss == "softmax_cross_entropy":
        shifted = s - s.max(axis=1, keepdims=True)
        p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        onehot = np.zeros_like(p)
        onehot[rows, labels] = 1
        row = 2 * D[:, 0] + g_k * (2 * np.abs(s).max(axis=1) + 1)
        # exp(s_j - peak): the subtraction's rounding, u |s_j - peak|, is a relative error of
        # as much in p_j.
        grad = (p * np.expm1(2 * D) * (1 + g_k) + (g_k + u * np.abs(shifted)) * p + g_k * onehot) / n
    elif loss == "multiclass_hinge":
        margins = s - s[rows, labels][:, None] + 1
        E_m = E + E[rows, labels][:, None] + 2 * u * (np.abs(s) + np.abs(s[rows, labels])[:, None] + 1)
        row = (E_m + g_k * (np.abs(margins) + np.abs(s) + 1)).sum(axis=1)
        flips = (np.abs(margins) <= E_m) & (np.arange(n_out)[None, :] != labels[:, None])
        grad = flips.astype(float)
        grad[rows, labels] += flips.sum(axis=1)
        grad = (grad + g_k) / n
    elif loss == "binary_cross_entropy":
        t = np.asarray(targets, float)
        row = (2 * E + ELEMENTARY_ROUNDINGS * u * (2 * np.abs(s) + 1)).sum(axis=1) / n_out
        grad = (0.5 * E + ELEMENTARY_ROUNDINGS * u * (1 + np.abs(t))) / (n * n_out)
    elif loss == "mse":
        d = s - np.asarray(targets, float)
        E_d = E + u * np.abs(d)
        row = ((2 * np.abs(d) + E_d) * E_d + 3 * u * d * d).sum(axis=1) / n_out
        grad = (2 * E_d + 2 * u * 2 * np.abs(d)) / (n * n_out)
    elif loss == "huber":  # delta = 1 (the kernels' tests run the defaults)
        d = s - np.asarray(targets, float)
        E_d = E + u * np.abs(d)
        # 1-Lipschitz slope min(|d|, 1) for the value, 1 for the gradient; a few roundings each
        row = ((np.minimum(np.abs(d), 1.0) + E_d) * E_d + 3 * u * (d * d + np.abs(d))).sum(axis=1) / n_out
        grad = (E_d + 2 * u * np.minimum(np.abs(d), 1.0)) / (n * n_out)
    elif loss == "l1":
        d = s - np.asarray(targets, float)
        E_d = E + u * np.abs(d)
        row = (E_d + u * np.abs(d)).sum(axis=1) * (1 + 2 * u) / n_out
        # The sign may flip only where |d| is within its rounding of 0; else 1/count rounded
        grad = (2 * (np.abs(d) <= E_d) + 2 * u) / (n * n_out)
    else:
        raise ValueError(loss)
    # Results that underflow into the subnormals lose their relative accuracy: each of the
    # roundings may add up to one smallest subnormal.
    tiny = (n_out + 4) * float(np.finfo(dtype).smallest_subnormal)
    return row + tiny, grad + tiny


def mean_loss_bound(row_bound, row_loss):
    """Bound on the mean of the per-row losses, which the kernels sum in float64."""
    n = len(row_bound)
    return row_bound.mean() + gamma(n, np.float64) * (np.abs(row_loss) + row_bound).sum() / n


# --- The network ---------------------------------------------------------------------------

def _layers(model):
    """``(W, b, name, param, pieces)`` per layer, in float64."""
    kinds = {type(layer).__name__ for layer in model.layers} - {"Dense", "Maxout"}
    if kinds:  # their bounds are tests/runtime_bounds.py's (layer_norm_bound, ...)
        raise NotImplementedError(f"the forward-chain bound here covers Dense and Maxout layers "
                                  f"only, not {sorted(kinds)}")
    weights = model.get_weights()
    return [(weights[2 * i].astype(float), weights[2 * i + 1].astype(float), layer.activation,
             getattr(layer, "activation_param", None), getattr(layer, "pieces", 1))
            for i, layer in enumerate(model.layers)]


def forward_with_bound(model, X):
    """The exact forward pass of ``model`` on ``X`` (in float64, from the model's own
    weights and ``X`` rounded to the model's dtype) and, per layer, bounds on how far the
    model's own computation can be from it (:func:`dense_layer_bound`, layer after layer).
    The bound therefore scales with the sums of ``|a| |W|`` down the layer chain, not with
    the outputs, which may be near 0.

    Returns one dict per layer: ``a_in``, ``E_in`` (its input and that input's bound),
    ``z``, ``E_z`` (pre-activations, maxout pieces unmerged), ``a``, ``E`` (its output).
    """
    a = np.asarray(X, dtype=model.dtype).astype(float)
    E = np.zeros_like(a)
    steps = []
    for W, b, name, param, pieces in _layers(model):
        z, E_z, out, E_out = dense_layer_bound(a, E, W, b, name, param, pieces, model.dtype)
        steps.append(dict(a_in=a, E_in=E, z=z, E_z=E_z, a=out, E=E_out, W=W, name=name,
                          param=param, pieces=pieces))
        a, E = out, E_out
    return steps


def output_bound(model, X):
    """``(scores, bound)``: the exact raw scores and the bound on the model's error in them."""
    steps = forward_with_bound(model, X)
    return steps[-1]["a"], steps[-1]["E"]


def gradient_bound(model, X, y):
    """``(grads, bounds)``: the exact gradients of the mean loss (``[dW1, db1, ...]`` as
    :meth:`Sequential.get_gradients`) and bounds on how far the model's
    :meth:`compute_gradients` can be from them: the forward bounds carried into the loss
    gradient (:func:`loss_bound`) and back down the layers (:func:`dense_backward_bound`,
    :func:`maxout_backward_bound`), where a ReLU input or a maxout winner within rounding
    of the other side may route the gradient either way."""
    labels = np.asarray(y) if model.is_classifier and np.ndim(y) == 1 else None
    targets = None if labels is not None else np.asarray(y, float).reshape(len(X), -1)
    steps = forward_with_bound(model, X)
    scores, E_scores = steps[-1]["a"], steps[-1]["E"]
    import reference
    _, g = reference.LOSSES[model.loss](scores, labels if labels is not None else targets)
    _, E_g = loss_bound(model.loss, scores, E_scores, labels, targets, model.dtype)
    grads, bounds = [], []
    for i in range(len(steps) - 1, -1, -1):
        s = steps[i]
        if s["name"] == "maxout":
            _, _, (exact, bound), _, _ = maxout_backward_bound(
                s["a_in"], s["E_in"], s["W"], s["z"], s["E_z"], s["pieces"], g, E_g, model.dtype)
        else:
            _, _, (exact, bound) = dense_backward_bound(
                s["a_in"], s["E_in"], s["W"], s["z"], s["E_z"], s["E"], s["name"], s["param"],
                g, E_g, model.dtype)
        grads[:0], bounds[:0] = exact[:2], bound[:2]
        g, E_g = exact[2], bound[2]
    return grads, bounds


# --- Training trajectories -----------------------------------------------------------------

#: Relative tolerance for two float64 trainings that run the same arithmetic with only the
#: order of some sums changed (another compilation of the same loops, another BLAS call
#: shape, the rows of a batch split over MPI ranks): for the small test networks (inputs,
#: weights and activations of order 1, sums of at most ~50 terms) every step's products
#: are within gamma(50) ~ 5.6e-15 of their |a| |b| sums.  How a difference made at one
#: step grows over the later ones is not bounded a priori (it depends on the loss surface);
#: this allows a growth of ~200 over the few (<= 100) steps these tests take, and stays
#: 1e9 below what a real error (a row missed, a wrong average or weight) moves.
FLOAT64_TRAJECTORY_RTOL = 200 * gamma(50, np.float64)


def assert_trajectories_agree(got, want, what="values", dtype=np.float64):
    """``got`` and ``want`` (arrays of a training in ``dtype``) within the trajectory
    tolerance of the larger of their magnitude and 1 (weights and losses near 0 get the
    absolute tolerance of an order-1 value)."""
    rtol = FLOAT64_TRAJECTORY_RTOL if np.dtype(dtype) == np.float64 else FLOAT32_TRAJECTORY_RTOL
    want = np.asarray(want, float)
    assert_within(got, want, rtol * np.maximum(np.abs(want), 1.0), what)

#: The same for float32 trainings (the reasoning of FLOAT64_TRAJECTORY_RTOL with float32's
#: gamma(50) ~ 3e-6): 6e-4, for comparisons whose failure mode is an order-1 change (a
#: weight ignored, a row dropped or counted twice).
FLOAT32_TRAJECTORY_RTOL = 200 * gamma(50, np.float32)
