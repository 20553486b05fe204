"""Backpropagation checked against central finite differences, in float64."""

import numpy as np

from fastmlp.sequential import PREDICT_CHUNK_ROWS, Sequential


def gradcheck(model, X, y, eps=1e-6, max_elements=None, seed=0):
    """Compare the model's backprop gradients with central finite differences.

    A float64 twin of ``model`` (same layers, loss and weights) computes the gradient of
    the mean data loss on the whole of ``(X, y)`` by backpropagation, then each checked
    parameter ``p`` is moved to ``p +/- eps`` and the loss recomputed:
    ``numeric = (L(p + eps) - L(p - eps)) / (2 eps)``.  ``model`` itself is not changed.
    :class:`~fastmlp.Dropout` layers stay active with the mask held fixed: the one the
    model's next training step would draw on these rows (masks are hashed from the seed,
    the step, the row and the unit, so every loss evaluation sees the same one).

    Parameters
    ----------
    model : Sequential
    X, y : array-like
        A batch, as for :meth:`Sequential.fit`.  Keep it small: every checked element
        costs two forward passes.
    eps : float, default 1e-6
    max_elements : int or None
        Check at most this many randomly chosen elements per parameter array (all if None).
    seed : int
        Chooses those elements.

    Returns
    -------
    list of float
        Per parameter array, in :meth:`Sequential.get_weights` order ``[W1, b1, ...]``, the
        relative error ``max |analytic - numeric| / max(max |analytic|, max |numeric|)``
        over the checked elements (0 where both are all zero).  Below about 1e-6 means the
        gradients agree; per element, rounding in the differences alone reaches ~1e-6 for
        entries 1e4 times smaller than the loss, hence one scale per array.
    """
    twin = Sequential([layer.unbuilt_copy() for layer in model.layers], loss=model.loss_object,
                      dtype=np.float64, seed=0)
    twin.set_weights(model.get_weights())
    # Dropout masks are a function of (seed, step, stream, layer, row, unit): with the
    # model's key, the twin draws the mask of the model's next training step, and holds it
    # fixed through every loss evaluation below.
    twin.dropout_seed, twin.dropout_stream = model.dropout_seed, model.dropout_stream
    twin.optimizer.step_count = model.optimizer.step_count
    rows = twin.rows(X, y)
    if twin.has_dropout and rows.n > PREDICT_CHUNK_ROWS:
        raise ValueError(f"gradcheck of a model with dropout takes at most {PREDICT_CHUNK_ROWS} "
                         f"rows (one chunk, so that every row keeps its mask), got {rows.n}")
    twin.compute_gradients(X, y)
    analytic = twin.flat_gradients.copy()

    probe = twin.inference_workspace(rows.n, training_masks=True)

    def loss_at(index, value):
        saved = twin.params[index]
        twin.params[index] = value
        loss, _ = twin.evaluate_rows(rows, probe)
        twin.params[index] = saved
        return loss

    rng = np.random.default_rng(seed)
    errors = []
    for start, size in twin.parameter_spans():
        indices = np.arange(start, start + size)
        if max_elements is not None and size > max_elements:
            indices = rng.choice(indices, size=max_elements, replace=False)
        numeric = np.empty(len(indices))
        for j, i in enumerate(indices):
            p = twin.params[i]
            numeric[j] = (loss_at(i, p + eps) - loss_at(i, p - eps)) / (2 * eps)
        scale = max(np.abs(analytic[indices]).max(), np.abs(numeric).max())
        errors.append(float(np.abs(analytic[indices] - numeric).max() / scale) if scale > 0 else 0.0)
    return errors
