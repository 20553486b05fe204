"""Numba's cache is dropped when any kernel source changes (numba checks only the file
that defines a function, not its callees')."""

import glob
import os

import fastmlp.kernels as kernels


def test_changed_kernel_sources_drop_the_cache():
    cache = os.path.join(os.path.dirname(kernels.__file__), "__pycache__")
    stamp = os.path.join(cache, "fastmlp-kernels.sha256")
    if not os.access(os.path.dirname(kernels.__file__), os.W_OK):
        raise AssertionError("this test needs a writable install (pip install '.[test]' into a venv)")
    with open(stamp) as f:
        current = f.read()
    assert glob.glob(os.path.join(cache, "*.nbi")), "the suite has compiled and cached kernels by now"
    sentinel = os.path.join(cache, "sentinel-0.py311.nbi")
    open(sentinel, "w").close()
    kernels._drop_stale_cache()  # sources unchanged: nothing is dropped
    assert os.path.exists(sentinel)
    with open(stamp, "w") as f:
        f.write("a stamp from other sources")
    kernels._drop_stale_cache()
    assert not os.path.exists(sentinel)
    assert not glob.glob(os.path.join(cache, "*.nb[ic]"))
    with open(stamp) as f:
        assert f.read() == current
