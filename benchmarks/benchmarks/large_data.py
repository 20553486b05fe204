"""Training from a memory-mapped file against the same data in memory (docs/large-data.md).

The file is small enough to stay in the page cache (warm): this measures what gathering
batches from a mapping costs, not the disk.  benchmarks/larger_than_memory.py measures the
cold case and the memory of a fit on a file of several GB.
"""

import os
import shutil
import tempfile

import numpy as np

from fastmlp import SGD, Dense, Sequential

from .common import fastest

N_ROWS, N_FEATURES, BATCH = 1 << 16, 64, 256
SOURCES = ["ram", "mmap", "mmap-float64"]
SHUFFLES = ["full", "chunks"]


class FitFromFile:
    """One epoch of ``fit`` on 65536 rows of 64 features: ``ram`` (a float32 array in
    memory), ``mmap`` (the same values in a mapped float32 .npy), ``mmap-float64`` (a
    mapped float64 .npy into the float32 model: gathered and converted per batch)."""

    params = (SOURCES, SHUFFLES)
    param_names = ["source", "shuffle"]
    timeout = 300

    def setup(self, source, shuffle):
        rng = np.random.default_rng(0)
        X = rng.standard_normal((N_ROWS, N_FEATURES))
        self.y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0)
        self.directory = tempfile.mkdtemp(prefix="fastmlp-bench-")
        if source == "ram":
            self.X = X.astype(np.float32)
        else:
            path = os.path.join(self.directory, "X.npy")
            np.save(path, X if source == "mmap-float64" else X.astype(np.float32))
            self.X = np.load(path, mmap_mode="r")
        self.shuffle = True if shuffle == "full" else "chunks"
        self.model = Sequential([Dense(N_FEATURES, 128, activation="relu"), Dense(128, 3)],
                                optimizer=SGD(lr=0.01), seed=0)
        self.time_epoch(source, shuffle)  # compiles, and warms the page cache

    def teardown(self, source, shuffle):
        self.X = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def time_epoch(self, *params):
        self.model.fit(self.X, self.y, epochs=1, batch_size=BATCH, shuffle=self.shuffle)

    def track_samples_per_second(self, *params):
        seconds = fastest(self.time_epoch)
        return N_ROWS / seconds

    track_samples_per_second.unit = "samples/s"
