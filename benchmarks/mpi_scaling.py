"""Weak scaling of data-parallel training over MPI: 1 rank vs 2 ranks, 1 thread each.

    python benchmarks/mpi_scaling.py [--steps 5] [--batch 256] [--repeats 3] [--ranks 2]

The driver starts ``mpiexec -n 1`` and ``mpiexec -n R`` (the mpiexec beside this Python, on
loopback) on this same file.  Each rank trains a GEMM-bound network, 1024-2048-2048-10
(ReLU, softmax cross-entropy, float32, SGD with momentum), on ``batch`` rows per step of its
own (weak scaling: the per-rank batch stays fixed, so R ranks process R times the rows per
step), after one untimed step that compiles the kernels.  A run's time is the slowest rank's,
between two barriers.

Reported: samples/s for each world size and

    efficiency = (R-rank samples/s) / (R x 1-rank samples/s)

1.0 means perfect scaling; what is lost goes to the Allreduce of the gradient vector
(6.3 M parameters, 25 MB in float32) and to the ranks sharing memory bandwidth.  With
``--repeats`` the best run of each world size counts (a busy machine only slows runs down).
Needs R free cores to mean anything: on a shared or busy machine it measures the neighbours.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WIDTHS = (1024, 2048, 2048, 10)


def worker(steps, batch):
    import numpy as np
    from mpi4py import MPI

    import fastmlp
    from fastmlp import SGD, Dense, Sequential
    from fastmlp.distributed import fit_distributed

    comm = MPI.COMM_WORLD
    fastmlp.set_num_threads(1)  # one thread per rank: the comparison is ranks, not threads
    layers = [Dense(WIDTHS[k], WIDTHS[k + 1], activation="relu") for k in range(len(WIDTHS) - 2)]
    layers.append(Dense(WIDTHS[-2], WIDTHS[-1]))
    model = Sequential(layers, optimizer=SGD(lr=0.01, momentum=0.9), seed=0, dtype=np.float32)
    rng = np.random.default_rng(comm.Get_rank())
    X = rng.normal(size=(steps * batch, WIDTHS[0])).astype(np.float32)
    y = rng.integers(0, WIDTHS[-1], size=steps * batch)
    fit_distributed(model, X[:batch], y[:batch], comm, batch_size=batch, shuffle=False)  # compile
    comm.Barrier()
    start = time.perf_counter()
    fit_distributed(model, X, y, comm, batch_size=batch, shuffle=False)
    comm.Barrier()
    seconds = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
    if comm.Get_rank() == 0:
        samples = comm.Get_size() * steps * batch
        print(json.dumps({"ranks": comm.Get_size(), "seconds": seconds,
                          "samples_per_s": samples / seconds}), flush=True)


def launch(n, steps, batch):
    mpiexec = Path(sys.executable).parent / "mpiexec"
    env = dict(os.environ, UCX_NET_DEVICES="lo", HYDRA_IFACE="lo", NUMBA_NUM_THREADS="1")
    cmd = [str(mpiexec), "-launcher", "fork", "-n", str(n), sys.executable, __file__, "--worker",
           "--steps", str(steps), "--batch", str(batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256, help="rows per rank per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.batch)
        return
    print(f"network {'-'.join(map(str, WIDTHS))}, float32, batch {args.batch} per rank, "
          f"{args.steps} steps, 1 thread per rank, {os.cpu_count()} cores here")
    best = {}
    for _ in range(args.repeats):
        for n in (1, args.ranks):
            run = launch(n, args.steps, args.batch)
            print(f"  {n} rank(s): {run['seconds']:.3f} s, {run['samples_per_s']:.0f} samples/s")
            if n not in best or run["samples_per_s"] > best[n]["samples_per_s"]:
                best[n] = run
    one, many = best[1]["samples_per_s"], best[args.ranks]["samples_per_s"]
    print(f"best: 1 rank {one:.0f} samples/s, {args.ranks} ranks {many:.0f} samples/s")
    print(f"weak-scaling efficiency = {many:.0f} / ({args.ranks} x {one:.0f}) = "
          f"{many / (args.ranks * one):.3f}")


if __name__ == "__main__":
    main()
