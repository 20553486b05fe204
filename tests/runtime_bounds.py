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

import tolerances
from tolerances import ELEMENTARY_ROUNDINGS, dense_layer_bound, gamma, unit_roundoff

#: Roundings (of ``u`` times ``|f(z)| + 1 + |alpha|``) allowed for one activation, or one
#: exp inside softmax, in a foreign runtime.  The approximations are accurate to a few ulps;
#: this is not derived but assumed, with headroom: a dense scan with ONNX Runtime 1.32 and
#: PyTorch 2.13 on AVX-512 found at most 4.5 (Eigen's float64 tanh), and the accuracy tests
#: check the assumption on whatever CPU and versions the suite runs with.
FOREIGN_ACTIVATION_ROUNDINGS = 16

#: Activations evaluated by a rounded elementary function (the others are exact, or one
#: multiply, in every runtime).
_TRANSCENDENTAL = ("sigmoid", "tanh", "elu")


def foreign_forward_bound(model, X, roundings=FOREIGN_ACTIVATION_ROUNDINGS):
    """``(scores, bound)``: the exact scores of ``model`` on ``X`` (rounded to the model's
    dtype) and the bound on a foreign runtime's computed scores, layer by layer as
    :func:`tolerances.forward_with_bound`, with ``roundings`` for each transcendental
    activation instead of fastmlp's ``ELEMENTARY_ROUNDINGS``."""
    u = unit_roundoff(model.dtype)
    a = np.asarray(X, dtype=model.dtype).astype(float)
    E = np.zeros_like(a)
    for W, b, name, param, pieces in tolerances._layers(model):
        _, _, a, E = dense_layer_bound(a, E, W, b, name, param, pieces, model.dtype)
        if name in _TRANSCENDENTAL:
            # dense_layer_bound charged ELEMENTARY_ROUNDINGS for f itself; charge the rest.
            E = E + (roundings - ELEMENTARY_ROUNDINGS) * u * (np.abs(a) + 1 + abs(param or 0.0))
    return a, E


def agreement_bound(model, X):
    """``(exact scores, E_fastmlp, E_foreign)``: ``|fastmlp - foreign| <= E_fastmlp +
    E_foreign``, both being within their bound of the exact scores."""
    scores, E_fastmlp = tolerances.output_bound(model, X)
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
