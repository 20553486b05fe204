"""fit(checkpoint=..., resume=True): crash-proof checkpoints and bit-identical resumption.

The subprocess tests kill a training script with SIGKILL mid-epoch, mid-save and at random
times, rerun it with the same arguments, and compare the final model bit for bit with a
run that was never interrupted.
"""

import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fastmlp
from fastmlp import SGD, Adam, Dense, FormatError, Maxout, Sequential
from conftest import training_state as _state

DTYPES = [np.float32, np.float64]


def _model(optimizer=None, dtype=np.float32, seed=3, width=8):
    return Sequential([Dense(4, width, activation="tanh"), Maxout(width, 5, pieces=2), Dense(5, 3)],
                      optimizer=optimizer or SGD(lr=0.05, momentum=0.9), seed=seed, dtype=dtype)


def _data(n=37):
    rng = np.random.default_rng(11)
    X = rng.normal(size=(n, 4))
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)


# ----------------------------------------------------------------------------- in-process
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make_opt", [lambda: SGD(lr=0.05, momentum=0.9, nesterov=True),
                                      lambda: Adam(lr=0.01)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_resume_from_any_epoch_is_bit_identical(tmp_path, shuffle, make_opt, dtype):
    X, y = _data()
    epochs, kw = 6, dict(batch_size=5, shuffle=shuffle, validation_data=(X[:9], y[:9]))
    reference = _model(make_opt(), dtype)
    ref_history = reference.fit(X, y, epochs=epochs, **kw)
    # Checkpointing itself changes nothing.
    path = tmp_path / "ck.fmlp"
    plain = _model(make_opt(), dtype)
    plain.fit(X, y, epochs=epochs, checkpoint=path, checkpoint_every=4, **kw)
    # Bitwise: checkpointing only reads the state; the training is the same kernels on the same shapes.
    assert _state(plain) == _state(reference)
    for stop in range(1, epochs):
        first = _model(make_opt(), dtype)
        first.fit(X, y, epochs=stop, checkpoint=path, **kw)  # the crash: the process ends here
        resumed = _model(make_opt(), dtype)
        history = resumed.fit(X, y, epochs=epochs, checkpoint=path, resume=True, **kw)
        # Bitwise: a resume continues from an exact copy of the state, with the same kernels and shapes.
        assert _state(resumed) == _state(reference)
        assert history.epoch == list(range(stop + 1, epochs + 1))
        for key, values in ref_history.history.items():
            assert history.history[key] == values[stop:]  # the same steps' figures: bitwise


def test_checkpoint_schedule_and_contents(tmp_path, monkeypatch):
    import fastmlp.io as fio

    X, y = _data()
    saved = []
    real = fio.save_checkpoint

    def spy(model, path, order, epochs_completed, *args):
        saved.append(epochs_completed)
        real(model, path, order, epochs_completed, *args)

    monkeypatch.setattr(fio, "save_checkpoint", spy)
    model = _model()
    model.fit(X, y, epochs=7, batch_size=8, checkpoint=str(tmp_path / "ck"), checkpoint_every=3)
    assert saved == [3, 6, 7]  # every 3 epochs, and the last one
    header = fio.read(tmp_path / "ck").header
    assert header["training"] == {"epochs_completed": 7, "epochs": 7, "batch_size": 8, "shuffle": True,
                                  "n_samples": 37}
    # A checkpoint is a model file too.
    assert _state(fastmlp.load(tmp_path / "ck")) == _state(model)
    assert os.listdir(tmp_path) == ["ck"]


def test_resume_without_a_checkpoint_starts_fresh_and_a_finished_run_is_a_no_op(tmp_path):
    X, y = _data()
    reference = _model()
    reference.fit(X, y, epochs=3)
    model = _model()
    path = tmp_path / "ck.fmlp"
    assert model.fit(X, y, epochs=3, checkpoint=path, resume=True).epoch == [1, 2, 3]
    # Bitwise, as above.
    assert _state(model) == _state(reference)
    again = _model()
    history = again.fit(X, y, epochs=3, checkpoint=path, resume=True)
    assert history.epoch == [] and history.history["loss"] == []
    # Bitwise, as above.
    assert _state(again) == _state(reference)
    # Training on past the finished run, and resume=False starting over.
    longer = _model()
    assert longer.fit(X, y, epochs=5, checkpoint=path, resume=True).epoch == [4, 5]
    fresh = _model()
    assert fresh.fit(X, y, epochs=3, checkpoint=path).epoch == [1, 2, 3]
    # Bitwise, as above.
    assert _state(fresh) == _state(reference)


def _unchanged(model, before):
    assert _state(model) == before
    assert model._train_workspace is None


BAD_ARGS = [
    (dict(checkpoint=3), TypeError, "checkpoint must be a str or os.PathLike"),
    (dict(checkpoint=b"ck"), TypeError, "checkpoint must be a str or os.PathLike"),
    (dict(checkpoint=""), ValueError, "checkpoint is empty"),
    (dict(checkpoint="CK", checkpoint_every=0), ValueError, "checkpoint_every must be a positive integer"),
    (dict(checkpoint="CK", checkpoint_every=-2), ValueError, "checkpoint_every must be a positive integer"),
    (dict(checkpoint="CK", checkpoint_every=1.5), ValueError, "checkpoint_every must be a positive integer"),
    (dict(checkpoint="CK", checkpoint_every=True), ValueError, "checkpoint_every must be a positive integer"),
    (dict(checkpoint="CK", resume="yes"), ValueError, "resume must be True or False"),
    (dict(checkpoint="CK", resume=1), ValueError, "resume must be True or False"),
    (dict(resume=True), ValueError, "need a checkpoint path"),
    (dict(checkpoint_every=2), ValueError, "need a checkpoint path"),
    (dict(checkpoint="DIR"), ValueError, "is a directory"),
    (dict(checkpoint="DIR/missing/ck"), ValueError, "directory .* does not exist"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_ARGS)
def test_bad_checkpoint_arguments_change_nothing(tmp_path, kwargs, error, message):
    X, y = _data()
    kwargs = {k: (v.replace("CK", str(tmp_path / "ck")).replace("DIR", str(tmp_path))
                  if isinstance(v, str) else v) for k, v in kwargs.items()}
    model = _model()
    before = _state(model)
    with pytest.raises(error, match=message):
        model.fit(X, y, epochs=2, **kwargs)
    _unchanged(model, before)
    assert os.listdir(tmp_path) == []


def test_a_checkpoint_of_another_run_is_refused_before_anything_changes(tmp_path):
    X, y = _data()
    path = tmp_path / "ck.fmlp"
    _model().fit(X, y, epochs=2, batch_size=5, checkpoint=path)
    cases = [
        (_model(width=9), dict(batch_size=5), "another model: its layers"),
        (_model(dtype=np.float64), dict(batch_size=5), "another model: its dtype"),
        (_model(optimizer=Adam()), dict(batch_size=5), "another model: its optimizer"),
        (_model(), dict(batch_size=6), "batch_size=5, this call has batch_size=6"),
        (_model(), dict(batch_size=5, shuffle=False), "shuffle=True"),
        (_model(), dict(batch_size=5, epochs=1), "already completed 2 epochs, more than epochs=1"),
    ]
    for model, kwargs, message in cases:
        before = _state(model)
        with pytest.raises(ValueError, match=message):
            model.fit(X, y, **dict(dict(epochs=4), **kwargs), checkpoint=path, resume=True)
        _unchanged(model, before)
    model = _model()
    before = _state(model)
    with pytest.raises(ValueError, match="n_samples=37, this call has n_samples=30"):
        model.fit(X[:30], y[:30], epochs=4, batch_size=5, checkpoint=path, resume=True)
    _unchanged(model, before)
    # A plain saved model is not a checkpoint.
    _model().save(path)
    with pytest.raises(ValueError, match="not a checkpoint"):
        model.fit(X, y, epochs=4, batch_size=5, checkpoint=path, resume=True)
    _unchanged(model, before)


def test_a_damaged_checkpoint_is_reported_not_overwritten(tmp_path):
    X, y = _data()
    path = tmp_path / "ck.fmlp"
    _model().fit(X, y, epochs=2, checkpoint=path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(data)
    model = _model()
    before = _state(model)
    with pytest.raises(FormatError, match="checksum mismatch"):
        model.fit(X, y, epochs=4, checkpoint=path, resume=True)
    _unchanged(model, before)
    # The file's bytes, untouched.
    assert path.read_bytes() == data


# ----------------------------------------------------------------------------- killed processes
TRAIN_SCRIPT = r'''
"""Train with checkpoints; optionally hang mid-epoch or mid-save so that the test can kill it.

argv: checkpoint ("-" for none), output file, mode (run | hang-epoch | hang-save), at, epochs, every
"""
import sys
import time

import numpy as np

import fastmlp.io as fio
from fastmlp import Adam, Dense, Maxout, Sequential
from fastmlp.kernels import network

checkpoint, out, mode = sys.argv[1:4]
at, epochs, every = (int(a) for a in sys.argv[4:7])
rng = np.random.default_rng(0)
X = rng.normal(size=(3001, 12)).astype(np.float32)
y = (X[:, :3].sum(axis=1) > 0).astype(int) + 2 * (X[:, 3] > 0)
model = Sequential([Dense(12, 48, activation="relu"), Maxout(48, 24, pieces=2), Dense(24, 4)],
                   optimizer=Adam(lr=0.003), seed=7)


def hang(marker):
    print(marker, flush=True)
    time.sleep(600)


if mode == "hang-epoch":  # this run's at-th epoch updates the weights, then hangs
    real_epoch, calls = network.train_epoch, [0]

    def train_epoch(*args):
        calls[0] += 1
        done = real_epoch(*args)
        if calls[0] == at:
            hang("MID-EPOCH")
        return done

    network.train_epoch = train_epoch
elif mode == "hang-save":  # this run's at-th save writes half the file, then hangs
    real_write, saves = fio._write_all, [0]

    def write_all(f, chunks):
        saves[0] += 1
        if saves[0] != at:
            return real_write(f, chunks)
        data = b"".join(bytes(c) for c in chunks)
        f.write(data[:len(data) // 2])
        f.flush()
        hang("MID-SAVE")

    fio._write_all = write_all

kwargs = {} if checkpoint == "-" else dict(checkpoint=checkpoint, checkpoint_every=every, resume=True)
print("START", flush=True)
history = model.fit(X, y, epochs=epochs, batch_size=25, validation_data=(X[:100], y[:100]), **kwargs)
print("EPOCHS", history.epoch[:1], len(history.epoch), flush=True)
model.save(out)
'''

EPOCHS = 24
ENV = dict(os.environ, NUMBA_NUM_THREADS="2", PYTHONUNBUFFERED="1")

posix_only = pytest.mark.skipif(os.name != "posix", reason="SIGKILL and select on pipes")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("killed")
    (path / "train.py").write_text(TRAIN_SCRIPT)
    return path


def _start(workdir, checkpoint, out, mode="run", at=0, epochs=EPOCHS, every=2):
    args = [sys.executable, str(workdir / "train.py"), str(checkpoint), str(out), mode, str(at),
            str(epochs), str(every)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, text=True)


def _wait_for(proc, marker, timeout=300):
    """Read the child's output until a line starting with ``marker``; return that line."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if line.startswith(marker):
                return line
    proc.kill()
    proc.wait()
    raise AssertionError(f"no {marker!r} from the training script; it printed:\n{''.join(seen)}")


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    proc.stdout.close()


def _run(workdir, checkpoint, out, **kwargs):
    """Run to completion; returns the epoch line: 'EPOCHS [first] count'."""
    proc = _start(workdir, checkpoint, out, **kwargs)
    line = _wait_for(proc, "EPOCHS")
    proc.wait(timeout=300)
    proc.stdout.close()
    assert proc.returncode == 0
    return line.split(maxsplit=1)[1].strip()


def _same_model(a, b):
    # Bitwise: both files hold exact copies of the states of identical runs.
    return _state(fastmlp.load(a)) == _state(fastmlp.load(b))


def _epochs_in(checkpoint):
    import fastmlp.io as fio

    return fio.read(checkpoint).header["training"]["epochs_completed"]


@pytest.fixture(scope="module")
def reference(workdir):
    """The final model of a run that was never interrupted (and of one with checkpoints)."""
    out = workdir / "reference.fmlp"
    assert _run(workdir, "-", out) == f"[1] {EPOCHS}"
    checkpointed = workdir / "reference-checkpointed.fmlp"
    assert _run(workdir, workdir / "reference-ck.fmlp", checkpointed) == f"[1] {EPOCHS}"
    assert _same_model(out, checkpointed)
    return out


@posix_only
def test_killed_mid_epoch_twice_then_rerun_ends_identical(workdir, reference):
    ck, out = workdir / "mid-epoch.fmlp", workdir / "mid-epoch-out.fmlp"
    proc = _start(workdir, ck, out, mode="hang-epoch", at=5)
    _wait_for(proc, "MID-EPOCH")  # epoch 5's updates are in memory only
    _kill(proc)
    assert _epochs_in(ck) == 4
    proc = _start(workdir, ck, out, mode="hang-epoch", at=3)  # resumed: its 3rd epoch is 7
    _wait_for(proc, "MID-EPOCH")
    _kill(proc)
    assert _epochs_in(ck) == 6
    assert _run(workdir, ck, out) == f"[7] {EPOCHS - 6}"
    assert _same_model(out, reference)


@posix_only
@pytest.mark.parametrize("at", [1, 3])
def test_killed_mid_save_keeps_the_last_checkpoint_and_rerun_ends_identical(workdir, reference, at):
    ck, out = workdir / f"mid-save-{at}.fmlp", workdir / f"mid-save-{at}-out.fmlp"
    if at > 1:
        _run(workdir, ck, workdir / "unused.fmlp", epochs=2 * (at - 1))  # an earlier run's checkpoint
    before = ck.read_bytes() if at > 1 else None
    proc = _start(workdir, ck, out, mode="hang-save", at=1)  # this run's first save hangs half-written
    _wait_for(proc, "MID-SAVE")
    _kill(proc)
    temporaries = [p for p in workdir.iterdir() if p.name.startswith(f".{ck.name}.fastmlp-tmp-")]
    assert len(temporaries) == 1  # the half-written file, beside the intact checkpoint
    with pytest.raises(FormatError, match="truncated"):
        fastmlp.load(temporaries[0])
    if before is None:
        assert not ck.exists()  # the first save never completed: no checkpoint yet
    else:
        assert ck.read_bytes() == before and _epochs_in(ck) == 2 * (at - 1)
    first = 1 if before is None else 2 * (at - 1) + 1
    assert _run(workdir, ck, out) == f"[{first}] {EPOCHS - first + 1}"
    assert _same_model(out, reference)
    # The rerun's first save removed the killed process's temporary file.
    assert not temporaries[0].exists()


@posix_only
def test_killed_at_random_times_then_rerun_ends_identical(workdir, reference):
    ck, out = workdir / "random.fmlp", workdir / "random-out.fmlp"
    delays = np.random.default_rng(2024).uniform(0.0, 0.15, size=6)
    landed = 0
    for delay in delays:
        proc = _start(workdir, ck, out, every=1)
        _wait_for(proc, "START")
        time.sleep(delay)
        if proc.poll() is not None:  # it finished first
            proc.stdout.close()
            break
        _kill(proc)
        landed += 1
        if ck.exists():
            _epochs_in(ck)  # whatever the moment of the kill, the checkpoint is intact
    assert landed >= 3
    _run(workdir, ck, out, every=1)
    assert _same_model(out, reference)


# ----------------------------------------------------------------------------- distributed format
def _distributed_checkpoint(path, lengths=(5, 3)):
    """A fit_distributed checkpoint written in-process: each rank's order, streams and rows."""
    import fastmlp.io as fio

    model = _model()
    states = []
    for r, n in enumerate(lengths):
        stream = np.random.default_rng(100 + r)
        order = stream.permutation(n)
        states.append(fio.rank_state(model, order, stream))
    fio.save_distributed_checkpoint(model, path, states, 2, 4, 3, True)
    return model, states


def _rewrite(path, edit):
    """Apply ``edit(header, order)`` to a file and give it a valid checksum again."""
    import hashlib
    import json

    import fastmlp.io as fio

    data = path.read_bytes()
    n = int.from_bytes(data[8:16], "little")
    header = json.loads(data[16:16 + n])
    payload = bytearray(data[16 + n:-32])
    begin, end = header["tensors"]["shuffle_order"]["offsets"]
    order = np.frombuffer(payload, "<i8", count=(end - begin) // 8, offset=begin).copy()
    edit(header, order)
    payload[begin:end] = order.tobytes()
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    body = fio.MAGIC + len(text).to_bytes(8, "little") + text + bytes(payload)
    path.write_bytes(body + hashlib.sha256(body).digest())


def test_distributed_checkpoint_layout_and_round_trip(tmp_path):
    import fastmlp.io as fio

    path = tmp_path / "ck.fmlp"
    model, states = _distributed_checkpoint(path)
    contents = fio.read(path)
    training = contents.header["training"]
    assert training["n_samples"] == 8 and [r["n_samples"] for r in training["ranks"]] == [5, 3]
    assert set(training["ranks"][0]) == {"n_samples", "rng", "shuffle_rng"}
    # One shuffle_order over every rank's rows: rank 1's rows are numbered from 5.
    order = contents.tensors["shuffle_order"]
    assert sorted(order[:5]) == [0, 1, 2, 3, 4] and sorted(order[5:]) == [5, 6, 7]
    for (o, shuffle_rng, rng), (o2, shuffle_rng2, rng2) in zip(fio.rank_states(contents), states):
        # Integers and generator states: exact.
        assert np.array_equal(o, o2) and shuffle_rng == shuffle_rng2 and rng == rng2
    assert _state(fastmlp.load(path)) == _state(model)  # a model file like any other
    # Resumable by a run of 2 ranks with these shards, and by nothing else.
    assert fio.read_checkpoint(_model(), path, 4, 3, True, 8, lengths=[5, 3])[1] == 2
    for lengths, message in (([5, 3, 1], "written by 2 rank\\(s\\), this job has 3"),
                             ([4, 4], "shards of \\[5, 3\\] rows"),
                             (None, "written by fit_distributed on 2 rank")):
        with pytest.raises(ValueError, match=message):
            fio.read_checkpoint(_model(), path, 4, 3, True, 8, lengths=lengths)


@pytest.mark.parametrize("edit, message", [
    (lambda h, o: h["training"]["ranks"][1].update(n_samples=2), "hold 7 rows in all"),
    (lambda h, o: h["training"]["ranks"][0].update(extra=1), "unknown field"),
    (lambda h, o: h["training"]["ranks"][1].pop("shuffle_rng"), "lacks shuffle_rng"),
    (lambda h, o: h["training"]["ranks"][1]["shuffle_rng"].update(bit_generator="MT19937"),
     r"ranks\[1\] shuffle_rng bit_generator"),
    (lambda h, o: h["training"]["ranks"][0]["rng"]["state"].update(inc=-1), r"ranks\[0\] rng state\.inc"),
    (lambda h, o: h["training"].update(ranks=[]), "list of 1 to n_samples"),
    (lambda h, o: h["training"].update(ranks={"n_samples": 8}), "list of 1 to n_samples"),
    (lambda h, o: o.__setitem__(slice(4, 6), o[4:6][::-1].copy()), "gives rank 0 rows of another rank"),
])
def test_damaged_distributed_checkpoint_is_refused(tmp_path, edit, message):
    path = tmp_path / "ck.fmlp"
    _distributed_checkpoint(path)
    _rewrite(path, edit)
    with pytest.raises(FormatError, match=message):
        fastmlp.load(path)
