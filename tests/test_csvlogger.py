"""fastmlp.callbacks.CSVLogger: Keras's CSV log of every epoch's metrics, each epoch exactly
once after kills and ``resume=True``, rows on disk as soon as their epoch ends, and clear
errors when the file cannot be written."""

import csv
import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastmlp.atomicfile as atomicfile
from fastmlp import SGD, Dense, Sequential
from fastmlp.callbacks import Callback, CSVLogger
from conftest import three_class_data


def _model():
    return Sequential([Dense(4, 8, activation="tanh"), Dense(8, 3)],
                      optimizer=SGD(lr=0.05, momentum=0.9), seed=3)


X, Y = three_class_data(n=40)
FIT = dict(batch_size=8, validation_data=(X[:10], Y[:10]))


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


class _Stop(BaseException):
    """What a kill looks like from inside fit (no except clause in fastmlp catches it)."""


class _DieAfter(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs):
        if epoch == self.epoch:
            raise _Stop


def test_rows_hold_every_metric_of_the_history(tmp_path):
    path = tmp_path / "log.csv"
    history = _model().fit(X, Y, epochs=4, callbacks=[CSVLogger(path)], **FIT)
    rows = _rows(path)
    assert rows[0] == ["epoch"] + sorted(history.history)  # Keras's column order
    assert rows[0] == ["epoch", "accuracy", "loss", "lr", "val_accuracy", "val_loss"]
    assert [int(r[0]) for r in rows[1:]] == history.epoch == [1, 2, 3, 4]
    for i, row in enumerate(rows[1:]):
        for name, text in zip(rows[0][1:], row[1:]):
            # Bitwise: Python writes floats as their shortest round-trip repr.
            assert float(text) == history.history[name][i], (name, i)


def test_append_false_overwrites_and_append_true_adds(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("old,content\n1,2\n")
    _model().fit(X, Y, epochs=2, callbacks=[CSVLogger(path)], **FIT)
    first = path.read_text()
    assert [r[0] for r in _rows(path)] == ["epoch", "1", "2"]
    # A second fit (not a resume) appends its own epochs, numbered from 1 as its History.
    _model().fit(X, Y, epochs=3, callbacks=[CSVLogger(path, append=True)], **FIT)
    assert path.read_text().startswith(first)
    assert [r[0] for r in _rows(path)] == ["epoch", "1", "2", "1", "2", "3"]


def test_append_refuses_a_file_with_other_columns_before_training(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("epoch,loss\n1,0.5\n")
    model = _model()
    before = model.params.copy()
    with pytest.raises(ValueError, match="has the header 'epoch,loss'.*append=False"):
        model.fit(X, Y, epochs=2, callbacks=[CSVLogger(path, append=True)], **FIT)
    assert np.array_equal(model.params, before) and path.read_text() == "epoch,loss\n1,0.5\n"
    path.write_text("epoch,accuracy,loss,lr,val_accuracy,val_loss\nnot-a-number,1,2,3,4,5\n")
    with pytest.raises(ValueError, match="line 2 .* does not start with an epoch number"):
        model.fit(X, Y, epochs=1, callbacks=[CSVLogger(path, append=True)], **FIT)


@pytest.mark.parametrize("killed_at, every", [(3, 2), (4, 2), (1, 2), (5, 1)])
def test_resume_logs_each_epoch_once(tmp_path, killed_at, every):
    reference = tmp_path / "reference.csv"
    _model().fit(X, Y, epochs=6, callbacks=[CSVLogger(reference)], **FIT)
    path, ck = tmp_path / "log.csv", tmp_path / "ck.fmlp"
    # The run dies just after epoch killed_at's row was written, before its checkpoint.
    with pytest.raises(_Stop):
        _model().fit(X, Y, epochs=6, checkpoint=ck, checkpoint_every=every, resume=True,
                     callbacks=[CSVLogger(path, append=True), _DieAfter(killed_at)], **FIT)
    assert [int(r[0]) for r in _rows(path)[1:]] == list(range(1, killed_at + 1))
    history = _model().fit(X, Y, epochs=6, checkpoint=ck, checkpoint_every=every, resume=True,
                           callbacks=[CSVLogger(path, append=True)], **FIT)
    done = (killed_at - 1) // every * every  # the last checkpoint before the kill
    assert history.epoch == list(range(done + 1, 7))
    # Bitwise: a resumed run is bit-identical to an uninterrupted one, so are its rows.
    assert path.read_text() == reference.read_text()
    # Rerunning the finished run changes nothing.
    _model().fit(X, Y, epochs=6, checkpoint=ck, checkpoint_every=every, resume=True,
                 callbacks=[CSVLogger(path, append=True)], **FIT)
    assert path.read_text() == reference.read_text()


def test_each_row_is_on_disk_when_its_epoch_ends(tmp_path):
    path = tmp_path / "log.csv"
    seen = []

    class Reader(Callback):
        def on_epoch_end(self, epoch, logs):
            seen.append(len(_rows(path)) - 1)

    _model().fit(X, Y, epochs=3, callbacks=[CSVLogger(path), Reader()], **FIT)
    assert seen == [1, 2, 3]


CHILD = textwrap.dedent('''
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from conftest import three_class_data
    from fastmlp import SGD, Dense, Sequential
    from fastmlp.callbacks import Callback, CSVLogger
    import fastmlp.atomicfile as atomicfile

    log, ck, kill_at, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    X, Y = three_class_data(n=40)

    class Kill(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    callbacks = [CSVLogger(log, append=True)]
    if mode == "after-row":
        callbacks.append(Kill())
    elif mode == "mid-row":  # epoch kill_at's row is half written when the process dies
        real_write, rows = os.write, [0]
        def write(fd, data):
            if fd == callbacks[0]._fd:
                rows[0] += 1
                if rows[0] == kill_at + 1:  # the header, then one row per epoch
                    real_write(fd, bytes(data)[:len(data) // 2])
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_write(fd, data)
        atomicfile.os.write = write
    model = Sequential([Dense(4, 8, activation="tanh"), Dense(8, 3)],
                       optimizer=SGD(lr=0.05, momentum=0.9), seed=3)
    model.fit(X, Y, epochs=6, batch_size=8, validation_data=(X[:10], Y[:10]), checkpoint=ck,
              checkpoint_every=2, resume=True, callbacks=callbacks)
''')


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
@pytest.mark.parametrize("mode, kill_at", [("after-row", 3), ("mid-row", 5)])
def test_killed_process_then_rerun_logs_each_epoch_once(tmp_path, mode, kill_at):
    reference = tmp_path / "reference.csv"
    _model().fit(X, Y, epochs=6, callbacks=[CSVLogger(reference)], **FIT)
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=os.path.dirname(__file__)))
    log, ck = tmp_path / "log.csv", tmp_path / "ck.fmlp"

    def run(mode):
        return subprocess.run([sys.executable, str(script), str(log), str(ck), str(kill_at), mode],
                              capture_output=True, text=True, timeout=600)

    killed = run(mode)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    text = log.read_text()
    if mode == "mid-row":
        assert not text.endswith("\n")  # the half row is there
    finished = run("none")
    assert finished.returncode == 0, finished.stderr
    assert log.read_text() == reference.read_text()


# ----------------------------------------------------------------------------- failures
def test_full_disk_on_a_row_keeps_the_rows_before(tmp_path, monkeypatch):
    path = tmp_path / "log.csv"
    real_write, calls = os.write, [0]

    def write(fd, data):
        calls[0] += 1
        if calls[0] == 4:  # header, epochs 1 and 2, then the disk is full mid-row
            real_write(fd, bytes(data)[:5])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(atomicfile.os, "write", write)
    with pytest.raises(OSError) as excinfo:
        _model().fit(X, Y, epochs=4, callbacks=[CSVLogger(path)], **FIT)
    monkeypatch.undo()
    assert excinfo.value.errno == errno.ENOSPC
    assert str(path) in str(excinfo.value) and "no space left" in str(excinfo.value)
    assert [r[0] for r in _rows(path)] == ["epoch", "1", "2"]
    assert path.read_text().endswith("\n")  # no half row


@pytest.mark.parametrize("append", [False, True])
def test_unwritable_file_fails_before_training(tmp_path, monkeypatch, append):
    model = _model()
    before = model.params.copy()
    missing = tmp_path / "no-such-dir" / "log.csv"
    with pytest.raises(FileNotFoundError, match=f"the directory {missing.parent} does not exist"):
        model.fit(X, Y, epochs=2, callbacks=[CSVLogger(missing, append=append)], **FIT)
    real_open = os.open

    def forbidden(name, *args, **kwargs):
        if os.fspath(name).endswith("log.csv"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", forbidden)
    with pytest.raises(PermissionError, match="cannot open the CSV log .*log.csv: permission denied"):
        model.fit(X, Y, epochs=2, callbacks=[CSVLogger(tmp_path / "log.csv", append=append)], **FIT)
    monkeypatch.undo()
    assert np.array_equal(model.params, before) and os.listdir(tmp_path) == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="separator must be one character"):
        CSVLogger("x.csv", separator=", ")
    with pytest.raises(ValueError, match="append must be True or False"):
        CSVLogger("x.csv", append="yes")
    with pytest.raises(TypeError, match="filename must be a str"):
        CSVLogger(3)


def test_separator_and_quoting(tmp_path):
    path = tmp_path / "log.tsv"
    _model().fit(X, Y, epochs=2, callbacks=[CSVLogger(path, separator="\t")], **FIT)
    lines = path.read_text().splitlines()
    assert lines[0] == "\t".join(["epoch", "accuracy", "loss", "lr", "val_accuracy", "val_loss"])
    assert len(lines) == 3 and all(len(line.split("\t")) == 6 for line in lines)


def test_on_train_begin_tells_the_epochs_already_done(tmp_path):
    seen = []

    class Recorder(Callback):
        def on_train_begin(self, logs):
            seen.append((logs["initial_epoch"], logs["resume"]))

    ck = tmp_path / "ck.fmlp"
    _model().fit(X, Y, epochs=2, callbacks=[Recorder()], **FIT)
    _model().fit(X, Y, epochs=3, checkpoint=ck, resume=True, callbacks=[Recorder()], **FIT)
    _model().fit(X, Y, epochs=5, checkpoint=ck, resume=True, callbacks=[Recorder()], **FIT)
    assert seen == [(0, False), (0, True), (3, True)]


def test_a_refused_fit_leaves_the_file_as_it_was(tmp_path):
    from fastmlp.callbacks import EarlyStopping

    path = tmp_path / "log.csv"
    path.write_text("earlier,content\n")
    model = _model()
    # EarlyStopping refuses (no validation data) after the logger's on_train_begin ran.
    with pytest.raises(ValueError, match="monitors 'val_loss'"):
        model.fit(X, Y, epochs=2, callbacks=[CSVLogger(path), EarlyStopping()])
    assert path.read_text() == "earlier,content\n"
