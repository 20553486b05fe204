"""Compile-time settings shared by every kernel.

Numba freezes module globals into the machine code when a function is compiled, so the
values here are constants for the life of the on-disk cache: change them, then clear the
cache (``__pycache__`` beside the sources, or ``NUMBA_CACHE_DIR``).
"""

# ``fastmath=True`` would include ``nnan``/``ninf``, which lets LLVM assume no NaN or Inf
# exists and silently breaks ``np.isfinite`` (numba #2919, #6217); the divergence check
# and the input checks need it to work.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

# Options for every serial kernel.  ``nogil`` lets several Python threads predict at once.
# No cfunc wrapper: numba builds one per function so that it can be passed as a first-class
# function value, which fastmlp never does (0.3 s of a first fit, with its LLVM passes).
JIT_OPTIONS = dict(cache=True, fastmath=FASTMATH, nogil=True, no_cfunc_wrapper=True)

# Options for the serial private kernels that only other kernels call (the per-row loops,
# the layer steps): no CPython wrapper either, the entry point that unboxes each argument
# of a call from Python (another 0.4 s of a first fit).  Calling one from Python raises
# TypeError instead of jumping to the entry point that is not there
# (:mod:`fastmlp.compiled_only`).
INNER_JIT_OPTIONS = dict(JIT_OPTIONS, no_cpython_wrapper=True)

# Options for one-line helpers and glue (views, sizes, the gemm call, dense_forward): numba
# inlines their IR into the caller rather than compiling each as a function of its own.
# Not cached: numba also compiles an inlined function on its own while typing a caller, and
# such a copy, loaded from the cache in another process, crashed it (a segfault on the first
# call of dense_forward from a test).  Their callers are cached with the inlined code in
# them; a direct call from Python (tests, benchmarks) runs a cached copy that nothing
# inlines (:mod:`fastmlp.inline_copies`).
TINY_JIT_OPTIONS = dict(JIT_OPTIONS, inline="always", cache=False)

# Options for the few ``prange`` drivers.
PARALLEL_JIT_OPTIONS = dict(JIT_OPTIONS, parallel=True)

# Matrix products below this many floating-point operations run in the calling thread:
# at ~100 GFLOP/s per core they take under ~20 us, a few thread-pool launches' worth.
PARALLEL_MIN_FLOPS = 1 << 21

# Elementwise work below this many elements runs serially: launching the thread pool
# costs a few microseconds, more than a small layer's whole bias+activation pass.
PARALLEL_MIN_ELEMENTS = 1 << 16
