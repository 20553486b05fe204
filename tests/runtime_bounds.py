"""Rounding bounds for another runtime (ONNX Runtime, PyTorch) computing a fastmlp network.

The forward-chain model of :mod:`tolerances` holds for any runtime's matrix products and
bias adds (a ``k``-term dot product in any order, with or without FMA, is within
``gamma(k) sum |terms|``).  What differs is the elementary functions: fastmlp's kernels
call libm/LLVM's ``exp``/``tanh`` (``tolerances.ELEMENTARY_ROUNDINGS``), while ONNX
Runtime's CPU kernels use MLAS's (float32) and Eigen's (float64) vectorised polynomial and
rational approximations, and PyTorch SLEEF's (1-ulp variants) or its own.  Those are not
correctly rounded; their accuracy is a property of each library, not derivable from the
computation, so it is an assumption here: :data:`FOREIGN_ACTIVATION_ROUNDINGS` roundings
of ``u (|f(z)| + 1 + |alpha|)`` per activation (the same form as fastmlp's own), and
``test_*_activation_accuracy_assumption`` in test_onnx_export.py and test_torch_interop.py
checks that the runtimes installed meet it, on a dense grid, against long-double
references, so that a runtime that does not shows up there and not as an exporter bug.
"""

import numpy as np

from tolerances import ELEMENTARY_ROUNDINGS, dense_layer_bound, gamma, unit_roundoff

#: Roundings (of ``u`` times ``|f(z)| + 1 + |alpha|``) allowed for one activation, or one
#: exp inside softmax, in a foreign runtime.  The approximations are accurate to a few ulps;
#: this is not derived but assumed, with headroom: a dense scan with ONNX Runtime 1.32 and
#: PyTorch 2.13 on AVX-512 found at most 4.5 (Eigen's float64 tanh), and the accuracy tests
#: check the assumption on whatever CPU and versions the suite runs with.
FOREIGN_ACTIVATION_ROUNDINGS = 16

#: Activations evaluated by a rounded elementary function (the others are exact, or one
#: multiply, in every runtime).
_TRANSCENDENTAL = ("sigmoid", "tanh", "elu", "gelu", "silu")

#: Activations of the form ``z s(z)`` with ``0 <= s <= 1`` (gelu: ``s = Phi``, silu: ``s =
#: sigmoid``), which every runtime here computes as ``z`` times a computed ``s``.
_GATED = ("gelu", "silu")


def gated_cancellation(z, roundings, dtype):
    """The part of a gated activation's error not proportional to ``|f(z)| + 1``: ``s`` is
    computed within ``roundings`` of ``u (|s| + 1) <= 2 u`` absolute (for gelu ``(1 +
    erf(t)) / 2`` cancels for ``z < 0``: ``erf`` is accurate relative to ``|erf| ~ 1``, not
    to ``1 + erf``), and ``z`` times that is ``2 roundings u |z|``; the rounding of ``z /
    sqrt 2`` moves ``erf`` by at most ``|t erf'(t)| 2 u <= 0.5 u``, within it."""
    return 2 * roundings * unit_roundoff(dtype) * np.abs(z)


def layer_norm_bound(a, E, gain, bias, eps, dtype):
    """One layer norm ``gain (a - mu) / sqrt(var + eps) + bias`` (biased variance, per row)
    whose input ``a`` (exact) is known to the computation only within ``E``, computed by
    any of the usual algorithms in ``dtype`` or better (fastmlp's two passes accumulating
    in float64; ONNX Runtime's and PyTorch's one-pass ``E[x^2] - mu^2`` or two-pass forms;
    the spelled-out ReduceMean/Sub/Mul/Sqrt/Div graph).  Returns ``(out, E_out)``.

    Propagation: ``x -> xhat`` is the centring (an orthogonal projection, 1-Lipschitz in
    the 2-norm) then ``c -> c / sqrt(|c|^2 / n + eps)``, whose Jacobian ``r (I - r^2 c c^T
    / n)`` has norm ``r = 1 / sqrt(|c|^2 / n + eps)``; along the segment to the perturbed
    input ``|c| >= |c_exact| - |E|``, so an input error moves each ``xhat_j`` by at most
    ``r_hi |E|_2`` with ``r_hi = 1 / sqrt(max(|c| - |E|, 0)^2 / n + eps)``.

    Rounding, at the perturbed input ``|x| <= |a| + E`` (``M1``, ``M2``: the row means of
    ``|a| + E`` and its square): the mean is within ``gamma(n + 1) M1``; the variance,
    two-pass or one-pass, within ``3 gamma(n + 4) (M2 + M1^2)`` (the sum of squares
    ``gamma(n + 2) M2``, the squared mean ``2 |mu| gamma(n + 1) M1 + u mu^2 <= (gamma(n +
    1) + u) (M2 + M1^2)``, the subtraction ``u var``); adding eps (and eps's own rounding to
    the dtype, or to a 32-bit attribute) ``u (M2 + eps)``.  That is a relative error
    ``dv / v_lo`` of ``v = var + eps >= v_lo``, so ``rstd`` is within ``dv / v_lo + 3 u``
    relative (the square root and the reciprocal; needs ``dv / v_lo <= 1/2``).  Then
    ``(x - mu) rstd`` is within ``(|xhat| + r_hi |E|) (rel + 2 u) + r_hi dmu (1 + rel)``,
    and ``gain xhat + bias`` adds ``3 u (|gain xhat| + |bias|)``.
    """
    a, E = np.asarray(a, float), np.asarray(E, float)
    gain, bias = np.asarray(gain, float), np.asarray(bias, float)
    n = a.shape[1]
    u = unit_roundoff(dtype)
    mu = a.mean(axis=1, keepdims=True)
    c = a - mu
    var = (c * c).mean(axis=1, keepdims=True)
    xhat = c / np.sqrt(var + eps)
    out = gain * xhat + bias
    norm_c = np.sqrt((c * c).sum(axis=1, keepdims=True))
    norm_E = np.sqrt((E * E).sum(axis=1, keepdims=True))
    v_lo = np.maximum(norm_c - norm_E, 0.0) ** 2 / n + eps
    r_hi = 1 / np.sqrt(v_lo)
    xhat_hi = np.abs(xhat) + r_hi * norm_E
    M1 = (np.abs(a) + E).mean(axis=1, keepdims=True)
    M2 = ((np.abs(a) + E) ** 2).mean(axis=1, keepdims=True)
    d_mu = gamma(n + 1, dtype) * M1
    d_v = 3 * gamma(n + 4, dtype) * (M2 + M1 ** 2) + u * (M2 + eps)
    assert (d_v / v_lo <= 0.5).all(), "the layer norm bound needs the variance well above its error"
    rel = d_v / v_lo + 3 * u
    E_xhat = xhat_hi * (rel + 2 * u) + r_hi * d_mu * (1 + rel)
    E_out = (np.abs(gain) * (r_hi * norm_E + E_xhat) + 3 * u * (np.abs(gain) * xhat_hi + np.abs(bias))
             + 4 * float(np.finfo(dtype).smallest_subnormal))
    return out, E_out


def chain_bound(model, X, roundings):
    """``(scores, bound)``: the exact scores of ``model`` on ``X`` (from the model's own
    parameters and ``X`` rounded to its dtype, in float64) and the bound on a runtime's
    computed scores, layer by layer: :func:`tolerances.dense_layer_bound` for dense and
    maxout layers with ``roundings`` for each transcendental activation (fastmlp's own:
    ``ELEMENTARY_ROUNDINGS``), plus :func:`gated_cancellation` for gelu and silu;
    :func:`layer_norm_bound`; dropout is the identity at inference, exactly."""
    from fastmlp import Dropout, LayerNorm

    u = unit_roundoff(model.dtype)
    a = np.asarray(X, dtype=model.dtype).astype(float)
    E = np.zeros_like(a)
    for layer in model.layers:
        if isinstance(layer, Dropout):
            continue
        if isinstance(layer, LayerNorm):
            a, E = layer_norm_bound(a, E, layer.gain, layer.bias, layer.eps, model.dtype)
            continue
        name, param = layer.activation, layer.activation_param
        z, _, a, E = dense_layer_bound(a, E, layer.W.astype(float), layer.b.astype(float), name,
                                       param, layer.pieces, model.dtype)
        if name in _TRANSCENDENTAL:
            # dense_layer_bound charged ELEMENTARY_ROUNDINGS for f itself; charge the rest.
            E = E + (roundings - ELEMENTARY_ROUNDINGS) * u * (np.abs(a) + 1 + abs(param or 0.0))
        if name in _GATED:
            E = E + gated_cancellation(z, roundings, model.dtype)
    return a, E


def foreign_forward_bound(model, X, roundings=FOREIGN_ACTIVATION_ROUNDINGS):
    """``(scores, bound)`` for a foreign runtime (:func:`chain_bound` with ``roundings`` for
    each transcendental activation instead of fastmlp's ``ELEMENTARY_ROUNDINGS``)."""
    return chain_bound(model, X, roundings)


def agreement_bound(model, X):
    """``(exact scores, E_fastmlp, E_foreign)``: ``|fastmlp - foreign| <= E_fastmlp +
    E_foreign``, both being within their bound of the exact scores."""
    scores, E_fastmlp = chain_bound(model, X, ELEMENTARY_ROUNDINGS)
    _, E_foreign = foreign_forward_bound(model, X)
    return scores, E_fastmlp, E_foreign


def softmax_bound(scores, E_scores, roundings, dtype):
    """Bound on a computed softmax of scores known within ``E_scores``, against the exact
    softmax of the exact ``scores``: ``softmax(s + d) / softmax(s)`` lies in
    ``[e^-2D, e^2D]`` with ``D = max |d|`` of the row; then the exps (``roundings`` each,
    relative), their ``n_out``-term sum, the division, and the subtraction of the row's
    maximum (``u |s_j - max|``, a relative error of as much in ``exp``)."""
    s = np.asarray(scores, float)
    D = np.asarray(E_scores, float).max(axis=1, keepdims=True)
    shifted = s - s.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    u = unit_roundoff(dtype)
    r = gamma(s.shape[1] + roundings + 1, dtype) + u * np.abs(shifted)
    return p, p * np.expm1(2 * D) + r * p * np.exp(2 * D) + float(np.finfo(dtype).smallest_subnormal)


def sigmoid_bound(scores, E_scores, roundings, dtype):
    """Bound on a computed sigmoid of scores known within ``E_scores``: sigmoid is
    1/4-Lipschitz, and its own evaluation adds ``roundings`` of ``u (|p| + 1)``."""
    s = np.asarray(scores, float)
    p = 1 / (1 + np.exp(-s))
    return p, 0.25 * np.asarray(E_scores, float) + roundings * unit_roundoff(dtype) * (p + 1)


def unambiguous_argmax(scores, E_total):
    """Rows whose largest exact score beats every other by more than twice the largest
    bound of the row: any two computations within ``E_total`` pick the same class there."""
    s = np.sort(np.asarray(scores, float), axis=1)
    return (s[:, -1] - s[:, -2]) > 2 * np.asarray(E_total, float).max(axis=1)
