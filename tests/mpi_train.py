"""Run under mpiexec by tests/test_distributed.py: ``mpi_train.py MODE WORLD_SIZE OUT.json``.

Modes
-----
equal    equal shards, shuffle=False, softmax + SGD with momentum, then Adam; then shuffle=True
uneven   shards of different lengths (uneven last batches, a rank running out early), mse
bad      models or arguments that differ between ranks (caught), then rank 1 gets a NaN in
         X: every rank must raise the same ValueError
crash    rank 1 fails inside the training loop: the job must abort, not hang
threads  numba's thread count per rank during training: default, and chosen by the user
options  sample_weight, class_weight="balanced" (classes spread unevenly over the ranks),
         validation_split and callbacks: uneven shards against single-process steps on the
         concatenated batches; equal shards against a single-process fit with StepDecay and
         EarlyStopping; a stop requested on one rank; a divergence with EarlyStopping
resume   ``mpi_train.py resume SIZE OUT.json DTYPE CHECKPOINT LENGTHS KILL [CALLBACKS]``:
         fit(comm=..., checkpoint=CHECKPOINT ("-" for none), checkpoint_every=1, resume=True),
         shuffled, on shards of LENGTHS rows ("9,7"); KILL "rank:call" makes that rank SIGKILL
         itself at its call-th compute_gradients ("-1:0": never).  CALLBACKS "plateau": with
         ReduceLROnPlateau and EarlyStopping, validation_split=0.25, sample and class weights
         ("plateau-only": the same without EarlyStopping).
         Records every rank's final state.

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
# tests/test_distributed.py reads each rank's output from its own file.  Every write of this
# rank (Python's, with PYTHONUNBUFFERED, and C libraries') goes straight into it: nothing
# interleaves with another rank's, and nothing is left in a launcher's pipe when MPI_Abort
# ends the job (a traceback written just before the abort was lost that way under load).
if os.environ.get("FASTMLP_TEST_LOG_DIR"):
    sys.stdout.flush()
    sys.stderr.flush()
    _log = os.open(os.path.join(os.environ["FASTMLP_TEST_LOG_DIR"], f"rank-{rank}.log"),
                   os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(_log, 1)
    os.dup2(_log, 2)
    os.close(_log)
# A launcher from another MPI would start several independent size-1 worlds instead.
if size != expected_size:
    print(f"mpi_train.py: world size {size}, expected {expected_size} (mismatched mpiexec?)",
          file=sys.stderr, flush=True)
    sys.exit(3)
# Under tests/test_blas_families.py every rank must run the forced OpenBLAS kernel family.
expected_family = os.environ.get("FASTMLP_TEST_EXPECT_BLAS_FAMILY")
if expected_family:
    from fastmlp.threads import fastmlp_blas_libraries

    families = {lib.filepath: getattr(lib, "architecture", None)
                for lib in fastmlp_blas_libraries().lib_controllers}
    if not families or set(families.values()) != {expected_family}:
        print(f"mpi_train.py: rank {rank}: expected OpenBLAS family {expected_family}, "
              f"threadpoolctl reports {families}", file=sys.stderr, flush=True)
        sys.exit(4)

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


def reference(model, parts, batch_size, epochs, weights=None, validation=None):
    """Single process: one step on the concatenation of each step's per-rank minibatches.

    ``weights``: per rank, its rows' sample weights.  ``validation``: (X_val, y_val),
    evaluated after every epoch.  Returns the History-shaped metrics; for classifiers the
    accuracy counts the rows ``model.predict`` gets right just before their step.
    """
    n_steps = max(-(-X.shape[0] // batch_size) for X, _ in parts)
    out = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": [], "grad_norm": []}
    for _ in range(epochs):
        weighted, rows, correct, norms = 0.0, 0, 0, []
        for k in range(n_steps):
            sl = slice(k * batch_size, (k + 1) * batch_size)
            Xc = np.concatenate([X[sl] for X, _ in parts])
            yc = np.concatenate([y[sl] for _, y in parts])
            wc = None if weights is None else np.concatenate([w[sl] for w in weights])
            if model.is_classifier:
                correct += int((model.predict(Xc) == yc).sum())
            weighted += model.compute_gradients(Xc, yc, sample_weight=wc) * Xc.shape[0]
            rows += Xc.shape[0]
            norm = model.apply_gradients()  # clips first, when the optimizer does
            if norm is not None:
                norms.append(norm)
        if norms:
            out["grad_norm"].append(float(np.mean(norms)))
        out["loss"].append(weighted / rows)
        out["accuracy"].append(correct / rows)
        if validation is not None:
            scores = model.evaluate(*validation)
            out["val_loss"].append(scores["loss"])
            out["val_accuracy"].append(scores.get("accuracy"))
    return out


def gathered_params(model):
    everyone = comm.gather(model.params.copy(), root=0)
    steps = comm.gather(model.optimizer.step_count, root=0)
    return everyone, steps


def check_against_reference(result, key, model, history, parts, loss, n_out, batch_size, epochs,
                            adam=False):
    everyone, steps = gathered_params(model)
    if rank == 0:
        ref = make_model(0, loss, n_out, adam)
        ref_metrics = reference(ref, parts, batch_size, epochs)
        result[key] = {
            "identical": all(np.array_equal(p, everyone[0]) for p in everyone),
            "steps": steps,
            "max_abs_diff": float(np.abs(everyone[0] - ref.params).max()),
            "loss_diff": float(np.abs(np.array(history["loss"]) - ref_metrics["loss"]).max()),
            "ref_steps": ref.optimizer.step_count,
            "accuracy": [history.history.get("accuracy"), ref_metrics["accuracy"]],
            "lr": history["lr"],
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

    # Clipping acts on the all-reduced gradient: every step must equal one process's step
    # that clips the gradient of the concatenated batch (clipping each rank's share before
    # the reduction would not).  gelu and Huber ride along.
    def clipped_model(seed):
        return Sequential([Dense(N_FEATURES, 7, activation="gelu"), Dense(7, 2)],
                          loss=fastmlp.Huber(delta=0.5),
                          optimizer=SGD(lr=0.2, momentum=0.9, clip_norm=0.05), seed=seed,
                          dtype=np.float64)

    model = clipped_model(rank)
    history = fit_distributed(model, X, y, comm, epochs=2, batch_size=3, shuffle=False)
    everyone, steps = gathered_params(model)
    if rank == 0:
        ref = clipped_model(0)
        ref_metrics = reference(ref, parts, 3, 2)
        result["clipped"] = {
            "identical": all(np.array_equal(p, everyone[0]) for p in everyone),
            "max_abs_diff": float(np.abs(everyone[0] - ref.params).max()),
            "loss_diff": float(np.abs(np.array(history["loss"]) - ref_metrics["loss"]).max()),
            "grad_norm": [history["grad_norm"], ref_metrics["grad_norm"]],
        }
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

    # The new arguments and callbacks, bad on one rank (or unequal): every rank refuses
    # before training; during training, a callback's failure or a rate changed on one rank
    # only is raised on every rank after on_train_end ran everywhere.
    from fastmlp.callbacks import Callback, EarlyStopping

    class Refuse(Callback):
        def on_train_begin(self, logs):
            raise ValueError("this callback refuses to start")

    class FailAt(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 2:
                raise KeyError("a callback failed")

    class RaiseRate(Callback):
        def on_epoch_begin(self, epoch, logs):
            self.model.optimizer.lr = 0.05

    class Ended(Callback):
        def on_train_end(self, logs):
            print(f"rank {rank} on_train_end: {type(logs['error']).__name__}", flush=True)

    def on_rank_1(bad, good=None):
        return bad if rank == 1 else good

    refusals = [
        dict(callbacks=on_rank_1([object()])),
        dict(validation_split=on_rank_1(1.5, 0.0)),
        dict(sample_weight=on_rank_1(np.ones(4))),
        dict(class_weight=on_rank_1({0: 2.0}, {0: 1.0})),
        dict(class_weight={0: 0.0, 1: 0.0, 2: 0.0}),  # every row of every rank weighs 0
        dict(callbacks=on_rank_1([EarlyStopping("loss")], [])),
        dict(callbacks=on_rank_1([Refuse()], [])),
        dict(callbacks=[Ended()] + on_rank_1([FailAt()], []), epochs=3),
        dict(callbacks=[Ended()] + on_rank_1([RaiseRate()], []), epochs=3),
    ]
    for kwargs in refusals:
        kwargs.setdefault("epochs", 1)
        try:
            make_model(0).fit(X, y, batch_size=2, comm=comm, **kwargs)
        except (ValueError, TypeError, RuntimeError) as exc:
            print(f"rank {rank} refused: {type(exc).__name__}: {exc}", flush=True)
    # Rows weighing 0 on one rank only are fine.
    history = make_model(0).fit(X, y, epochs=1, batch_size=2, comm=comm,
                                sample_weight=on_rank_1(np.zeros(6)))
    print(f"rank {rank} trained with rank 1's rows weighing 0: {history.epoch}", flush=True)
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
elif mode == "options":
    from fastmlp.callbacks import Callback, EarlyStopping, StepDecay

    def skewed(lengths, seed):
        """Shards whose classes are spread unevenly: rank r's labels lean towards class r."""
        data_rng = np.random.default_rng(seed)
        out = []
        for r, n in enumerate(lengths):
            X = data_rng.normal(size=(n, N_FEATURES))
            y = np.where(data_rng.random(n) < 0.7, r % N_CLASSES, data_rng.integers(0, N_CLASSES, n))
            w = data_rng.uniform(0.0, 2.0, size=n)
            out.append((X, y, w))
        return out

    def balanced(parts):
        """class_weight="balanced" over every rank's rows, written out: n / (k * n_c)."""
        labels = np.concatenate([y for _, y, _ in parts])
        counts = np.bincount(labels, minlength=N_CLASSES)
        return labels.shape[0] / (N_CLASSES * np.maximum(counts, 1))

    # ---- A. uneven shards, weights, "balanced", validation_split: single-process steps
    lengths = [10, 7, 4][:size]
    parts = skewed(lengths, 11)
    parts[-1][2][:] = 0.0  # the last rank's rows all weigh 0: allowed, the others' do not
    table = balanced(parts)
    n_train = [int(n * 0.7) for n in lengths]
    X, y, w = parts[rank]
    model = make_model(seed=rank)
    history = model.fit(X, y, epochs=2, batch_size=3, shuffle=False, validation_split=0.3,
                        sample_weight=w, class_weight="balanced", verbose=1, comm=comm)
    everyone, steps = gathered_params(model)
    grads = comm.gather(model.flat_gradients.copy(), root=0)  # the last step's reduced one
    if rank == 0:
        ref = make_model(0)
        train = [(Xr[:k], yr[:k]) for (Xr, yr, _), k in zip(parts, n_train)]
        weights = [wr[:k] * table[yr[:k]] for (_, yr, wr), k in zip(parts, n_train)]
        val = (np.concatenate([Xr[k:] for (Xr, _, _), k in zip(parts, n_train)]),
               np.concatenate([yr[k:] for (_, yr, _), k in zip(parts, n_train)]))
        expected = reference(ref, train, 3, 2, weights, val)
        # Per-rank "balanced" weights would weigh the classes differently: the check can fail.
        local = [wr[:k] * balanced([(None, yr, None)])[yr[:k]]
                 for (_, yr, wr), k in zip(parts, n_train)]
        result["steps"] = {
            "identical": all(np.array_equal(p, everyone[0]) for p in everyone),
            "same_grads": all(np.array_equal(g, grads[0]) for g in grads),
            "grad_diff": float(np.abs(grads[0] - ref.flat_gradients).max()),
            "grad_scale": float(np.abs(ref.flat_gradients).max()),
            "max_abs_diff": float(np.abs(everyone[0] - ref.params).max()),
            "steps": steps, "ref_steps": ref.optimizer.step_count,
            "history": history.history, "expected": expected,
            "local_differs": float(max(np.abs(a - b).max() for a, b in zip(local, weights))),
        }

    # ---- B. equal shards with StepDecay and EarlyStopping: a single-process fit
    parts = [(Xr, yr, np.random.default_rng(13 + r).uniform(0.5, 1.5, size=10))
             for r, (Xr, yr) in enumerate(shards([10] * size))]
    X, y, w = parts[rank]
    stop = EarlyStopping(monitor="val_loss", patience=3)
    model = make_model(seed=rank)
    history = model.fit(X, y, epochs=30, batch_size=4, shuffle=False, validation_split=0.2,
                        sample_weight=w, class_weight="balanced", verbose=2, comm=comm,
                        callbacks=[StepDecay(step_size=1, gamma=0.7), stop])
    everyone, _ = gathered_params(model)
    stops = comm.gather((stop.stopped_epoch, stop.restored_epoch, history.epoch), root=0)
    hist = comm.gather(history.history, root=0)
    if rank == 0:
        # The same rows in one process: each step's per-rank batches side by side, then
        # every rank's held-out tail (fit's validation_split takes the last rows).
        order = [(r, i) for k in range(2) for r in range(size) for i in range(4 * k, 4 * k + 4)]
        order += [(r, i) for r in range(size) for i in range(8, 10)]
        Xs, ys, ws = (np.array([parts[r][j][i] for r, i in order]) for j in range(3))
        single_stop = EarlyStopping(monitor="val_loss", patience=3)
        single = make_model(seed=0)
        single_history = single.fit(Xs, ys, epochs=30, batch_size=4 * size, shuffle=False,
                                    validation_split=0.2, sample_weight=ws,
                                    class_weight="balanced",
                                    callbacks=[StepDecay(step_size=1, gamma=0.7), single_stop])
        result["fit"] = {
            "identical": all(np.array_equal(p, everyone[0]) for p in everyone),
            "same_history": all(h == hist[0] for h in hist),
            "stops": stops,
            "single_stop": [single_stop.stopped_epoch, single_stop.restored_epoch,
                            single_history.epoch],
            "history": history.history, "single": single_history.history,
            "max_abs_diff": float(np.abs(everyone[0] - single.params).max()),
        }

    # ---- C. a stop requested by a callback on rank 1 only; a logger on rank 0 only
    class StopAt(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 2:
                self.model.stop_training = True

    class Logger(Callback):
        def __init__(self):
            self.seen = []

        def on_epoch_end(self, epoch, logs):
            self.seen.append(logs)

    logger = Logger()
    mine = [StopAt()] if rank == 1 else [logger] if rank == 0 else []
    history = make_model(seed=0).fit(X, y, epochs=5, batch_size=4, comm=comm, callbacks=mine)
    epochs_run = comm.gather(history.epoch, root=0)
    if rank == 0:
        result["stop"] = {"epochs": epochs_run,
                          "logger_matches": logger.seen == [
                              {k: v[i] for k, v in history.history.items()}
                              for i in range(len(history.epoch))]}

    # ---- E. binary cross-entropy, one output: "balanced" reads classes 0/1 from the targets
    lengths = [8, 5, 6][:size]
    data_rng = np.random.default_rng(14)
    parts = [(data_rng.normal(size=(n, N_FEATURES)), (data_rng.random(n) < 0.25 + 0.5 * r).astype(int))
             for r, n in enumerate(lengths)]
    Xb, yb = parts[rank]
    model = make_model(seed=rank, loss="binary_cross_entropy", n_out=1)
    history = model.fit(Xb, yb, epochs=2, batch_size=3, shuffle=False, class_weight="balanced",
                        comm=comm)
    everyone, _ = gathered_params(model)
    if rank == 0:
        ref = make_model(0, loss="binary_cross_entropy", n_out=1)
        labels = np.concatenate([yr for _, yr in parts])
        table = labels.shape[0] / (2 * np.bincount(labels, minlength=2))
        expected = reference(ref, parts, 3, 2, [table[yr] for _, yr in parts])
        result["binary"] = {
            "max_abs_diff": float(np.abs(everyone[0] - ref.params).max()),
            "loss_diff": float(np.abs(np.array(history["loss"]) - expected["loss"]).max()),
            "accuracy": [history["accuracy"], expected["accuracy"]],
        }

    # ---- D. a divergence ends the run: EarlyStopping restores the best epoch everywhere
    class Blowup(Callback):
        def __init__(self):
            self.snapshots = {}

        def on_epoch_begin(self, epoch, logs):
            if epoch == 4:
                self.model.optimizer.lr = 1e308

        def on_epoch_end(self, epoch, logs):
            self.snapshots[epoch] = self.model.params.copy()

    model = make_model(seed=0)
    blowup, stop = Blowup(), EarlyStopping(monitor="loss", patience=5)
    try:
        model.fit(X, y, epochs=6, batch_size=4, shuffle=True, comm=comm, callbacks=[blowup, stop])
        diverged = None
    except fastmlp.DivergenceError as exc:
        diverged = str(exc)
    everyone, _ = gathered_params(model)
    restored = comm.gather(stop.restored_epoch, root=0)
    if rank == 0:
        result["diverged"] = {
            "message": diverged, "restored": restored, "history": model.history.epoch,
            "identical": all(np.array_equal(p, everyone[0]) for p in everyone),
            "is_best": bool(np.array_equal(everyone[0], blowup.snapshots[restored[0]])),
        }
elif mode == "resume":
    dtype, checkpoint, lengths, kill = sys.argv[4:8]
    with_callbacks = sys.argv[8:] in (["plateau"], ["plateau-only"])
    kill_rank, kill_call = (int(v) for v in kill.split(":"))
    X, y = shards([int(n) for n in lengths.split(",")])[rank]
    if with_callbacks:  # something to learn, so that val_loss falls before it rises
        noise = np.random.default_rng(100 + rank).normal(size=(X.shape[0], N_CLASSES))
        y = np.argmax(X[:, :N_CLASSES] + noise, axis=1)
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
    if with_callbacks:
        from fastmlp.callbacks import EarlyStopping, ReduceLROnPlateau

        plateau = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=0, threshold=0.05)
        stop = EarlyStopping(monitor="val_loss", patience=3)
        weights = np.random.default_rng(rank).uniform(0.5, 1.5, size=X.shape[0])
        history = model.fit(X, y, epochs=20, batch_size=3, shuffle=True, validation_split=0.25,
                            sample_weight=weights, class_weight="balanced",
                            callbacks=[plateau, stop][:1 if sys.argv[8] == "plateau-only" else 2],
                            comm=comm, **kwargs)
    else:
        history = model.fit(X, y, epochs=8, batch_size=3, shuffle=True, validation_data=(X, y),
                            comm=comm, **kwargs)

    def digest(arr):
        return hashlib.sha256(arr.tobytes()).hexdigest()

    state = comm.gather({"params": digest(model.params), "optimizer": digest(model.optimizer.state),
                         "step_count": model.optimizer.step_count,
                         "rng": model._rng.bit_generator.state}, root=0)
    result["resume"] = {"ranks": state, "epoch": history.epoch, "history": history.history}
    if with_callbacks:
        result["resume"]["callbacks"] = comm.gather(
            {"lr": model.optimizer.lr, "best": plateau.best, "bad_epochs": plateau.bad_epochs,
             "stopped": stop.stopped_epoch, "restored": stop.restored_epoch}, root=0)
elif mode == "dropout":  # masks per rank from rank 0's key; replicas agree; resume exact
    from fastmlp import Dropout, LayerNorm
    from fastmlp.compiled import MASK_OFFSET

    checkpoint = sys.argv[4]

    def dropout_model():
        # seed=None: every rank draws another key, and the fit must use rank 0's.
        return Sequential([Dense(N_FEATURES, 7, activation="tanh"), LayerNorm(), Dropout(0.5),
                           Dense(7, N_CLASSES)], optimizer=SGD(lr=0.2, momentum=0.9),
                          seed=None, dtype=np.float64)

    X, y = shards([9] * size)[rank]
    model = dropout_model()
    model.fit(X[:3], y[:3], epochs=1, batch_size=3, shuffle=False, comm=comm)
    ws = model._train_workspace.net
    start = ws.buffer_offsets[2, MASK_OFFSET]
    mask = ws.mask[start:start + 3 * 7].reshape(3, 7)
    keys = comm.gather((model.dropout_seed, model.dropout_stream), root=0)
    masks = comm.gather((mask != 0).tolist(), root=0)

    def digest(arr):
        return hashlib.sha256(arr.tobytes()).hexdigest()

    first = dropout_model()
    first.fit(X, y, epochs=2, batch_size=3, comm=comm, checkpoint=checkpoint)
    if rank == 0:
        with open(checkpoint, "rb") as src, open(checkpoint + ".copy", "wb") as dst:
            dst.write(src.read())
    comm.Barrier()
    first.fit(X, y, epochs=4, batch_size=3, comm=comm, checkpoint=checkpoint, resume=True)
    resumed = dropout_model()  # another key of its own until the checkpoint's replaces it
    resumed.fit(X, y, epochs=4, batch_size=3, comm=comm, checkpoint=checkpoint + ".copy",
                resume=True)
    state = comm.gather({"first": digest(first.params), "resumed": digest(resumed.params),
                         "key": first.dropout_seed, "resumed_key": resumed.dropout_seed}, root=0)
    result["dropout"] = {"keys": keys, "masks": masks, "state": state}
else:
    raise SystemExit(f"unknown mode {mode!r}")

if rank == 0:
    with open(out_path, "w") as f:
        json.dump(result, f)
