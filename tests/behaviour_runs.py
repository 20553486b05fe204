"""A fixed set of training runs reduced to sha256 hashes, to prove a refactor changed no bit.

Each run trains a small model (single process, or 2 MPI ranks) through one corner of the
training API -- SGD with momentum and Adam, callbacks and schedules, early stopping,
validation_split and validation_data, sample and class weights, checkpoint and resume,
progress output, the step API, a divergence, the scikit-learn wrappers -- and is reduced
to one hash of everything it produced: final parameters, optimizer state and step count,
RNG state, History (epochs and every metric's exact float), the stateful callbacks' state
and the printed ``verbose=2`` lines (their timings cut out).

Used by tests/test_behaviour_hashes.py, and on its own:

``python tests/behaviour_runs.py record``
    run everything (the MPI part under ``mpiexec -n 2``) and store the hashes in
    tests/behaviour_hashes.json under this machine's key (:func:`machine_key`).
``python tests/behaviour_runs.py mpi OUT.json``
    under ``mpiexec -n 2``: the MPI runs; rank 0 writes their hashes to OUT.json.

Why a key: float results are bit-stable only on one software and hardware stack.  The
BLAS numba calls picks its inner kernels by CPU family (threadpoolctl's ``architecture``:
``Haswell``, ``SkylakeX``, ...), numba compiles for the host CPU (LLVM's name for it:
vector width changes how fastmath's ``reassoc`` regroups sums), and numpy, numba, scipy
(its OpenBLAS) may change rounding between releases.  Hashes recorded under one key say
nothing about another.
"""

import contextlib
import hashlib
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
STORE = HERE / "behaviour_hashes.json"
#: Every run trains on one numba thread: the thread count is part of what a seed promises.
THREADS = 1


def machine_key():
    """What the hashes depend on besides the code, as one string."""
    import llvmlite.binding as llvm
    import numba
    import scipy

    from fastmlp.threads import fastmlp_blas_libraries

    blas = fastmlp_blas_libraries().info()
    blas = ",".join(sorted(f"{b.get('internal_api')}-{b.get('version')}-{b.get('architecture')}"
                           for b in blas)) or "no-blas-found"
    return (f"blas={blas}|cpu={llvm.get_host_cpu_name()}|numpy={np.__version__}|"
            f"numba={numba.__version__}|scipy={scipy.__version__}")


# ----------------------------------------------------------------------------- hashing
def _hash(*parts):
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(str((part.dtype.str, part.shape)).encode())
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            # repr of a float is exact (shortest round-trip), so json keeps every bit.
            h.update(json.dumps(part, sort_keys=True, default=repr).encode())
        h.update(b"\0")
    return h.hexdigest()


def _callback_states(callbacks):
    out = []
    for callback in callbacks:
        fields, arrays = callback.get_state() or (None, {})
        out.append([type(callback).__name__, fields] + [arrays[k] for k in sorted(arrays)])
    return out


def model_hash(model, history=None, callbacks=(), printed=""):
    """One hash of a trained model and what its fit returned and printed."""
    opt = model.optimizer
    parts = [model.params, opt.state, int(opt.step_count), model._rng.bit_generator.state]
    if history is not None:
        parts += [history.epoch, history.history]
    for entry in _callback_states(callbacks):
        parts += entry
    # Seconds differ between runs; everything else a line says must not.
    parts.append(re.sub(r"\d+\.\d+s\b", "<t>s", printed))
    return _hash(*parts)


@contextlib.contextmanager
def _captured():
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer


# ----------------------------------------------------------------------------- data
def _data(n, n_features=4, seed=11):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, n_features))
    labels = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    return X, labels, rng


def _model(loss="softmax_cross_entropy", n_out=3, optimizer=None, dtype=np.float64, seed=3,
           maxout=False):
    from fastmlp import SGD, Dense, Maxout, Sequential

    hidden = Maxout(4, 6, 2) if maxout else Dense(4, 6, activation="tanh")
    return Sequential([hidden, Dense(6, n_out)], loss=loss,
                      optimizer=optimizer if optimizer is not None else SGD(lr=0.1, momentum=0.9),
                      seed=seed, dtype=dtype)


# ----------------------------------------------------------------------------- single process
def _sgd_callbacks(verbose):
    from fastmlp.callbacks import EarlyStopping, StepDecay

    X, y, rng = _data(60)
    w = rng.uniform(0.2, 2.0, size=60)
    model = _model()
    callbacks = [StepDecay(step_size=2, gamma=0.6), EarlyStopping("val_loss", patience=2)]
    with _captured() as out:
        history = model.fit(X, y, epochs=12, batch_size=7, validation_split=0.25,
                            sample_weight=w, class_weight="balanced", callbacks=callbacks,
                            verbose=verbose)
    # verbose=1 draws a bar whose text holds rates and timings: its printout is not hashed,
    # its numbers are (it runs each epoch's steps in slices, which must change no bit).
    return model_hash(model, history, callbacks, out.getvalue() if verbose == 2 else "")


def _adam_plateau():
    from fastmlp import Adam
    from fastmlp.callbacks import ReduceLROnPlateau

    X, _, rng = _data(50, seed=5)
    Y = np.stack([X[:, 0] - X[:, 2], X[:, 1] * 0.5], axis=1)
    X_val, Y_val = X[:10] + 0.1, Y[:10]
    model = _model("mse", 2, Adam(lr=0.02), dtype=np.float32)
    plateau = ReduceLROnPlateau("val_loss", factor=0.5, patience=0, threshold=0.02)
    with _captured() as out:
        history = model.fit(X, Y, epochs=7, batch_size=8, validation_data=(X_val, Y_val),
                            sample_weight=rng.uniform(0.5, 1.5, size=50), callbacks=[plateau],
                            verbose=2)
    return model_hash(model, history, [plateau], out.getvalue())


def _binary_class_weight():
    from fastmlp import AdamW

    X, _, _ = _data(45, seed=8)
    y = (X[:, 0] + 0.3 * X[:, 3] > 0.4).astype(int)
    model = _model("binary_cross_entropy", 1, AdamW(lr=0.03), dtype=np.float32)
    history = model.fit(X, y, epochs=5, batch_size=10, shuffle=False,
                        class_weight={0: 1.0, 1: 3.0})
    return model_hash(model, history)


def _hinge_maxout():
    from fastmlp import SGD
    from fastmlp.callbacks import CosineAnnealing

    X, y, _ = _data(40, seed=9)
    model = _model("multiclass_hinge", 3, SGD(lr=0.05), maxout=True)
    schedule = CosineAnnealing(period=6)
    history = model.fit(X, y, epochs=6, batch_size=40, callbacks=[schedule])
    return model_hash(model, history, [schedule])


class _Crash(Exception):
    pass


def _checkpointed(interrupt_at=None):
    """Adam with ReduceLROnPlateau and EarlyStopping, a checkpoint every epoch; with
    ``interrupt_at`` the first fit dies as that epoch begins and a fresh model resumes."""
    from fastmlp import Adam
    from fastmlp.callbacks import Callback, EarlyStopping, ReduceLROnPlateau

    X, y, rng = _data(48, seed=12)
    w = rng.uniform(0.5, 1.5, size=48)

    class CrashAt(Callback):
        def on_epoch_begin(self, epoch, logs):
            if epoch == interrupt_at:
                raise _Crash

    def run(crash):
        model = _model(optimizer=Adam(lr=0.03))
        callbacks = [ReduceLROnPlateau("val_loss", factor=0.5, patience=1),
                     EarlyStopping("val_loss", patience=4)]
        model.fit(X, y, epochs=9, batch_size=5, validation_split=0.2, sample_weight=w,
                  class_weight={0: 2.0}, callbacks=callbacks + crash,
                  checkpoint=path, resume=True)
        # A resumed fit's History holds its own epochs only: compare the final state.
        return model_hash(model, None, callbacks)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "run.fmlp")
        if interrupt_at is not None:
            try:
                run([CrashAt()])
            except _Crash:
                pass
        return run([])


def _steps():
    """The step API by hand: train_step, compute/apply_gradients, evaluate, predictions."""
    from fastmlp import SGD

    X, y, rng = _data(30, seed=4)
    model = _model(optimizer=SGD(lr=0.2, momentum=0.5, nesterov=True), dtype=np.float32)
    losses = []
    for start in range(0, 30, 8):
        losses.append(model.train_step(X[start:start + 8], y[start:start + 8],
                                       sample_weight=rng.uniform(0.5, 1.5, size=len(X[start:start + 8]))))
    losses.append(model.compute_gradients(X, y))
    grads = model.flat_gradients.copy()
    model.apply_gradients()
    return _hash(model.params, model.optimizer.state, model.optimizer.step_count, losses, grads,
                 model.evaluate(X, y), model.predict(X), model.predict_proba(X),
                 model.decision_function(X), model.score(X, y))


def _divergence():
    import fastmlp
    from fastmlp.callbacks import Callback, EarlyStopping

    class Blowup(Callback):
        def on_epoch_begin(self, epoch, logs):
            if epoch == 3:
                self.model.optimizer.lr = 1e308

    X, y, _ = _data(40, seed=6)
    model = _model()
    stop = EarlyStopping("loss", patience=3)
    try:
        model.fit(X, y, epochs=5, batch_size=4, callbacks=[Blowup(), stop])
        message = None
    except fastmlp.DivergenceError as exc:
        message = str(exc)
    assert message is not None, "this run is meant to diverge"
    return model_hash(model, model.history, [stop], message)


def _sklearn():
    from fastmlp.sklearn import MLPClassifier, MLPRegressor

    X, y, rng = _data(80, seed=13)
    clf = MLPClassifier(hidden_layer_sizes=(6,), max_iter=25, early_stopping=True,
                        validation_fraction=0.2, n_iter_no_change=3, random_state=0,
                        learning_rate_init=0.05, dtype="float64")
    clf.fit(X, y, sample_weight=rng.uniform(0.5, 1.5, size=80))
    # float32 explicitly: the runs were recorded when it was the default (now dtype=None
    # follows the float64 data).
    clf2 = MLPClassifier(hidden_layer_sizes=(5,), optimizer="sgd", random_state=1, batch_size=16,
                         learning_rate_init=0.1, dtype="float32")
    for _ in range(3):
        clf2.partial_fit(X, y, classes=[0, 1, 2])
    reg = MLPRegressor(hidden_layer_sizes=(5,), max_iter=8, random_state=2, tol=0.0,
                       dtype="float32")
    reg.fit(X, X[:, 0] - X[:, 1])
    return _hash(*[getattr(m, name) for m in (clf, clf2, reg)
                   for name in ("loss_curve_", "n_iter_", "best_loss_")],
                 clf.validation_scores_, clf.best_validation_score_,
                 clf.model_.params, clf.model_.optimizer.state, clf2.model_.params,
                 clf2.model_.optimizer.state, reg.model_.params, reg.model_.optimizer.state)


SINGLE_RUNS = {
    "sgd_momentum_callbacks_weights_split_verbose2": lambda: _sgd_callbacks(2),
    "sgd_momentum_callbacks_weights_split_verbose1": lambda: _sgd_callbacks(1),
    "adam_mse_plateau_validation_data_float32": _adam_plateau,
    "adamw_binary_class_weight_no_shuffle_float32": _binary_class_weight,
    "sgd_hinge_maxout_cosine_full_batch": _hinge_maxout,
    "adam_checkpoint_uninterrupted": lambda: _checkpointed(None),
    "adam_checkpoint_interrupted_at_4_resumed": lambda: _checkpointed(4),
    "step_api_and_predictions_float32": _steps,
    "divergence_with_early_stopping": _divergence,
    "sklearn_classifier_early_stopping_partial_fit_regressor": _sklearn,
}

#: Runs that must give the same hash on any machine, however the loop is written:
#: (name, name, why).
MUST_AGREE = [
    ("sgd_momentum_callbacks_weights_split_verbose1",
     "sgd_momentum_callbacks_weights_split_verbose0",
     "a progress bar runs each epoch's steps in slices; it must not change a bit"),
    ("adam_checkpoint_uninterrupted", "adam_checkpoint_interrupted_at_4_resumed",
     "a resumed run ends bit-identical to one that never stopped"),
    ("mpi_sgd_uninterrupted", "mpi_sgd_interrupted_at_3_resumed",
     "a resumed MPI run ends bit-identical to one that never stopped"),
]


def single_process_runs():
    import fastmlp

    with fastmlp.threads(THREADS):
        out = {name: run() for name, run in SINGLE_RUNS.items()}
        # The twin of verbose=1 without any output (not stored: it is only compared).
        out["sgd_momentum_callbacks_weights_split_verbose0"] = _sgd_callbacks(0)
    return out


# ----------------------------------------------------------------------------- 2 MPI ranks
def mpi_runs(comm):
    """Under mpiexec: every run's hash of every rank's result, combined (rank 0's dict)."""
    from fastmlp import Adam
    from fastmlp.callbacks import Callback, EarlyStopping, ReduceLROnPlateau, StepDecay

    rank = comm.Get_rank()
    results = {}

    def record(name, model, history, callbacks=(), printed=""):
        # Rank 0's output only, every rank's state: one hash over all ranks.
        hashes = comm.gather(model_hash(model, history, callbacks,
                                        printed if rank == 0 else ""), root=0)
        if rank == 0:
            results[name] = _hash(hashes)
            results[name + ".ranks_agree"] = len(set(hashes[1:])) <= 1

    # Equal shards, SGD with momentum, shuffled, validation_split, weights, schedules,
    # early stopping, verbose=2 on rank 0.
    X, y, rng = _data(36, seed=20 + rank)
    w = rng.uniform(0.5, 1.5, size=36)

    class CrashAt(Callback):
        def __init__(self, epoch):
            self.epoch = epoch

        def on_epoch_begin(self, epoch, logs):
            if epoch == self.epoch:
                raise ValueError("interrupted on purpose")  # every rank: an agreed error

    def sgd_run(path=None, crash=None):
        model = _model(seed=rank)  # rank 0's weights must reach every rank
        callbacks = [StepDecay(step_size=2, gamma=0.7), EarlyStopping("val_loss", patience=3)]
        kwargs = {} if path is None else dict(checkpoint=path, resume=True)
        with _captured() as out:
            history = model.fit(X, y, epochs=8, batch_size=5, validation_split=0.25,
                                sample_weight=w, class_weight="balanced", verbose=2,
                                callbacks=callbacks + ([crash] if crash else []), comm=comm,
                                **kwargs)
        return model, history, callbacks, out.getvalue()

    model, history, callbacks, printed = sgd_run()
    record("mpi_sgd_momentum_callbacks_weights_split_verbose2", model, history, callbacks, printed)
    path = comm.bcast(tempfile.mkdtemp() if rank == 0 else None, root=0)
    for name, crash in (("mpi_sgd_uninterrupted", None), ("mpi_sgd_interrupted_at_3_resumed", 3)):
        checkpoint = os.path.join(path, f"{name}.fmlp")
        if crash is not None:
            try:
                sgd_run(checkpoint, CrashAt(crash))
            except ValueError:
                pass
        model, history, callbacks, _ = sgd_run(checkpoint)
        # Resumed histories hold their own epochs only: compare the final state.
        record(name, model, None, callbacks)

    # Uneven shards, Adam, validation_data, ReduceLROnPlateau, float32.
    n = (23, 14)[rank]
    X, y, _ = _data(n, seed=30 + rank)
    model = _model(optimizer=Adam(lr=0.02), dtype=np.float32, seed=rank)
    plateau = ReduceLROnPlateau("val_loss", factor=0.5, patience=0, threshold=0.05)
    history = model.fit(X, y, epochs=6, batch_size=4, validation_data=(X[:6], y[:6]),
                        callbacks=[plateau], comm=comm)
    record("mpi_adam_uneven_plateau_validation_data_float32", model, history, [plateau])
    return results


# ----------------------------------------------------------------------------- entry points
def run_mpi_child(out_path):
    from mpi4py import MPI

    import fastmlp

    with fastmlp.threads(THREADS):
        results = mpi_runs(MPI.COMM_WORLD)
    if MPI.COMM_WORLD.Get_rank() == 0:
        Path(out_path).write_text(json.dumps(results))


def load_store():
    return json.loads(STORE.read_text()) if STORE.exists() else {"machines": {}}


def main(argv):
    if argv[:1] == ["mpi"]:
        run_mpi_child(argv[1])
        return
    if argv[:1] != ["record"]:
        raise SystemExit(__doc__)
    import subprocess

    hashes = single_process_runs()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "mpi.json")
        env = dict(os.environ, UCX_NET_DEVICES="lo", HYDRA_IFACE="lo", NUMBA_NUM_THREADS="1")
        subprocess.run([str(Path(sys.executable).parent / "mpiexec"), "-launcher", "fork", "-n",
                        "2", sys.executable, __file__, "mpi", out], check=True, env=env)
        hashes.update(json.loads(Path(out).read_text()))
    bad = [(a, b) for a, b, _ in MUST_AGREE if hashes[a] != hashes[b]]
    bad += [k for k, v in hashes.items() if k.endswith(".ranks_agree") and v is not True]
    if bad:
        raise SystemExit(f"not recorded: these must agree and do not: {bad}")
    store = load_store()
    store["machines"][machine_key()] = {k: v for k, v in sorted(hashes.items())
                                        if not k.endswith(".ranks_agree")
                                        and k != "sgd_momentum_callbacks_weights_split_verbose0"}
    STORE.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")
    print(f"recorded {len(store['machines'][machine_key()])} hashes under {machine_key()}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main(sys.argv[1:])
