"""numba's ``inline="always"`` without the two copies of the callee it throws away.

numba inlines a function declared ``inline="always"`` (fastmlp's one-line helpers, see
``TINY_JIT_OPTIONS`` in :mod:`fastmlp.config`) at every call site: it builds the callee's
numba IR afresh from its bytecode (``InlineWorker.run_untyped_passes``), then splices it into
the caller (``InlineWorker.inline_ir``).  ``inline_ir`` serves callers that keep their callee
IR, so it first deep-copies it twice: one copy to splice in, one left untouched to return.
numba's only caller of ``InlineWorker.inline_function``, the untyped pass
``InlineInlinables``, hands it a fresh IR that nothing else holds and drops the untouched
copy, so for this caller both copies are waste.  The first fit of a small float32 network
inlines at 55 places, and so made 110 deep copies of numba IR: ``inline_ir`` took 1.7-2.0 s
of a 12-13.5 s first fit on 2-core Zen 4, and takes 0.1 s without them, more than building
those IRs took (NVIDIA's numba-cuda, issue 688, found the same copies costly).

:func:`install` makes ``inline_function`` splice the fresh IR itself, for functions defined
in fastmlp's own modules only.  The IR that results is the same, so the machine code is the
same: ``tests/test_numba_inlining.py`` compiles fastmlp's drivers both ways and compares
their LLVM IR.  It changes numba only where numba's code has the shape this was written for
(read in numba 0.68.1; :func:`numba_has_the_expected_shape`); anywhere else numba is left
as it is, and only compiles slower.

:mod:`fastmlp.kernels` calls :func:`install_at_first_compilation`, not :func:`install`:
importing numba's inliner takes about 40 ms, 20 of them for modules nothing else needs,
and a process that only loads compiled kernels from the cache (a warm start) does not
use it.
"""

import copy
import sys
import types

from numba.core import event
from numba.core.compiler_lock import global_compiler_lock

_INLINER_MODULE = "numba.core.inline_closurecall"

# The functions whose inlining skips the copies: fastmlp's own, whose compiled code its
# tests compare both ways; anyone else's goes through numba's own code.
_OWN_MODULES = "fastmlp."

#: numba's ``InlineWorker.inline_function``, kept when :func:`install` replaces it.
_numba_inline_function = None


def _inliner():
    from numba.core import inline_closurecall

    global _numba_inline_function
    if _numba_inline_function is None:
        _numba_inline_function = inline_closurecall.InlineWorker.inline_function
    return inline_closurecall


class _DeepCopyThatShares:
    """Stands in for the ``copy`` module inside numba's ``inline_closurecall`` while
    ``inline_ir`` splices in an IR that nobody else holds: ``deepcopy`` returns its argument."""

    def __getattr__(self, name):
        return getattr(copy, name)

    @staticmethod
    def deepcopy(x, memo=None):
        return x


_SHARING_COPY = _DeepCopyThatShares()


def numba_has_the_expected_shape():
    """Whether numba's inliner is the code :func:`install` was written against.

    ``inline_function`` must do nothing but run ``run_untyped_passes`` and pass its result to
    ``inline_ir``, and ``inline_ir``'s only deep copies must be those of its ``copy_ir``
    closure (the callee IR's blocks), through the ``copy`` module of ``inline_closurecall``.

    Returns
    -------
    bool
    """
    inline_closurecall = _inliner()
    worker = getattr(inline_closurecall, "InlineWorker", None)
    if worker is None or getattr(inline_closurecall, "copy", None) is not copy:
        return False
    inline_function = _numba_inline_function
    inline_ir = getattr(worker, "inline_ir", None)
    if not all(isinstance(f, types.FunctionType) for f in (inline_function, inline_ir)):
        return False
    if set(inline_function.__code__.co_names) != {"run_untyped_passes", "__code__",
                                                  "co_freevars", "inline_ir"}:
        return False
    nested = [c for c in inline_ir.__code__.co_consts if isinstance(c, types.CodeType)]
    copiers = [c for c in nested if "deepcopy" in c.co_names]
    return ("deepcopy" not in inline_ir.__code__.co_names and len(copiers) == 1
            and copiers[0].co_name == "copy_ir")


def _inline_function(self, caller_ir, block, i, function, arg_typs=None):
    # numba's InlineWorker.inline_function, minus inline_ir's copies of the fresh callee IR.
    if not (getattr(function, "__module__", None) or "").startswith(_OWN_MODULES):
        return _numba_inline_function(self, caller_ir, block, i, function, arg_typs)
    inline_closurecall = _inliner()
    callee_ir = self.run_untyped_passes(function)
    # Held already while numba compiles (it is re-entrant): no other thread can be inside
    # inline_closurecall while its ``copy`` is swapped.
    with global_compiler_lock:
        inline_closurecall.copy = _SHARING_COPY
        try:
            return self.inline_ir(caller_ir, block, i, callee_ir,
                                  function.__code__.co_freevars, arg_typs=arg_typs)
        finally:
            inline_closurecall.copy = copy


def install():
    """Make numba inline fastmlp's ``inline="always"`` functions without copying their IR.

    Does nothing where numba's inliner differs from the code this was written against.

    Returns
    -------
    bool
        Whether it is installed.
    """
    _first_compilation.armed = False
    if not numba_has_the_expected_shape():
        return False
    _inliner().InlineWorker.inline_function = _inline_function
    return True


class _InstallAtFirstCompilation(event.Listener):
    # numba announces a compilation ("numba:compile") before its first pass, holding its
    # compiler lock; loading from the cache announces none.
    armed = False

    def on_start(self, ev):
        if self.armed:
            install()

    def on_end(self, ev):
        pass


_first_compilation = _InstallAtFirstCompilation()
event.register("numba:compile", _first_compilation)


def install_at_first_compilation():
    """:func:`install` when numba next starts compiling anything, not before."""
    _first_compilation.armed = True


def uninstall():
    """Give numba its own ``inline_function`` back (tests compare the two), and cancel
    :func:`install_at_first_compilation`."""
    _first_compilation.armed = False
    if installed():
        _inliner().InlineWorker.inline_function = _numba_inline_function


def installed():
    """Whether numba inlines fastmlp's functions through :func:`install`'s shortcut."""
    inline_closurecall = sys.modules.get(_INLINER_MODULE)
    return (inline_closurecall is not None
            and inline_closurecall.InlineWorker.inline_function is _inline_function)
