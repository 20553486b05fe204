"""The private kernels compiled without an entry point from Python (fastmlp.compiled_only):
a call from Python raises TypeError, before and after they are compiled, instead of
jumping to the entry point numba left out; compiled callers still reach them."""

import json
import os
import subprocess
import sys

import numpy as np

from fastmlp import compiled_only, kernels
from fastmlp.jitcache import own_dispatchers
from fastmlp.kernels import activations, dense, losses, network


def test_the_layer_steps_and_row_loops_compile_without_an_entry_point_and_the_api_with_one():
    inner = {f"{m.__name__}.{d.py_func.__name__}" for m in kernels.MODULES
             for d in own_dispatchers(m) if compiled_only.compiled_without_entry_point(d)}
    assert {"fastmlp.kernels.network._layer_forward", "fastmlp.kernels.network._layer_backward",
            "fastmlp.kernels.losses._loss_rows",
            "fastmlp.kernels.activations._bias_activation_rows"} <= inner
    # Everything called from Python keeps its entry point.
    for kernel in (network.train_epoch, network.predict_into, network.evaluate_chunked,
                   network.compute_gradients, losses.loss_and_grad, dense.column_sum):
        assert not compiled_only.compiled_without_entry_point(kernel), kernel
    # Only private kernels go without one.
    assert all(name.rsplit(".", 1)[1].startswith("_") for name in inner), inner


# In a child: a crash (the null entry point called) must fail this test, not the worker.
_CHILD = r"""
import inspect, json
import numpy as np
from fastmlp import compiled_only, kernels
from fastmlp.jitcache import own_dispatchers
from fastmlp.kernels import activations

def refusal(call):
    try:
        call()
    except TypeError as error:
        return str(error)
    return None

a = np.array([[0.5, -1.0], [0.0, 2.0]])
inner = activations._activation_grad_rows
before = refusal(lambda: inner(a, np.ones((2, 2)), activations.RELU, 0.0, 0, 2))
compiled_before = list(inner.signatures)
# The public kernel compiles the private one into its own code and runs it.
delta = np.ones((2, 2))
activations.activation_grad(a, delta, activations.RELU, 0.0, None)
after = refusal(lambda: inner(a, np.ones((2, 2)), activations.RELU, 0.0, 0, 2))
# Every kernel without an entry point refuses a call from Python, whatever its arguments
# (here None for each).
others = {}
for module in kernels.MODULES:
    for kernel in own_dispatchers(module):
        if compiled_only.compiled_without_entry_point(kernel):
            n_args = len(inspect.signature(kernel.py_func).parameters)
            others[kernel.py_func.__name__] = refusal(lambda: kernel(*[None] * n_args))
print(json.dumps({"before": before, "compiled_before": compiled_before, "after": after,
                  "compiled_after": len(inner.signatures), "grad": delta.tolist(),
                  "others": others}))
"""


def test_a_call_from_python_raises_type_error_before_and_after_compilation(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, (out.returncode, out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    name = "fastmlp.kernels.activations._activation_grad_rows"
    assert result["before"] is not None and name in result["before"], result["before"]
    assert result["compiled_before"] == []  # the refusal compiled nothing
    assert result["compiled_after"] == 1
    assert result["after"] is not None and name in result["after"], result["after"]
    # The compiled caller ran the private kernel: ReLU's gradient is the mask a > 0.
    assert result["grad"] == (np.array([[0.5, -1.0], [0.0, 2.0]]) > 0).astype(float).tolist()
    assert len(result["others"]) >= 15
    refused = {kernel for kernel, message in result["others"].items()
               if message is not None and kernel in message}
    assert refused == set(result["others"]), result["others"]
