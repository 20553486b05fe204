"""fastmlp.numba_inlining: numba inlines fastmlp's one-line helpers without copying their IR,
and the code it compiles is the same as numba's own inliner gives."""

import json
import subprocess
import sys

import numba
import numpy as np
from numba.core import inline_closurecall

from fastmlp import SGD, Dense, Sequential, numba_inlining


def test_the_shortcut_is_installed_on_this_numba():
    assert numba_inlining.numba_has_the_expected_shape(), (
        f"numba {numba.__version__}'s InlineWorker is not the code fastmlp.numba_inlining was "
        "written against: read it again, and adapt the shortcut or drop it")
    numba.njit(lambda v: v + 1)(1)  # it is installed when numba first compiles
    assert numba_inlining.installed()


def _fill_the_kernel_cache():
    # One epoch of a small model: what the children of this module load.
    rng = np.random.default_rng(0)
    Sequential([Dense(6, 16, activation="tanh"), Dense(16, 3)], optimizer=SGD(0.1),
               seed=0).fit(rng.normal(size=(24, 6)), rng.integers(0, 3, size=24), epochs=1,
                           batch_size=8, verbose=0)


_LOAD_ONLY = """
import sys
import numpy as np
from fastmlp import SGD, Dense, Sequential, numba_inlining
rng = np.random.default_rng(0)
Sequential([Dense(6, 16, activation="tanh"), Dense(16, 3)], optimizer=SGD(0.1),
           seed=0).fit(rng.normal(size=(24, 6)), rng.integers(0, 3, size=24), epochs=1,
                       batch_size=8, verbose=0)
print("numba.core.inline_closurecall" in sys.modules, numba_inlining.installed())
"""


def test_a_process_that_only_loads_kernels_does_not_import_numbas_inliner():
    """Installed at the first compilation, not at import: a warm start (every kernel loaded
    from the cache that this test's process filled) leaves numba's inliner unimported."""
    _fill_the_kernel_cache()
    out = subprocess.run([sys.executable, "-c", _LOAD_ONLY], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


# A fresh interpreter compiles two of fastmlp's drivers anew (its kernels' cache, filled by
# the test's process, serves their callees) and prints a digest of each one's LLVM IR, with
# or without the shortcut.  In one process a second compilation of the same function is not
# textually the same IR (numba numbers basic blocks with a process-wide counter, and their
# order in the IR follows those numbers); two fresh processes doing the same work are.
_COMPILE_DRIVERS = """
import hashlib, json, re, sys
import numba
import numpy as np
from numba.core import inline_closurecall
from fastmlp import SGD, Dense, Sequential, numba_inlining
from fastmlp.config import JIT_OPTIONS
from fastmlp.kernels import network

if sys.argv[1] == "numba":
    numba_inlining.uninstall()
else:
    # Now rather than at the first compilation: install() checks numba's inline_ir, which
    # the watcher below wraps.
    assert numba_inlining.install()
rng = np.random.default_rng(0)
X = rng.normal(size=(24, 6)).astype(np.float32)
y = rng.integers(0, 3, size=24)
model = Sequential([Dense(6, 16, activation="tanh"), Dense(16, 3)], optimizer=SGD(0.1), seed=0)
model.fit(X, y, epochs=1, batch_size=8, verbose=0)
net = model._train_workspace.net
x, labels = X[:8], y[:8].astype(np.int64)
# One step's gradients (forward, loss, backward and the views between them, inlined, some
# inside others) and one layer's backward pass (views and the dense backward kernel), as
# the serial build compiles them.
cases = {
    "compute_gradients": (network._compute_gradients,
                          (net, model.loss_code, x, labels, model._no_targets, None, None)),
    "layer_backward": (network._layer_backward.py_func,
                       (net, network.FIRST_LAYER[0], x, net.zbuf, net.winner, net.mask,
                        net.norm_cache, net.pre_act, None)),
}
served = []
numba_inline_ir = inline_closurecall.InlineWorker.inline_ir

def watched_inline_ir(self, *args, **kwargs):
    served.append(inline_closurecall.copy is numba_inlining._SHARING_COPY)
    return numba_inline_ir(self, *args, **kwargs)

inline_closurecall.InlineWorker.inline_ir = watched_inline_ir


def without_tags(llvm_ir):
    # numba's mangled names carry ABI tags (B3v71B112 and 112 characters) that differ from
    # one dispatcher to the next; the missing-environment message repeats them, with its length.
    out, pos = [], 0
    for m in re.finditer(r"B[0-9]+v[0-9]+B([0-9]+)", llvm_ir):
        if m.start() >= pos:
            out += [llvm_ir[pos:m.start()], "<tag>"]
            pos = m.end() + int(m.group(1))
    out.append(llvm_ir[pos:])
    return re.sub(r"[[][0-9]+ x i8[]] c.missing Environment", "missing Environment", "".join(out))


digests = {}
for name, (py_func, args) in cases.items():
    dispatcher = numba.njit(**dict(JIT_OPTIONS, cache=False))(py_func)
    dispatcher(*args)
    (signature,) = dispatcher.signatures
    digests[name] = hashlib.sha256(without_tags(dispatcher.inspect_llvm(signature)).encode()).hexdigest()
print(json.dumps(dict(digests=digests, served=served)))
"""


def _compile_drivers(inliner):
    out = subprocess.run([sys.executable, "-c", _COMPILE_DRIVERS, inliner], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_drivers_compile_to_the_same_code_with_and_without_the_shortcut():
    """The shortcut only leaves out copies nobody uses: numba's inliner and the shortcut
    give the same LLVM IR (after the optimiser, so the same machine code), and so the same
    bits as every behaviour hash recorded before it."""
    # This process fills the kernels' cache first, so that the children compile only the
    # two drivers, and the same way.
    _fill_the_kernel_cache()
    with_shortcut = _compile_drivers("fastmlp")
    numba_own = _compile_drivers("numba")
    assert with_shortcut["served"] and all(with_shortcut["served"])
    assert numba_own["served"] and not any(numba_own["served"])
    assert len(with_shortcut["served"]) == len(numba_own["served"])
    assert with_shortcut["digests"] == numba_own["digests"]


@numba.njit(inline="always")
def _add_one(v):
    return v + 1


def _add_two(v):
    return _add_one(_add_one(v))


def test_functions_from_elsewhere_are_inlined_by_numba_itself(monkeypatch):
    """Only fastmlp's functions take the shortcut: a user's ``inline="always"`` function (one
    of this test module's) is inlined by numba's own code, copies included."""
    # Installed before the watcher wraps inline_ir, whose shape install() checks.
    assert numba_inlining.install()
    shared = []
    numba_inline_ir = inline_closurecall.InlineWorker.inline_ir

    def watched_inline_ir(self, *args, **kwargs):
        shared.append(inline_closurecall.copy is numba_inlining._SHARING_COPY)
        return numba_inline_ir(self, *args, **kwargs)

    monkeypatch.setattr(inline_closurecall.InlineWorker, "inline_ir", watched_inline_ir)
    assert numba.njit(_add_two)(1.5) == 3.5
    assert numba_inlining.installed()
    assert shared == [False, False]
