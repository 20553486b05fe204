"""Interrupts and misuse: Ctrl-C during fit, and one model trained from two threads.

The SIGINT test runs a child process (tests/interrupt_child.py) that trains with a
checkpoint every epoch; the parent sends it a real SIGINT while epoch 3 runs.  The child
then reports what it holds, and resumes from the checkpoint to the end.  The comparisons are
bitwise: the interrupted model equals a model trained for the epochs it completed (an epoch
runs as one compiled call, and Ctrl-C is held back until the model's state is consistent
again), and the resumed run equals one that was never interrupted, on one machine, by
construction (same steps, same order, same thread count).
"""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fastmlp import SGD, Dense, Sequential

HERE = Path(__file__).parent


@pytest.mark.parametrize("network", ["dense", "dropout"])
def test_ctrl_c_mid_epoch_keeps_a_consistent_model_and_resumes_bit_identical(tmp_path, network):
    checkpoint = tmp_path / "run.fmlp"
    proc = subprocess.Popen([sys.executable, str(HERE / "interrupt_child.py"), str(checkpoint)]
                            + (["dropout"] if network == "dropout" else []),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=HERE,
                            env=dict(os.environ, NUMBA_NUM_THREADS="1"))
    try:
        for line in proc.stdout:
            if line.startswith("epoch 3 begins"):
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["interrupted"], report
    assert report["on_train_end_error"] == "KeyboardInterrupt"
    # The weights of the last completed step, with its step count: those of a model that
    # ran exactly the steps the interrupted one did.
    assert report["steps"] % report["steps_per_epoch"] == 0, report
    assert report["matches_a_run_of_its_epochs"], report
    # The last checkpoint is that of the epoch before, or of the epoch itself if the signal
    # came after its steps and before its checkpoint was written.
    epochs = report["steps"] // report["steps_per_epoch"]
    assert report["checkpoint_epochs"] in (epochs - 1, epochs), report
    assert report["checkpoint_loads"]
    assert report["resumed_equals_uninterrupted"], report


def test_two_threads_cannot_train_one_model_at_once():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 4))
    y = (X[:, 0] > 0).astype(int)
    model = Sequential([Dense(4, 32, activation="tanh"), Dense(32, 2)], optimizer=SGD(lr=0.05),
                       seed=0, dtype=np.float64)
    twin = Sequential([Dense(4, 32, activation="tanh"), Dense(32, 2)], optimizer=SGD(lr=0.05),
                      seed=0, dtype=np.float64)
    model.fit(X[:64], y[:64], epochs=1)  # compiled once, so the fit below takes a while
    twin.fit(X[:64], y[:64], epochs=1)

    from fastmlp.callbacks import Callback

    started, release = threading.Event(), threading.Event()

    class Pause(Callback):
        # Holds the first fit inside its run, so the second call surely overlaps it.
        def on_epoch_begin(self, epoch, logs):
            if epoch == 2:
                started.set()
                release.wait(60)

    errors, predictions = [], []

    def train():
        try:
            model.fit(X, y, epochs=3, batch_size=16, callbacks=[Pause()])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=train)
    worker.start()
    try:
        assert started.wait(60)
        for call in (lambda: model.fit(X, y, epochs=1), lambda: model.train_step(X[:8], y[:8]),
                     lambda: model.compute_gradients(X[:8], y[:8]), model.apply_gradients):
            with pytest.raises(RuntimeError, match="being trained in another thread"):
                call()
        predictions.append(model.predict(X[:10]))  # predictions stay allowed
    finally:
        release.set()
        worker.join(120)
    assert not errors, errors
    assert predictions[0].shape == (10,)
    # The first fit finished as if alone.
    twin.fit(X, y, epochs=3, batch_size=16)
    assert np.array_equal(model.params, twin.params)
    assert model.optimizer.step_count == twin.optimizer.step_count
    # Once it is done, the model trains from another thread again.
    model.train_step(X[:8], y[:8])
