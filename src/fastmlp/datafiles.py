"""Reading training data from files for the command line: CSV, ``.npy`` pairs, ``.npz``.

Every problem with a file becomes a :class:`DataFileError` whose message names the file
and, where it can, the line and column: the command line prints it and exits non-zero.
"""

import csv
import os
import zipfile

import numpy as np


class DataFileError(ValueError):
    """A data file that cannot be read as numbers (missing, malformed, non-numeric, ...)."""


def load_data(path, label=None, n_features=None):
    """Features and (when the file has them) labels from ``path``.

    Parameters
    ----------
    path : str
        ``file.csv`` (a header row, then one sample per row), ``file.npz`` (arrays ``X``
        and, optionally, ``y``), ``X.npy:y.npy`` (features and labels), or ``X.npy``.
    label : str or None
        CSV only: the label column, by header name or by 0-based position (negative counts
        from the end); default: the last column.
    n_features : int or None
        The model's input width, when predicting: a CSV with exactly this many columns
        (and no ``label`` asked for) is all features, so the training file (with its label
        column) and an unlabelled file both work.

    Returns
    -------
    X : ndarray of float64, shape (n_samples, n_features)
        From a ``.npy`` file of floats: a read-only ``numpy.memmap`` of it (float32 or
        float64, as stored), so that a file larger than memory can be trained on.
    y : ndarray or None
        ``None`` when the file has no labels.
    """
    if ":" in path and not os.path.exists(path):
        features, labels = path.split(":", 1)
        return _read_npy(features, 2), _read_npy(labels, None)
    _must_exist(path)
    lower = path.lower()
    if lower.endswith(".npz"):
        return _read_npz(path)
    if lower.endswith(".npy"):
        return _read_npy(path, 2), None
    header, values = _read_csv(path)
    if label is None and n_features is not None and len(header) == n_features:
        return values, None
    column = _label_index(header, label, path)
    features = np.delete(values, column, axis=1)
    if features.shape[1] == 0:
        raise DataFileError(f"{path}: no feature columns besides the label")
    return features, values[:, column]


def _must_exist(path):
    if not os.path.isfile(path):
        raise DataFileError(f"{path}: no such file")


def _read_npy(path, ndim):
    _must_exist(path)
    try:
        # Mapped, not read: fit, evaluate and predict stream a float memmap batch by batch.
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFileError(f"{path}: not a readable .npy file ({exc})") from None
    return _numeric(arr, path, ndim)


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            if "X" not in names:
                raise DataFileError(f"{path}: no array named 'X' (it has: {', '.join(sorted(names)) or 'none'})")
            X = _numeric(archive["X"], f"{path}[X]", 2)
            y = _numeric(archive["y"], f"{path}[y]", None) if "y" in names else None
            return X, y
    except DataFileError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFileError(f"{path}: not a readable .npz file ({exc})") from None


def _numeric(arr, where, ndim):
    if arr.dtype.kind not in "biuf":
        raise DataFileError(f"{where}: holds {arr.dtype} values, not numbers")
    if ndim is not None and arr.ndim != ndim:
        raise DataFileError(f"{where}: expected a {ndim}-D array, got shape {arr.shape}")
    return arr.astype(np.float64) if arr.dtype.kind != "f" else arr


def _label_index(header, label, path):
    if label is None:
        return len(header) - 1
    if label in header:
        return header.index(label)
    try:
        index = int(label)
    except ValueError:
        raise DataFileError(f"{path}: no column named {label!r} (columns: {', '.join(header)})") from None
    if not -len(header) <= index < len(header):
        raise DataFileError(f"{path}: column {index} is out of range for {len(header)} columns")
    return index % len(header)


def _read_csv(path):
    try:
        with open(path, newline="") as f:
            rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except UnicodeDecodeError:
        raise DataFileError(f"{path}: not a text CSV file") from None
    except csv.Error as exc:
        raise DataFileError(f"{path}: malformed CSV ({exc})") from None
    if not rows:
        raise DataFileError(f"{path}: empty file")
    header = [cell.strip() for cell in rows[0]]
    if len(rows) < 2:
        raise DataFileError(f"{path}: a header but no data rows")
    values = np.empty((len(rows) - 1, len(header)))
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataFileError(f"{path}, line {r}: {len(row)} cells, the header has {len(header)}")
        for c, cell in enumerate(row):
            try:
                values[r - 2, c] = float(cell)
            except ValueError:
                raise DataFileError(f"{path}, line {r}, column {header[c]!r}: {cell!r} is not a number") from None
    return header, values
