"""Numba kernels: pure functions over arrays the caller owns.

Nothing here validates input or allocates in a hot loop; the API layer above
(:mod:`fastmlp.sequential`) owns validation, state and buffers.

Numba's on-disk cache checks only the file that defines a function, not the files its
callees come from (numba #1833): after an edit to ``dense.py``, ``network.py``'s cached
code would still run the old ``dense_forward``.  So the cached kernels are dropped
whenever any kernel source differs from the last run's.
"""

import glob
import hashlib
import os


def _drop_stale_cache(here=os.path.dirname(os.path.abspath(__file__))):
    cache = os.path.join(here, "__pycache__")
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(here, "*.py"))) + glob.glob(os.path.join(here, "..", "config.py")):
        with open(path, "rb") as source:
            digest.update(source.read())
    stamp_path = os.path.join(cache, "fastmlp-kernels.sha256")
    try:
        with open(stamp_path) as stamp:
            if stamp.read() == digest.hexdigest():
                return
    except OSError:
        pass
    try:
        for stale in glob.glob(os.path.join(cache, "*.nb[ic]")):
            os.remove(stale)
        os.makedirs(cache, exist_ok=True)
        with open(stamp_path, "w") as stamp:
            stamp.write(digest.hexdigest())
    except OSError:  # a read-only install: numba then caches elsewhere, or not at all
        pass


_drop_stale_cache()
