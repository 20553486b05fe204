"""Kernels that only other kernels call, compiled without numba's entry point from Python.

Beside each function's machine code numba compiles a CPython wrapper, the entry point a
call from Python goes through: it unboxes every argument (a
:class:`~fastmlp.kernels.network.NetBuffers` is fifteen arrays) and boxes the result.
Compiled callers call the machine code directly and never use it, so the private kernels
that only other kernels call (``INNER_JIT_OPTIONS`` in :mod:`fastmlp.config`) are compiled
with numba's ``no_cpython_wrapper``.  numba's dispatcher then still registers the entry
point for calls from Python, as a null pointer: such a call would crash the interpreter.

:func:`refuse_python_calls` makes it raise TypeError instead.  numba registers entry
points in one place, ``Dispatcher.add_overload``, through ``_insert`` (read in numba
0.68.1); with that a no-op for these dispatchers, no call from Python ever finds a compiled
entry, so every such call goes to ``_compile_for_args``, which raises.  Compiled callers
are unaffected: they find the callee through ``Dispatcher.overloads``, which numba still
fills, from a compilation or from the cache.
"""

from fastmlp.jitcache import own_dispatchers


def _register_nothing(*args, **kwargs):
    pass


def _refusal(qualified_name):
    def _compile_for_args(*args, **kwargs):
        raise TypeError(
            f"{qualified_name} is called from compiled kernels only: it is compiled without "
            "an entry point from Python (fastmlp.config.INNER_JIT_OPTIONS); call the public "
            "kernel that uses it")
    return _compile_for_args


def compiled_without_entry_point(dispatcher):
    """Whether ``dispatcher`` compiles with numba's ``no_cpython_wrapper``."""
    return bool(dispatcher.targetoptions.get("no_cpython_wrapper"))


def refuse_python_calls(module):
    """Make every numba function of ``module`` compiled without an entry point from Python
    raise TypeError when Python calls it."""
    for dispatcher in own_dispatchers(module):
        if compiled_without_entry_point(dispatcher):
            dispatcher._insert = _register_nothing
            dispatcher._compile_for_args = _refusal(
                f"{module.__name__}.{dispatcher.py_func.__name__}")
