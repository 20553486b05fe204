"""Turning user input into the arrays the kernels expect, or a clear error.

Every check runs before any state changes.  Arrays that already have the right dtype and
layout pass through without a copy, and the checks themselves allocate nothing, so a
training loop that feeds well-formed batches stays allocation-free.
"""

import math
import numbers

import numpy as np

from fastmlp.kernels.checks import (count_nonfinite, count_not_binary, count_not_integral,
                                    first_label_out_of_range)


def _numeric_array(values, name):
    try:
        arr = np.asarray(values)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"{name} could not be read as an array: {exc}") from None
    if arr.dtype.kind in "USV":
        raise TypeError(f"{name} holds {arr.dtype} values (text or raw bytes); fastmlp needs numbers")
    if arr.dtype.kind == "c":
        raise TypeError(f"{name} is complex ({arr.dtype}); fastmlp needs real numbers")
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            bad = next((v for v in arr.flat if not isinstance(v, (numbers.Real, np.number))), None)
            raise TypeError(f"{name} is an object array with a non-numeric element {bad!r}; "
                            "fastmlp needs numbers") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} has unsupported dtype {arr.dtype}")
    return arr


def _check_finite(arr, name, dtype):
    bad = count_nonfinite(arr)
    if bad:
        after = f" (after conversion to {np.dtype(dtype).name})" if dtype is not None else ""
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s){after}")


def as_features(X, n_features, dtype, name="X"):
    """``X`` as a C-contiguous ``(n_samples, n_features)`` array of ``dtype``, all finite."""
    # A plain array already as the kernels take it skips the conversion (and the errstate
    # around it, nothing can overflow): a one-row predict spends microseconds here.
    ready = type(X) is np.ndarray and X.dtype == dtype and X.flags.c_contiguous
    arr = X if ready else _numeric_array(X, name)
    if arr.ndim != 2:
        hint = " (use X.reshape(-1, 1) for a single feature)" if arr.ndim == 1 else ""
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {arr.shape}{hint}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has no rows")
    if arr.shape[1] != n_features:
        raise ValueError(f"{name} has {arr.shape[1]} features per row, but the first layer "
                         f"expects {n_features}")
    if not ready:
        with np.errstate(over="ignore"):  # an overflow becomes Inf, reported just below
            arr = np.ascontiguousarray(arr, dtype=dtype)
    _check_finite(arr, name, dtype)
    return arr


def as_labels(y, n_samples, n_classes, name="y"):
    """Class labels as a contiguous int64 vector of length ``n_samples``, in ``[0, n_classes)``."""
    arr = _numeric_array(y, name)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector of class indices, got shape {arr.shape}"
                         " (one-hot rows are not accepted: pass y.argmax(axis=1))")
    if arr.shape[0] != n_samples:
        raise ValueError(f"{name} has {arr.shape[0]} labels but X has {n_samples} rows")
    if arr.dtype.kind == "f":
        arr = np.ascontiguousarray(arr)
        _check_finite(arr, name, None)
        if count_not_integral(arr):
            raise ValueError(f"{name} must hold integer class labels; it has fractional values")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    bad = first_label_out_of_range(arr, n_classes)
    if bad >= 0:
        raise ValueError(f"{name}[{bad}] = {arr[bad]} is not a class index in [0, {n_classes}) "
                         f"(the last layer has {n_classes} outputs)")
    return arr


def as_targets(y, n_samples, n_outputs, dtype, binary, name="y"):
    """Targets as a C-contiguous ``(n_samples, n_outputs)`` array of ``dtype``.

    A 1-D ``y`` is accepted when there is one output.  With ``binary`` every value must
    be 0 or 1.
    """
    arr = _numeric_array(y, name)
    if arr.ndim == 1 and n_outputs == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != n_outputs:
        raise ValueError(f"{name} must have shape (n_samples, {n_outputs})"
                         f"{' or (n_samples,)' if n_outputs == 1 else ''} to match the last "
                         f"layer's {n_outputs} outputs, got shape {arr.shape}")
    if arr.shape[0] != n_samples:
        raise ValueError(f"{name} has {arr.shape[0]} rows but X has {n_samples} rows")
    with np.errstate(over="ignore"):
        arr = np.ascontiguousarray(arr, dtype=dtype)
    _check_finite(arr, name, dtype)
    if binary and count_not_binary(arr):
        raise ValueError(f"{name} must hold 0/1 targets for binary_cross_entropy; "
                         f"it has {count_not_binary(arr)} other value(s)")
    return arr


def check_real(value, name, low, high=math.inf, low_inclusive=True, high_inclusive=False):
    """``value`` as a float in the given interval, or a ValueError that names it (NaN, Inf
    and bools are refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    above = value >= low if low_inclusive else value > low
    below = value <= high if high_inclusive else value < high
    if not (above and below):
        lo = "[" if low_inclusive else "("
        hi = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {value!r}")
    return float(value)


def check_positive_int(value, name):
    """``value`` as an int >= 1, or a clear error (bools are rejected)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def sample_weight_per_row(sample_weight, n_samples):
    """``sample_weight`` as a float64 vector of ``n_samples`` finite, non-negative weights."""
    arr = _numeric_array(sample_weight, "sample_weight")
    if arr.ndim != 1 or arr.shape[0] != n_samples:
        raise ValueError(f"sample_weight must have shape ({n_samples},), one weight per row of X, "
                         f"got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    _check_finite(arr, "sample_weight", None)
    negative = np.flatnonzero(arr < 0)
    if negative.size:
        raise ValueError(f"sample_weight[{negative[0]}] = {arr[negative[0]]} is negative; "
                         "weights must be >= 0")
    return arr


def class_weight_per_row(class_weight, classes, n_classes):
    """Each row's weight from its class: ``class_weight[classes[i]]``, float64.

    Parameters
    ----------
    class_weight : dict or "balanced"
        ``{class index: weight}``, classes left out weighing 1; or ``"balanced"``, which
        gives class ``c`` the weight ``n_samples / (n_classes * count_c)``.
    classes : ndarray of int64, shape (n_samples,)
        Each row's class, already checked to lie in ``[0, n_classes)``.
    n_classes : int
    """
    counts = np.bincount(classes, minlength=n_classes)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be a dict or 'balanced', got {class_weight!r}")
        # Classes absent from y get no rows, so their weight is never used.
        table = classes.shape[0] / (n_classes * np.maximum(counts, 1))
        return table[classes]
    if not isinstance(class_weight, dict):
        raise ValueError(f"class_weight must be a dict {{class: weight}} or 'balanced', "
                         f"got {type(class_weight).__name__}")
    table = np.ones(n_classes)
    for key, weight in class_weight.items():
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, numbers.Integral) \
                or not 0 <= key < n_classes:
            raise ValueError(f"class_weight has the key {key!r}, not a class index in "
                             f"[0, {n_classes})")
        if isinstance(weight, (bool, np.bool_)) or not isinstance(weight, numbers.Real) \
                or not np.isfinite(weight) or weight < 0:
            raise ValueError(f"class_weight[{key}] = {weight!r}; weights must be finite and >= 0")
        table[key] = weight
    return table[classes]
