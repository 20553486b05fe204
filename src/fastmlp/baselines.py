"""Baselines to compare gradient descent against."""

import numpy as np

from fastmlp._validation import check_positive_int
from fastmlp.layers import Dense
from fastmlp.sequential import Sequential


def random_search(X, y, n_classes, trials=1000, scale=1e-4, loss="softmax_cross_entropy", seed=None):
    """The lecture's "really bad idea": guess linear classifiers at random, keep the best.

    Each trial draws ``W`` of shape ``(n_features, n_classes)`` and ``b`` with entries from
    ``N(0, scale**2)``, evaluates the mean loss on ``(X, y)`` and keeps the lowest.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
        Integer class labels.
    n_classes : int
    trials : int, default 1000
    scale : float, default 1e-4
    loss : {"softmax_cross_entropy", "multiclass_hinge"}
    seed : int or None

    Returns
    -------
    model : Sequential
        A single ``Dense(n_features, n_classes)`` holding the best weights found.
    best_loss : float
    """
    trials = check_positive_int(trials, "trials")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    model = Sequential([Dense(X.shape[1], n_classes)], loss=loss, seed=seed)
    rng = np.random.default_rng(seed)
    best_loss, best = np.inf, None
    for _ in range(trials):
        W = rng.standard_normal((X.shape[1], n_classes)) * scale
        b = rng.standard_normal(n_classes) * scale
        model.set_weights([W, b])
        trial_loss = model.evaluate(X, y)["loss"]
        if trial_loss < best_loss:
            best_loss, best = trial_loss, [W, b]
    model.set_weights(best)
    return model, best_loss
