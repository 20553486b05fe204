"""A steady-state training step allocates nothing: no NRT memory inside the kernels, no
numpy arrays from Python.

Numba counts, with NUMBA_NRT_STATS=1, every NRT allocation, including the small MemInfo
wrapper it makes for each array argument passed in from Python (20 per ``train_step``,
3 per epoch loop call and so on).  Those wrappers do not depend on batch count or depth,
so the checks compare runs that differ only in the number of steps or of layers: any
buffer allocated per step or per layer would show as a difference.
"""

import json
import os
import subprocess
import sys

import pytest

PROBE = os.path.join(os.path.dirname(__file__), "alloc_probe.py")


@pytest.fixture(scope="module", params=["softmax_cross_entropy", "mse"])
def measured(request):
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    out = subprocess.run([sys.executable, PROBE, request.param], capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_compiled_epoch_allocates_nothing_per_step_or_per_layer(measured):
    # 3 epochs of 63 steps and 3 epochs of 16 steps, on a 2-layer and a 4-layer network
    assert measured["fit_nrt_shallow_batch16"] == measured["fit_nrt_shallow_batch64"]
    assert measured["fit_nrt_deep_batch16"] == measured["fit_nrt_deep_batch64"]
    assert measured["fit_nrt_shallow_batch16"] == measured["fit_nrt_deep_batch16"]


def test_train_step_allocates_nothing_per_layer_and_frees_what_numba_wraps(measured):
    alloc, free = measured["train_step_nrt_deep"]
    assert alloc == free
    assert measured["train_step_nrt_shallow"] == measured["train_step_nrt_deep"]


def test_train_step_makes_no_numpy_arrays(measured):
    # Any array the size of even the smallest layer buffer (40 rows x 64 outputs of float32)
    # would lift the peak past this; Python's own small objects stay well under it.
    assert measured["train_step_peak_bytes"] < measured["smallest_buffer_bytes"]
    assert measured["train_step_retained_bytes"] < measured["smallest_buffer_bytes"]
