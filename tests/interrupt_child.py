"""Child of tests/test_interrupt.py: ``interrupt_child.py CHECKPOINT [dropout]``.

With ``dropout``, the network has a ``Dropout(0.3)`` after its hidden layer: the resumed run
must draw the masks the uninterrupted one drew.

Trains with a checkpoint every epoch and prints ``epoch N begins`` as each epoch starts;
the parent sends SIGINT during epoch 3.  Prints one JSON line with what it found.
"""

import hashlib
import json
import signal
import sys

import numpy as np

import fastmlp
from fastmlp import Adam, Dense, Sequential
from fastmlp.callbacks import Callback, ReduceLROnPlateau

# Ctrl-C raises KeyboardInterrupt here, as in a user's script, even when the suite runs with
# SIGINT ignored (a background job of a shell without job control): Python keeps an
# inherited SIG_IGN, and the parent's signal would then never arrive.
signal.signal(signal.SIGINT, signal.default_int_handler)

checkpoint = sys.argv[1]
rng = np.random.default_rng(3)
X = rng.normal(size=(60000, 8))
y = (X[:, 0] * X[:, 1] > 0).astype(int) + (X[:, 2] > 0)
EPOCHS, BATCH = 6, 16
STEPS_PER_EPOCH = -(-X.shape[0] // BATCH)


WITH_DROPOUT = sys.argv[2:] == ["dropout"]


def model():
    middle = [fastmlp.Dropout(0.3)] if WITH_DROPOUT else []
    return Sequential([Dense(8, 128, activation="relu"), *middle, Dense(128, 3)],
                      optimizer=Adam(lr=0.003), seed=5, dtype=np.float64)


def digest(m, with_rng=True):
    rng = m.rng.bit_generator.state if with_rng else None
    return hashlib.sha256(m.params.tobytes() + m.optimizer.state.tobytes()
                          + str((m.optimizer.step_count, rng)).encode()).hexdigest()


class Announce(Callback):
    def __init__(self):
        self.ended_with = "never called"

    def on_epoch_begin(self, epoch, logs):
        print(f"epoch {epoch} begins", flush=True)

    def on_train_end(self, logs):
        self.ended_with = type(logs["error"]).__name__


announce = Announce()
interrupted = model()
report = {"interrupted": False}
try:
    interrupted.fit(X, y, epochs=EPOCHS, batch_size=BATCH,
                    callbacks=[announce, ReduceLROnPlateau("loss", patience=0)],
                    checkpoint=checkpoint, resume=True)
except KeyboardInterrupt:
    report["interrupted"] = True
print("parent's signal handled; checking", flush=True)
steps = interrupted.optimizer.step_count
report.update(on_train_end_error=announce.ended_with, steps=steps, steps_per_epoch=STEPS_PER_EPOCH)

# A model that ran the same whole epochs, never interrupted.
same_epochs = model()
same_epochs.fit(X, y, epochs=max(1, steps // STEPS_PER_EPOCH), batch_size=BATCH,
                callbacks=[ReduceLROnPlateau("loss", patience=0)])
# Parameters, optimizer state and step count: the random stream is left out here, since the
# signal may land after the next epoch's shuffle has drawn from it and before its steps
# start (the model is then that of its completed steps, with one more shuffle drawn).
report["matches_a_run_of_its_epochs"] = (digest(same_epochs, with_rng=False)
                                         == digest(interrupted, with_rng=False))

loaded = fastmlp.load(checkpoint)
report["checkpoint_loads"] = loaded.params.shape == interrupted.params.shape
report["checkpoint_epochs"] = fastmlp.io.read(checkpoint).header["training"]["epochs_completed"]

resumed = model()
resumed.fit(X, y, epochs=EPOCHS, batch_size=BATCH,
            callbacks=[ReduceLROnPlateau("loss", patience=0)], checkpoint=checkpoint, resume=True)
reference = model()
reference.fit(X, y, epochs=EPOCHS, batch_size=BATCH,
              callbacks=[ReduceLROnPlateau("loss", patience=0)])
report["resumed_equals_uninterrupted"] = digest(resumed) == digest(reference)
print(json.dumps(report), flush=True)
