"""Run under mpiexec by tests/test_large_data.py: ``mpi_large_data.py DIR``.

DIR holds X.npy (float64, more rows than the ranks are given: the rows past the ranks'
slices hold a NaN, which no rank may read) and y.npy.  Each rank maps X.npy and takes its
contiguous slice; ``fit(comm=...)`` on the mapped slices (float64 into a float32 model,
shuffle="chunks") must end bit for bit where the same fit on the slices converted in
memory ends.  Rank 0 writes "ok" to DIR/result.txt.
"""

import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

from fastmlp import SGD, Dense, Sequential

directory = Path(sys.argv[1])
comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
X = np.load(directory / "X.npy", mmap_mode="r")
y = np.load(directory / "y.npy")
used = int((directory / "used_rows.txt").read_text())
lo, hi = rank * used // size, (rank + 1) * used // size


def fit(X_part):
    model = Sequential([Dense(X.shape[1], 8, activation="tanh"), Dense(8, 3)],
                       optimizer=SGD(lr=0.1), seed=0)
    model.fit(X_part, y[lo:hi], epochs=2, batch_size=16, comm=comm,
              shuffle="chunks")
    return model


mapped = fit(X[lo:hi])
in_memory = fit(np.ascontiguousarray(X[lo:hi], dtype=np.float32))
same = np.array_equal(mapped.params, in_memory.params)
if all(comm.allgather(same)) and rank == 0:
    (directory / "result.txt").write_text("ok")
