"""Numba's cache is dropped when any kernel source changes (numba checks only the file
that defines a function, not its callees')."""

import os

from fastmlp.jitcache import drop_stale_cache


def test_changed_kernel_sources_drop_the_cache(tmp_path):
    kernels = tmp_path / "kernels"
    cache = kernels / "__pycache__"
    cache.mkdir(parents=True)
    (kernels / "dense.py").write_text("def f(): return 1\n")
    (tmp_path / "config.py").write_text("X = 1\n")
    drop_stale_cache(str(cache), str(kernels))
    cached = [cache / "dense.f-1.py311.nbi", cache / "dense.f-1.py311.1.nbc"]
    for path in cached:
        path.write_text("compiled")
    drop_stale_cache(str(cache), str(kernels))  # nothing changed: the cache stays
    assert all(path.exists() for path in cached)
    (tmp_path / "config.py").write_text("X = 2\n")  # a change outside the defining file
    drop_stale_cache(str(cache), str(kernels))
    assert not any(path.exists() for path in cached)
    for path in cached:
        path.write_text("compiled again")
    drop_stale_cache(str(cache), str(kernels))
    assert all(path.exists() for path in cached)
    assert sorted(os.listdir(cache)) == sorted([p.name for p in cached]
                                               + ["fastmlp-kernels.sha256", "fastmlp-compile.lock"])
