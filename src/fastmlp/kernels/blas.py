"""Direct BLAS ``gemm`` on row-major views, callable from numba (also inside ``prange``).

numba's ``np.dot(a, b, out)`` only takes contiguous operands and cannot accumulate.  This
calls the same BLAS (SciPy's, through numba's ``numba_xxgemm`` helper) with explicit
leading dimensions, so a block of rows *or columns* of a matrix is a view, not a copy:
the parallel drivers hand each thread its own block of the output.  The helper is bound by
symbol name, which keeps every caller cacheable.
"""

import numpy as np
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from fastmlp.config import (INNER_JIT_OPTIONS, PARALLEL_JIT_OPTIONS, PARALLEL_MIN_FLOPS,
                            TINY_JIT_OPTIONS)

# Block boundaries fall on multiples of this many rows (columns): blocks stay thick enough
# for BLAS to run at speed and line up with its register tiles.
BLOCK_ALIGN = 64


@njit(**TINY_JIT_OPTIONS)
def block_start(i, n_units, n_chunks):
    """First row (column) of block ``i`` of ``n_chunks``: aligned to ``BLOCK_ALIGN``."""
    if i >= n_chunks:
        return n_units
    return (i * n_units // n_chunks) // BLOCK_ALIGN * BLOCK_ALIGN

_XXGEMM = types.ExternalFunction(
    "numba_xxgemm",
    types.intc(types.char, types.char, types.char, types.intp, types.intp, types.intp,
               types.voidptr, types.voidptr, types.intp, types.voidptr, types.intp,
               types.voidptr, types.voidptr, types.intp))

_XXGEMV = types.ExternalFunction(
    "numba_xxgemv",
    types.intc(types.char, types.char, types.intp, types.intp, types.voidptr, types.voidptr,
               types.intp, types.voidptr, types.voidptr, types.voidptr))

_NO_TRANSPOSE = 78  # ord("N")
_TRANSPOSE = 84  # ord("T")
_SINGLE = 115  # ord("s")
_DOUBLE = 100  # ord("d")


@intrinsic
def _pointer_to(typingctx, value):
    """Address of a stack copy of the scalar ``value`` (BLAS takes alpha/beta by pointer)."""

    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once_value(builder, args[0])
        return builder.bitcast(slot, cgutils.voidptr_t)

    return types.voidptr(value), codegen


@intrinsic
def _address(typingctx, address):
    """The integer ``address`` (an array's ``ctypes.data``) as a pointer for BLAS."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


@njit(**INNER_JIT_OPTIONS)
def _blas_call(kind, transpose_a, transpose_b, m, n, k, a, ld_a, b, ld_b, c, ld_c, accumulate):
    # One BLAS call: ``c = op(a) @ op(b)`` (``c +=`` with ``accumulate``) for the
    # ``m x n`` row-major matrix at address ``c``; sizes are positive.
    if kind == _SINGLE:
        one = np.float32(1.0)
        beta = np.float32(1.0 if accumulate else 0.0)
        alpha_ptr, beta_ptr = _pointer_to(one), _pointer_to(beta)
    else:
        one64 = 1.0
        beta64 = 1.0 if accumulate else 0.0
        alpha_ptr, beta_ptr = _pointer_to(one64), _pointer_to(beta64)
    if m == 1 and not transpose_a:
        # One row of output (a one-row batch): OpenBLAS's gemm runs a 1 x k by k x n product
        # through its packing path, 13x slower than gemv here (4.7 ms against 0.35 ms for
        # 2048 x 2048 in float32).  ``c[0] = a[0] @ op(b)``: in BLAS's column-major terms
        # ``b`` is the n x k matrix ``b.T`` (``op(b) = b``) or the k x n matrix ``b.T``
        # (``op(b) = b.T``), and ``a[0]`` and ``c[0]`` are vectors of unit stride.
        if transpose_b:
            _XXGEMV(kind, _TRANSPOSE, k, n, alpha_ptr, _address(b), ld_b, _address(a), beta_ptr,
                    _address(c))
        else:
            _XXGEMV(kind, _NO_TRANSPOSE, n, k, alpha_ptr, _address(b), ld_b, _address(a),
                    beta_ptr, _address(c))
        return
    _XXGEMM(kind, _TRANSPOSE if transpose_b else _NO_TRANSPOSE,
            _TRANSPOSE if transpose_a else _NO_TRANSPOSE, n, m, k, alpha_ptr,
            _address(b), ld_b, _address(a), ld_a, beta_ptr, _address(c), ld_c)


@njit(**PARALLEL_JIT_OPTIONS)
def _blas_call_parallel(kind, transpose_a, transpose_b, m, n, k, a, ld_a, b, ld_b, c, ld_c,
                        accumulate, n_chunks, by_rows):
    # ``n_chunks`` calls of :func:`_blas_call`, each on its own block of rows (columns) of c.
    # A block of a row-major matrix starts ``rows * ld`` elements (``cols`` elements) in and
    # keeps the whole matrix's leading dimension.  The blocks' addresses stay uint64 and
    # ``accumulate`` (False: only overwriting products are split) is passed on rather than
    # spelled ``False``: with an int64 address or a literal flag the blocks' calls would
    # compile _blas_call once more each way (it compiled three times for one model).
    itemsize = np.uint64(4 if kind == _SINGLE else 8)
    for i in prange(n_chunks):
        if by_rows:
            r0 = block_start(i, m, n_chunks)
            r1 = block_start(i + 1, m, n_chunks)
            a_start = r0 if transpose_a else r0 * ld_a  # a[:, r0:r1] or a[r0:r1]
            _blas_call(kind, transpose_a, transpose_b, r1 - r0, n, k,
                       a + np.uint64(a_start) * itemsize, ld_a, b, ld_b,
                       c + np.uint64(r0 * ld_c) * itemsize, ld_c, accumulate)
        else:
            c0 = block_start(i, n, n_chunks)
            c1 = block_start(i + 1, n, n_chunks)
            b_start = c0 * ld_b if transpose_b else c0  # b[c0:c1] or b[:, c0:c1]
            _blas_call(kind, transpose_a, transpose_b, m, c1 - c0, k, a, ld_a,
                       b + np.uint64(b_start) * itemsize, ld_b, c + np.uint64(c0) * itemsize,
                       ld_c, accumulate)


@njit(**INNER_JIT_OPTIONS)
def _blas_product(kind, transpose_a, transpose_b, m, n, k, a, ld_a, b, ld_b, c, ld_c,
                  accumulate, n_threads):
    # :func:`gemm` and :func:`matmul` over addresses and sizes.  Every argument is a scalar,
    # so this compiles once for both dtypes and every array layout (twice: ``n_threads``
    # None compiles no ``prange`` driver).  A function of its own rather than inlined:
    # numba copies an inlined function's IR once per call site, at a cost that grows with
    # the square of its size, and a training step has a dozen products.
    if m == 0 or n == 0 or k == 0:
        return
    if n_threads is not None and not accumulate:
        by_rows = m >= n
        units = m if by_rows else n
        n_chunks = min(n_threads, units // BLOCK_ALIGN)
        if n_chunks >= 2 and 2 * m * n * k >= PARALLEL_MIN_FLOPS:
            _blas_call_parallel(kind, transpose_a, transpose_b, m, n, k, a, ld_a, b, ld_b, c,
                                ld_c, accumulate, n_chunks, by_rows)
            return
    _blas_call(kind, transpose_a, transpose_b, m, n, k, a, ld_a, b, ld_b, c, ld_c, accumulate)


@njit(**TINY_JIT_OPTIONS)
def _leading_dimension(a):
    # Rows of a row-major view are ``strides[0]`` apart; a single row may report any stride.
    return max(a.strides[0] // a.itemsize, a.shape[1], 1)


@njit(**TINY_JIT_OPTIONS)
def _product(a, transpose_a, b, transpose_b, c, accumulate, n_threads):
    m, n = c.shape
    k = a.shape[0] if transpose_a else a.shape[1]
    if k == 0 and not accumulate:
        # An empty sum: BLAS may return before it applies beta.
        for i in range(m):
            for j in range(n):
                c[i, j] = 0
        return
    # ``!= 0``: a flag the caller spelled as a constant would otherwise reach
    # _blas_product as a literal type and compile it once per combination.
    _blas_product(_SINGLE if c.itemsize == 4 else _DOUBLE, transpose_a != 0, transpose_b != 0,
                  m, n, k, a.ctypes.data, _leading_dimension(a), b.ctypes.data,
                  _leading_dimension(b), c.ctypes.data, _leading_dimension(c), accumulate != 0,
                  n_threads)


@njit(**TINY_JIT_OPTIONS)
def gemm(a, transpose_a, b, transpose_b, c, accumulate):
    """``c = op(a) @ op(b)``, or ``c += op(a) @ op(b)`` with ``accumulate``, in this thread.

    Parameters
    ----------
    a : ndarray of shape (m, k), or (k, m) with ``transpose_a``
    transpose_a : bool
    b : ndarray of shape (k, n), or (n, k) with ``transpose_b``
    transpose_b : bool
    c : ndarray of shape (m, n)
        Written in place.
    accumulate : bool

    Notes
    -----
    Every array must be a row-major view with unit stride along its rows (``a[:, j0:j1]``
    of a C-contiguous array is fine); all three share one float dtype.  BLAS is
    column-major, and a row-major ``X`` is the column-major ``X.T``, so this computes
    ``c.T = op(b).T @ op(a).T``.
    """
    _product(a, transpose_a, b, transpose_b, c, accumulate, None)


@njit(**TINY_JIT_OPTIONS)
def matmul(a, transpose_a, b, transpose_b, c, n_threads):
    """``c = op(a) @ op(b)`` on up to ``n_threads`` threads, BLAS itself single-threaded.

    Large products are split into blocks of whole rows of ``c`` (or whole columns, when
    ``c`` is wider than tall), one per thread: no thread writes another's elements and no
    sum over ``k`` is split.  OpenBLAS still picks its inner kernels by block size, which
    can change the order of the ``k`` products for some elements: the result then differs
    from the unsplit product by rounding (seen here: 1.5e-12 relative in float64).
    Products under ``PARALLEL_MIN_FLOPS`` run in the calling thread.

    Parameters
    ----------
    a, transpose_a, b, transpose_b, c
        As in :func:`gemm`.
    n_threads : int or None
        None: the serial build (see :mod:`fastmlp.kernels`).
    """
    _product(a, transpose_a, b, transpose_b, c, False, n_threads)
