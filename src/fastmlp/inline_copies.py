"""Calls from Python of the inlined helpers run a cached copy of them.

The one-line helpers and glue that numba inlines into their callers (``TINY_JIT_OPTIONS`` in
:mod:`fastmlp.config`: ``dense_forward``, ``gemm``, ``bias_activation``, ...) are not cached
themselves (the note there says why); their compiled callers hold their code.  Tests and
the asv benchmarks also call the public ones from Python, and numba then compiles the
helper as a function of its own, in every process that calls it: 14.6 of the 20 s that
``tests/test_kernels.py`` took with every other kernel loaded from the cache.

:func:`cache_python_calls` makes such a call compile (or load) a copy of the helper that
nothing inlines and that is cached and guarded like every other kernel
(:func:`fastmlp.jitcache.guarded_copy`), and hands the copy's compiled code to the
helper's dispatcher, so that the next call from Python with the same argument types runs
it without coming back here.  numba's ``_compile_for_args`` is the one way in for a call
from Python that finds no compiled code (read in numba 0.68.1); compiled callers never
use it, so they inline the helper as before.
"""

import threading

from fastmlp.config import JIT_OPTIONS
from fastmlp.jitcache import guarded_copy, own_dispatchers

_making_copies = threading.Lock()


def inlined(dispatcher):
    """Whether numba inlines ``dispatcher`` into its callers (``inline="always"``)."""
    return dispatcher.targetoptions.get("inline") == "always"


def _through_a_cached_copy(dispatcher):
    copies = []

    def _compile_for_args(*args, **kwargs):
        with _making_copies:
            if not copies:
                # TINY_JIT_OPTIONS are JIT_OPTIONS but inlined and not cached.
                copies.append(guarded_copy(dispatcher, **JIT_OPTIONS))
        copy = copies[0]
        # numba's contract: return the compiled function; the dispatcher then calls it.
        entry_point = copy._compile_for_args(*args, **kwargs)
        for signature, compiled in list(copy.overloads.items()):
            if signature not in dispatcher.overloads:
                dispatcher.add_overload(compiled)
        return entry_point

    return _compile_for_args


def cache_python_calls(module):
    """Make calls from Python of every inlined helper of ``module`` run a cached copy."""
    for dispatcher in own_dispatchers(module):
        if inlined(dispatcher):
            dispatcher._compile_for_args = _through_a_cached_copy(dispatcher)
