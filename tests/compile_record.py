"""Which numba functions compile: in a child process's script, or around a block here."""

import contextlib

#: Prefix for a child's script: after it, ``compiled`` lists the name of every numba function
#: that starts compiling (an outer one and the callees it compiles, in order).
RECORD_COMPILES = r"""
from numba.core import event
compiled = []
class Listener(event.Listener):
    def on_start(self, ev): compiled.append(ev.data["dispatcher"].py_func.__name__)
    def on_end(self, ev): pass
event.register("numba:compile", Listener())
"""


@contextlib.contextmanager
def recording_compiles():
    """Within the block, the yielded list collects what :data:`RECORD_COMPILES` collects."""
    from numba.core import event

    compiled = []

    class Listener(event.Listener):
        def on_start(self, ev):
            compiled.append(ev.data["dispatcher"].py_func.__name__)

        def on_end(self, ev):
            pass

    listener = Listener()
    event.register("numba:compile", listener)
    try:
        yield compiled
    finally:
        event.unregister("numba:compile", listener)
