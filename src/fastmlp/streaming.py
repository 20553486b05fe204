"""Inputs larger than memory: memory-mapped arrays, checked as a stream, and chunk shuffles.

A float array that does not already have the model's dtype and C layout (a
``numpy.memmap`` of a ``.npy`` file, an F-ordered or float64 array for a float32 model) is
not converted as a whole: ``fit`` gathers each batch's rows, and ``evaluate``/``predict``
each chunk's rows, converting them element by element inside the compiled loop
(:mod:`fastmlp.kernels.gather`, and ``train_epoch``'s own gather).  Before that, one
sequential pass over the array, :data:`CHECK_CHUNK_BYTES` at a time, checks every value
and names the first bad row, so that nothing changes when the input is bad.

This module is API level: it validates and decides; the kernels do the copying.
"""

import numbers
import os

import numpy as np

from fastmlp._validation import as_features

#: Foreign arrays (another dtype or layout) at least this large, once converted, are
#: gathered batch by batch instead of converted once per call; smaller ones are converted
#: (the numbers are the same either way).  Memory-mapped arrays are always gathered.
STREAM_MIN_BYTES = 64 << 20

#: How much of the input the streaming check reads (and converts) at a time.
CHECK_CHUNK_BYTES = 16 << 20


class DataChangedError(ValueError):
    """The file behind a memory-mapped input changed (size or modification time) after
    ``fit`` checked it; training stops before the next epoch touches it."""


# filename -> (size, mtime_ns) when its contents were last checked.
_checked_files = {}


def _file_state(path):
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def backing_file(X):
    """The file a ``numpy.memmap`` (or a view of one) maps, or None."""
    return getattr(X, "filename", None) if isinstance(X, np.memmap) else None


def check_unchanged(X, name="X"):
    """Raise :class:`DataChangedError` if ``X``'s file changed since it was checked.

    A file truncated while a compiled call reads it cannot be caught (the kernel gets
    SIGBUS); this check, between epochs and before every evaluation, catches a change
    made in between and stops before the damaged data is read.
    """
    path = backing_file(X)
    if path is None or path not in _checked_files:
        return
    try:
        now = _file_state(path)
    except OSError as exc:
        raise DataChangedError(f"{name}'s file {path} can no longer be read ({exc}); training "
                               "stopped before reading it again") from None
    then = _checked_files[path]
    if now != then:
        what = (f"its size went from {then[0]} to {now[0]} bytes" if now[0] != then[0]
                else "it was modified")
        raise DataChangedError(f"{name}'s file {path} changed after fit checked it ({what}); "
                               "stopped before reading it again: the model is as after the "
                               "last completed epoch")


def needs_gather(X, dtype):
    """Whether the compiled layer chain cannot take ``X`` as it is (another dtype, not
    C-contiguous, read-only or unaligned): then inference goes through the gather kernels."""
    return not (X.dtype == dtype and X.flags.c_contiguous and X.flags.writeable
                and X.flags.aligned)


def is_streamed(X, dtype):
    """Whether ``X`` is checked as a stream and used in place (not converted).

    A ``numpy.memmap`` of a float dtype always is; another float array when converting it
    would cost at least :data:`STREAM_MIN_BYTES`.
    """
    if not isinstance(X, np.ndarray) or X.ndim != 2 or X.dtype not in (np.float32, np.float64):
        return False
    if isinstance(X, np.memmap):
        return True
    if X.dtype == dtype and X.flags.c_contiguous:
        return False  # used as it is anyway
    return X.shape[0] * X.shape[1] * np.dtype(dtype).itemsize >= STREAM_MIN_BYTES


def first_nonfinite(X, dtype, chunk_bytes=CHECK_CHUNK_BYTES):
    """``(row, column)`` of the first value of ``X`` that is NaN or Inf once converted to
    ``dtype`` (a float64 beyond float32's range overflows), or None.

    Reads ``X`` once, in order, ``chunk_bytes`` at a time: memory does not grow with ``X``.
    """
    n, width = X.shape
    step = max(1, chunk_bytes // max(1, width * max(X.dtype.itemsize, np.dtype(dtype).itemsize)))
    for start in range(0, n, step):
        chunk = np.asarray(X[start:start + step])
        if chunk.dtype != dtype:
            with np.errstate(over="ignore"):  # an overflow is the Inf reported here
                chunk = chunk.astype(dtype)
        finite = np.isfinite(chunk)
        if not finite.all():
            rows, cols = np.nonzero(~finite)
            return start + int(rows[0]), int(cols[0])
    return None


def features(X, n_features, dtype, name="X"):
    """``X`` checked, as the compiled loops take it.

    A streamed array (:func:`is_streamed`) is checked in one sequential pass and returned
    as it is (a memmap stays a memmap, no copy); anything else goes through
    :func:`fastmlp._validation.as_features` (converted once, as before).
    """
    if not is_streamed(X, dtype):
        return as_features(X, n_features, dtype, name)
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty: it has no rows")
    if X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features per row, but the first layer "
                         f"expects {n_features}")
    path = backing_file(X)
    state = _file_state(path) if path is not None else None
    bad = first_nonfinite(X, dtype)
    if bad is not None:
        row, col = bad
        value = X[row, col]
        after = (f" ({float(value)!r} overflows {np.dtype(dtype).name})" if np.isfinite(value)
                 else "")
        where = f" of {path}" if path is not None else ""
        raise ValueError(f"{name} has a NaN or infinite value in row {row}{where} "
                         f"(column {col}){after}")
    if path is not None:
        _checked_files[path] = state
    return X


class ChunkShuffle:
    """``fit(shuffle=ChunkShuffle(...))``: a shuffle that keeps reads from disk sequential.

    Each epoch the rows, cut into contiguous chunks of ``chunk_rows`` rows (the last one
    shorter), are visited chunk by chunk in a random order; the rows of every ``window``
    consecutive chunks of that order are then shuffled among themselves.  A batch thus
    mixes rows of up to ``window`` chunks (rows far apart in the file meet in a batch only
    when their chunks land in the same window), and reading an epoch touches
    ``window`` chunks at a time instead of random rows.  ``shuffle="chunks"`` is
    ``ChunkShuffle()``.

    Each epoch's order is drawn afresh from the model's RNG (it does not depend on the
    previous epoch's order), and a checkpoint records ``chunk_rows`` and ``window``: a
    resume continues bit for bit.

    Parameters
    ----------
    chunk_rows : int, default 8192
        Rows per chunk: with 100 float32 features, 3 MiB of contiguous file.
    window : int, default 16
        Chunks whose rows are shuffled together (131072 rows by default): the span of the
        file a batch draws from, and the data read ahead at once.
    """

    def __init__(self, chunk_rows=8192, window=16):
        for value, label in ((chunk_rows, "chunk_rows"), (window, "window")):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) \
                    or value < 1:
                raise ValueError(f"ChunkShuffle {label} must be a positive integer, got {value!r}")
        self.chunk_rows = int(chunk_rows)
        self.window = int(window)

    def __repr__(self):
        return f"ChunkShuffle(chunk_rows={self.chunk_rows}, window={self.window})"

    def __eq__(self, other):
        return (isinstance(other, ChunkShuffle) and other.chunk_rows == self.chunk_rows
                and other.window == self.window)

    def __hash__(self):
        return hash((self.chunk_rows, self.window))

    def fill_order(self, rng, order):
        """Overwrite ``order`` (int64, ``(n,)``) with this epoch's order, drawn from ``rng``:
        one permutation of the chunks, then one shuffle per window."""
        n = order.shape[0]
        size = self.chunk_rows
        n_chunks = -(-n // size)
        chunks = rng.permutation(n_chunks)
        at = 0
        for c in chunks:
            lo = int(c) * size
            hi = min(n, lo + size)
            order[at:at + hi - lo] = np.arange(lo, hi, dtype=np.int64)
            at += hi - lo
        # Window boundaries fall on chunk boundaries of the permuted order.
        lengths = np.minimum(size, n - chunks * size)
        ends = np.cumsum(lengths)
        for w in range(0, n_chunks, self.window):
            lo = 0 if w == 0 else int(ends[w - 1])
            hi = int(ends[min(n_chunks, w + self.window) - 1])
            rng.shuffle(order[lo:hi])


def check_shuffle(shuffle):
    """``(shuffle, chunks)``: whether rows are reordered each epoch, and the
    :class:`ChunkShuffle` that does it (None for the full shuffle or none)."""
    if isinstance(shuffle, str):
        if shuffle != "chunks":
            raise ValueError(f"shuffle must be True, False, 'chunks' or a ChunkShuffle, "
                             f"got {shuffle!r}")
        return True, ChunkShuffle()
    if isinstance(shuffle, ChunkShuffle):
        return True, shuffle
    if not isinstance(shuffle, (bool, np.bool_)):
        raise ValueError(f"shuffle must be True, False, 'chunks' or a ChunkShuffle, got {shuffle!r}")
    return bool(shuffle), None
