"""Run under mpiexec by tests/test_distributed.py: ``mpi_train.py MODE WORLD_SIZE OUT.json``.

Modes
-----
equal    equal shards, shuffle=False, softmax + SGD with momentum, then Adam; then shuffle=True
uneven   shards of different lengths (uneven last batches, a rank running out early), mse
bad      models or arguments that differ between ranks (caught), then rank 1 gets a NaN in
         X: every rank must raise the same ValueError
crash    rank 1 fails inside the training loop: the job must abort, not hang
threads  numba's thread count per rank during training: default, and chosen by the user
resume   ``mpi_train.py resume SIZE OUT.json DTYPE CHECKPOINT LENGTHS KILL``: fit(comm=...,
         checkpoint=CHECKPOINT ("-" for none), checkpoint_every=1, resume=True), shuffled,
         on shards of LENGTHS rows ("9,7"); KILL "rank:call" makes that rank SIGKILL itself
         at its call-th compute_gradients ("-1:0": never).  Records every rank's final state.

Rank 0 writes what it measured as JSON to OUT.json.  Every comparison with single-process
training is made on rank 0, against a model stepped with compute_gradients/apply_gradients
on the concatenation of the ranks' minibatches.
"""

import hashlib
import json
import os
import signal
import sys

import numpy as np
from mpi4py import MPI

import fastmlp
from fastmlp import SGD, Dense, Sequential
from fastmlp.distributed import fit_distributed

mode, expected_size, out_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
# A launcher from another MPI would start several independent size-1 worlds instead.
if size != expected_size:
    print(f"mpi_train.py: world size {size}, expected {expected_size} (mismatched mpiexec?)",
          file=sys.stderr, flush=True)
    sys.exit(3)

N_FEATURES, N_CLASSES = 5, 3


def make_model(seed, loss="softmax_cross_entropy", n_out=N_CLASSES, adam=False, dtype=np.float64):
    optimizer = fastmlp.Adam(lr=0.05) if adam else SGD(lr=0.2, momentum=0.9)
    return Sequential([Dense(N_FEATURES, 7, activation="tanh"), Dense(7, n_out)], loss=loss,
                      optimizer=optimizer, seed=seed, dtype=dtype)


def shards(lengths, targets="labels"):
    """Every rank's shard (the same global data on every rank, split by rank)."""
    data_rng = np.random.default_rng(7)
    out = []
    for n in lengths:
        X = data_rng.normal(size=(n, N_FEATURES))
        if targets == "labels":
            y = data_rng.integers(0, N_CLASSES, size=n)
        else:
            y = data_rng.normal(size=(n, 2))
        out.append((X, y))
    return out


def reference(model, parts, batch_size, epochs):
    """Single process: one step on the concatenation of each step's per-rank minibatches."""
    n_steps = max(-(-X.shape[0] // batch_size) for X, _ in parts)
    losses = []
    for _ in range(epochs):
        weighted, rows = 0.0, 0
        for k in range(n_steps):
            sl = slice(k * batch_size, (k + 1) * batch_size)
            Xc = np.concatenate([X[sl] for X, _ in parts])
            yc = np.concatenate([y[sl] for _, y in parts])
            weighted += model.compute_gradients(Xc, yc) * Xc.shape[0]
            rows += Xc.shape[0]
            model.apply_gradients()
        losses.append(weighted / rows)
    return losses


def gathered_params(model):
    everyone = comm.gather(model.params.copy(), root=0)
    steps = comm.gather(model.optimizer.step_count, root=0)
    return everyone, steps


def check_against_reference(result, key, model, history, parts, loss, n_out, batch_size, epochs,
                            adam=False):
    everyone, steps = gathered_params(model)
    if rank == 0:
        ref = make_model(0, loss, n_out, adam)
        ref_losses = reference(ref, parts, batch_size, epochs)
        result[key] = {
            "identical": all(np.array_equal(p, everyone[0]) for p in everyone),
            "steps": steps,
            "max_abs_diff": float(np.abs(everyone[0] - ref.params).max()),
            "loss_diff": float(np.abs(np.array(history["loss"]) - ref_losses).max()),
            "ref_steps": ref.optimizer.step_count,
        }


result = {"size": size}
if mode == "equal":
    parts = shards([12] * size)
    X, y = parts[rank]
    # Different seeds on purpose: rank 0's weights must reach every rank.
    model = make_model(seed=rank)
    # The public entry point: Sequential.fit(comm=...) hands over to fit_distributed.
    history = model.fit(X, y, epochs=2, batch_size=5, shuffle=False, comm=comm)
    check_against_reference(result, "equal", model, history, parts, "softmax_cross_entropy",
                            N_CLASSES, 5, 2)
    # Adam: two state slots and a step count (bias correction) to keep in step.
    model = make_model(seed=rank, adam=True)
    history = fit_distributed(model, X, y, comm, epochs=2, batch_size=5, shuffle=False)
    check_against_reference(result, "adam", model, history, parts, "softmax_cross_entropy",
                            N_CLASSES, 5, 2, adam=True)
    model = make_model(seed=10 + rank)
    history = fit_distributed(model, X, y, comm, epochs=2, batch_size=4, shuffle=True,
                              validation_data=(X, y))
    everyone, _ = gathered_params(model)
    hist = comm.gather(history.history, root=0)
    if rank == 0:
        result["shuffled"] = {
            "identical": all(np.array_equal(p, everyone[0]) for p in everyone),
            "same_history": all(h == hist[0] for h in hist),
            "keys": sorted(hist[0]),
        }
elif mode == "uneven":
    lengths = [9, 5, 2, 7][:size]
    parts = shards(lengths, targets="mse")
    X, y = parts[rank]
    model = make_model(seed=rank, loss="mse", n_out=2)
    history = fit_distributed(model, X, y, comm, epochs=2, batch_size=3, shuffle=False)
    check_against_reference(result, "uneven", model, history, parts, "mse", 2, 3, 2)
elif mode == "bad":
    X, y = shards([6] * size)[rank]
    # Refusals decided from allgathered values: caught on every rank, the job goes on.
    refusals = [
        dict(model=make_model(0, adam=rank == 1)),  # a different optimizer on rank 1
        dict(validation_data=(X, y) if rank == 0 else None),
    ]
    for kwargs in refusals:
        model = kwargs.pop("model", None) or make_model(0)
        try:
            fit_distributed(model, X, y, comm, epochs=1, batch_size=2, **kwargs)
        except ValueError as exc:
            print(f"rank {rank} refused: {exc}", flush=True)
    checkpoint = out_path + ".ck"
    refusals = [
        dict(checkpoint=checkpoint, checkpoint_every=0 if rank == 1 else 1),
        dict(checkpoint=checkpoint if rank == 0 else None),  # rank 1 would not gather
        dict(checkpoint=checkpoint, resume=rank == 0),
    ]
    for kwargs in refusals:
        try:
            make_model(0).fit(X, y, epochs=1, batch_size=2, comm=comm, **kwargs)
        except ValueError as exc:
            print(f"rank {rank} refused: {exc}", flush=True)
    # Rank 0 cannot write the checkpoint: every rank raises its OSError, none waits.
    import fastmlp.io as fio

    real_write = fio.atomic_write

    def full_disk(path, chunks):
        raise OSError(28, "No space left on device")

    if rank == 0:
        fio.atomic_write = full_disk
    try:
        make_model(0).fit(X, y, epochs=2, batch_size=2, comm=comm, checkpoint=checkpoint)
    except OSError as exc:
        print(f"rank {rank} refused: {exc}", flush=True)
    fio.atomic_write = real_write
    if rank == 1:
        X[2, 3] = np.nan
    fit_distributed(make_model(0), X, y, comm, epochs=1, batch_size=2)  # raises everywhere
elif mode == "crash":
    X, y = shards([6] * size)[rank]
    model = make_model(0)
    if rank == 1:
        calls = []
        original = model.compute_gradients

        def failing(*args):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("injected failure on rank 1")
            return original(*args)

        model.compute_gradients = failing
    fit_distributed(model, X, y, comm, epochs=1, batch_size=2)
    print(f"rank {rank} finished, which it must not", flush=True)
elif mode == "threads":
    import numba

    X, y = shards([4] * size)[rank]

    def counting_model():
        model, seen = make_model(0), []
        original = model.compute_gradients

        def recording(*args):
            seen.append(fastmlp.get_num_threads())
            return original(*args)

        model.compute_gradients = recording
        return model, seen

    before = fastmlp.get_num_threads()
    model, default = counting_model()
    fit_distributed(model, X, y, comm, epochs=1, batch_size=2)
    after = fastmlp.get_num_threads()
    os.environ["NUMBA_NUM_THREADS"] = str(numba.config.NUMBA_NUM_THREADS)  # "the user chose"
    model, user_set = counting_model()
    fit_distributed(model, X, y, comm, epochs=1, batch_size=2)
    result["threads"] = {"before": comm.gather(before, root=0),
                         "default": comm.gather(sorted(set(default)), root=0),
                         "after": comm.gather(after, root=0),
                         "user_set": comm.gather(sorted(set(user_set)), root=0),
                         "max": numba.config.NUMBA_NUM_THREADS}
elif mode == "resume":
    dtype, checkpoint, lengths, kill = sys.argv[4:8]
    kill_rank, kill_call = (int(v) for v in kill.split(":"))
    X, y = shards([int(n) for n in lengths.split(",")])[rank]
    model = make_model(seed=0, adam=True, dtype=np.dtype(dtype))
    if rank == kill_rank:
        calls, original = [], model.compute_gradients

        def dying(*args):
            calls.append(1)
            if len(calls) == kill_call:  # updates since the last checkpoint: in memory only
                print(f"rank {rank} kills itself", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args)

        model.compute_gradients = dying
    kwargs = {} if checkpoint == "-" else dict(checkpoint=checkpoint, checkpoint_every=1,
                                               resume=True)
    history = model.fit(X, y, epochs=8, batch_size=3, shuffle=True, validation_data=(X, y),
                        comm=comm, **kwargs)

    def digest(arr):
        return hashlib.sha256(arr.tobytes()).hexdigest()

    state = comm.gather({"params": digest(model.params), "optimizer": digest(model.optimizer.state),
                         "step_count": model.optimizer.step_count,
                         "rng": model._rng.bit_generator.state}, root=0)
    result["resume"] = {"ranks": state, "epoch": history.epoch, "history": history.history}
else:
    raise SystemExit(f"unknown mode {mode!r}")

if rank == 0:
    with open(out_path, "w") as f:
        json.dump(result, f)
