"""Start-up in a fresh interpreter: ``import fastmlp`` plus the first training step."""

FIRST_STEP = """
import numpy as np
import fastmlp
from fastmlp import Dense, Sequential, SGD
model = Sequential([Dense(64, 128, activation="relu"), Dense(128, 10)], optimizer=SGD(lr=0.01), seed=0)
X = np.random.default_rng(0).normal(size=(32, 64)).astype(np.float32)
model.train_step(X, np.arange(32) % 10)
"""


class StartUp:
    timeout = 600

    def setup_cache(self):
        # Warm numba's on-disk cache once, in a child, so the warm figure is warm.
        import subprocess
        import sys

        subprocess.run([sys.executable, "-c", FIRST_STEP], check=True)

    def timeraw_import_and_first_step_warm_cache(self):
        return FIRST_STEP

    def timeraw_import_and_first_step_cold_cache(self):
        # An empty cache of its own: every kernel the first step needs compiles.
        return "import os, tempfile; os.environ['NUMBA_CACHE_DIR'] = tempfile.mkdtemp()\n" + FIRST_STEP

    timeraw_import_and_first_step_cold_cache.number = 1
    timeraw_import_and_first_step_cold_cache.repeat = 1

    def timeraw_import_only(self):
        return "import fastmlp"
