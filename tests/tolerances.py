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
the exact one, and two computations of it (two kernels) within twice that.
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


# --- The network: forward and backward error bounds ------------------------------------

#: Lipschitz constant of each activation, ``|f(x) - f(y)| <= L |x - y|``.
def _lipschitz(name, param):
    return {"identity": 1.0, "sigmoid": 0.25, "tanh": 1.0, "relu": 1.0,
            "leaky_relu": max(1.0, abs(param or 0.0)), "elu": max(1.0, abs(param or 0.0)),
            "maxout": 1.0}[name]


def _activation_roundings(name):
    """Roundings in evaluating ``f``: none for max/select, one multiply for leaky ReLU."""
    return {"identity": 0, "relu": 0, "maxout": 0, "leaky_relu": 1}.get(name, ELEMENTARY_ROUNDINGS)


def _layers(model):
    """``(W, b, name, param, pieces)`` per layer, in float64."""
    out = []
    for layer, (W, b) in zip(model.layers, zip(*[iter(model.get_weights())] * 2)):
        name = layer.activation
        param = getattr(layer, "activation_param", None)
        out.append((W.astype(float), b.astype(float), name, param, getattr(layer, "pieces", 1)))
    return out


def forward_with_bound(model, X):
    """The exact forward pass of ``model`` on ``X`` (in float64, from the model's own
    weights and ``X`` rounded to the model's dtype) and, per layer, bounds on how far the
    model's own computation can be from it.

    Per layer, with the input ``a`` carrying error ``E`` from the layers below:
    ``|z_computed - z| <= gamma(k + 1) (|a| + E) @ |W| + |b|) + E @ |W|`` (the product and
    the bias add, in any order), then ``L_f`` times that through the activation plus its
    own roundings.  Maxout's max is exact and 1-Lipschitz.  The bound therefore scales with
    the sums of ``|a| |W|`` down the layer chain, not with the outputs, which may be near 0.

    Returns a list of dicts per layer with ``a_in``, ``E_in``, ``z``, ``E_z`` (pieces
    unmerged), ``a`` and ``E`` (the layer's output and its bound).
    """
    dtype = model.dtype
    u = unit_roundoff(dtype)
    a = np.asarray(X, dtype=dtype).astype(float)
    E = np.zeros_like(a)
    steps = []
    for W, b, name, param, pieces in _layers(model):
        k = W.shape[0]
        z = a @ W + b
        E_z = gamma(k + 1, dtype) * ((np.abs(a) + E) @ np.abs(W) + np.abs(b)) + E @ np.abs(W)
        if name == "maxout":
            n_out = W.shape[1] // pieces
            out = z.reshape(len(z), pieces, n_out).max(axis=1)
            E_out = E_z.reshape(len(z), pieces, n_out).max(axis=1)
        else:
            import reference
            out = reference.activation(z, name, param)
            E_out = (_lipschitz(name, param) * E_z
                     + _activation_roundings(name) * u * (np.abs(out) + (np.abs(param or 0) + 1)
                                                          * (name in ("sigmoid", "tanh", "elu"))))
        steps.append(dict(a_in=a, E_in=E, z=z, E_z=E_z, a=out, E=E_out, W=W, name=name,
                          param=param, pieces=pieces))
        a, E = out, E_out
    return steps


def output_bound(model, X):
    """``(scores, bound)``: the exact raw scores and the bound on the model's error in them."""
    steps = forward_with_bound(model, X)
    return steps[-1]["a"], steps[-1]["E"]


# f' as computed from the cached output, and what bounds its error: the jump at a kink
# (where |z| is within its error bound of 0, the two computations may take either side)
# and the slope of f' as a function of the output it is computed from.
_DERIVATIVE = {
    # name: (max f', jump at 0, |d f' / d a|)
    "identity": (1.0, 0.0, 0.0),
    "relu": (1.0, 1.0, 0.0),
    "tanh": (1.0, 0.0, 2.0),      # 1 - a^2
    "sigmoid": (0.25, 0.0, 1.0),  # a (1 - a)
}


def gradient_bound(model, X, y):
    """``(grads, bounds)`` for softmax cross-entropy: the exact gradients of the mean loss
    (``[dW1, db1, ...]`` as :meth:`Sequential.get_gradients`) and bounds on how far the
    model's :meth:`compute_gradients` can be from them.

    The forward bounds of :func:`forward_with_bound` carry into the loss gradient
    (``softmax(z + d) / softmax(z)`` lies in ``[e^-2|d|, e^2|d|]``) and then backwards:
    each product adds ``gamma(k)`` times its ``|a| @ |b|``, each error already present is
    multiplied through ``|W|``, and a derivative's error is its slope times the output's
    error, plus the whole jump wherever a ReLU input or a maxout winner is within rounding
    of the other side (the two computations may then route the gradient differently).
    """
    if model.loss != "softmax_cross_entropy":
        raise NotImplementedError(model.loss)
    dtype = model.dtype
    u = unit_roundoff(dtype)
    steps = forward_with_bound(model, X)
    n = len(X)
    scores, E_scores = steps[-1]["a"], steps[-1]["E"]
    shifted = scores - scores.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    onehot = np.zeros_like(p)
    onehot[np.arange(n), y] = 1
    D = E_scores.max(axis=1, keepdims=True)
    g = (p - onehot) / n
    # exp of the shifted scores, their sum over the classes, one division, the subtraction
    # and the division by n: gamma(n_out + 4) relative to p and the one-hot term.
    E_g = (p * np.expm1(2 * D) + gamma(p.shape[1] + 4, dtype) * (p + onehot)) / n

    grads, bounds = [], []
    for i in range(len(steps) - 1, -1, -1):
        s = steps[i]
        name, W = s["name"], s["W"]
        if name == "maxout":
            pieces = s["pieces"]
            n_out = W.shape[1] // pieces
            z = s["z"].reshape(n, pieces, n_out)
            E_z = s["E_z"].reshape(n, pieces, n_out)
            winner = z.argmax(axis=1)
            top = z.max(axis=1, keepdims=True)
            E_top = np.take_along_axis(E_z, winner[:, None, :], axis=1)
            # pieces that may win in one computation or the other
            maybe = (top - z) <= (E_top + E_z)
            is_winner = np.zeros_like(z, dtype=bool)
            np.put_along_axis(is_winner, winner[:, None, :], True, axis=1)
            ambiguous = maybe.sum(axis=1, keepdims=True) > 1
            d = np.where(is_winner, g[:, None, :], 0.0).reshape(n, -1)
            E_d = np.where(ambiguous & maybe, np.abs(g)[:, None, :] + E_g[:, None, :],
                           np.where(is_winner, E_g[:, None, :], 0.0)).reshape(n, -1)
        else:
            if name not in _DERIVATIVE:
                raise NotImplementedError(name)
            f_max, jump, slope = _DERIVATIVE[name]
            import reference
            fprime = reference.activation_derivative(s["z"], name, s["param"])
            kink = np.abs(s["z"]) <= s["E_z"]
            E_fprime = slope * s["E"] + jump * kink + ELEMENTARY_ROUNDINGS * u * f_max * (slope > 0)
            d = g * fprime
            E_d = E_g * f_max + (np.abs(g) + E_g) * E_fprime + u * (np.abs(g) + E_g) * f_max
        a, E_a = s["a_in"], s["E_in"]
        abs_a, abs_d = np.abs(a) + E_a, np.abs(d) + E_d
        grads[:0] = [a.T @ d, d.sum(axis=0)]
        bounds[:0] = [gamma(n, dtype) * (abs_a.T @ abs_d) + E_a.T @ abs_d + np.abs(a).T @ E_d,
                      gamma(n, dtype) * abs_d.sum(axis=0) + E_d.sum(axis=0)]
        if i > 0:
            g = d @ W.T
            E_g = gamma(W.shape[1], dtype) * (abs_d @ np.abs(W).T) + E_d @ np.abs(W).T
    return grads, bounds
