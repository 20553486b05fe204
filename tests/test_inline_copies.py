"""Calls from Python of the inlined helpers (fastmlp.inline_copies): the first process
compiles a cached copy, the next one loads it and gets the same numbers, and compiled
callers still inline the helper rather than call the copy."""

import json
import os
import subprocess
import sys

import numpy as np

from fastmlp import inline_copies, kernels
from fastmlp.jitcache import own_dispatchers
from fastmlp.kernels import activations, dense

from compile_record import RECORD_COMPILES

_CHILD = RECORD_COMPILES + r"""
import json
import numba
import numpy as np
from fastmlp.kernels import activations, dense

rng = np.random.default_rng(3)
x, W, b = rng.normal(size=(9, 6)), rng.normal(size=(6, 4)), rng.normal(size=4)
out = np.empty((9, 4))
dense.dense_forward(x, W, b, activations.TANH, 0.0, out, None)
first_call = list(compiled)
dense.dense_forward(x, W, b, activations.TANH, 0.0, out, None)
second_call = compiled[len(first_call):]


@numba.njit
def users_function(x, W, b, out):
    dense.dense_forward(x, W, b, activations.TANH, 0.0, out, None)


from_compiled_code = np.empty((9, 4))
users_function(x, W, b, from_compiled_code)
print(json.dumps({"first_call": first_call, "second_call": second_call, "out": out.tolist(),
                  "from_compiled_code": from_compiled_code.tolist(),
                  "overloads": len(dense.dense_forward.overloads),
                  "llvm": next(iter(users_function.inspect_llvm().values()))}))
"""


def _child(env):
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, (out.returncode, out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_inlined_helper_is_uncached_and_called_from_python_through_a_copy():
    helpers = [d for m in kernels.MODULES for d in own_dispatchers(m) if inline_copies.inlined(d)]
    assert dense.dense_forward in helpers and activations.bias_activation in helpers
    for helper in helpers:
        assert helper.targetoptions.get("cache") is None and helper._cache.__class__.__name__ \
            == "NullCache", helper
        assert helper._compile_for_args.__qualname__.startswith("_through_a_cached_copy"), helper


def test_a_helper_called_from_python_compiles_once_then_loads_and_is_still_inlined(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    first, second = _child(env), _child(env)
    assert "dense_forward" in first["first_call"], first["first_call"]
    assert second["first_call"] == [], second["first_call"]  # loaded from the cache
    # The dispatcher took the copy's compiled code: the second call compiled nothing.
    assert first["second_call"] == [] and second["second_call"] == []
    assert first["overloads"] == second["overloads"] == 1
    # The same machine code in both, and the same numbers as this process computes.
    x_rng = np.random.default_rng(3)
    x, W, b = x_rng.normal(size=(9, 6)), x_rng.normal(size=(6, 4)), x_rng.normal(size=4)
    out = np.empty((9, 4))
    dense.dense_forward(x, W, b, activations.TANH, 0.0, out, None)
    assert first["out"] == second["out"] == out.tolist()
    # A compiled caller still inlines the helper: no function of that name in its code.
    for run in (first, second):
        assert run["from_compiled_code"] == run["out"]
        assert "dense_forward" not in run["llvm"]
