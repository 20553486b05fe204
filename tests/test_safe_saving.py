"""Saving fails safely: model.save, fit's checkpoints and model.export, on a full disk, a
read-only or missing directory and without permission, raise an OSError that names the path;
the previous file keeps its bytes and no temporary file is left.  A temporary file left by a
process killed mid-save is removed by the next save to that path, and never one that a
running save owns.

The full and read-only disks are real (a small tmpfs mounted by the test) when the tests
run as root with mount rights, and simulated (``os.write`` or ``os.open`` raising the
errno) everywhere.  Only the last test trains (fit's own checkpoint path).
"""

import errno
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastmlp
import fastmlp.callbacks
import fastmlp.atomicfile as atomicfile
import fastmlp.io as fio
from fastmlp import Dense, Sequential


def _small():
    return Sequential([Dense(3, 4, activation="tanh"), Dense(4, 2)], seed=0)


def _large():
    # 100 * 300 + 300 + 300 * 2 + 2 float32 parameters, 124 KB and more with the optimizer
    # state: larger than the 64 KB tmpfs below.
    return Sequential([Dense(100, 300, activation="relu"), Dense(300, 2)], seed=1)


WRITERS = {
    "save": lambda model, path: model.save(path),
    # What fit calls after an epoch (tests/test_checkpoint.py covers it inside fit).
    "checkpoint": lambda model, path: fio.save_checkpoint(
        model, path, np.arange(10, dtype=np.int64), 1, 3, 5, True),
    "export": lambda model, path: model.export(path, format="safetensors"),
}


def _listing(directory):
    return sorted(os.listdir(directory))


def _check_refused(excinfo, path, code, words):
    error = excinfo.value
    assert error.errno == code
    assert str(path) in str(error) and words in str(error)


# ----------------------------------------------------------------------------- simulated errors
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_full_disk_keeps_the_previous_file(tmp_path, monkeypatch, writer):
    path = tmp_path / "model.out"
    WRITERS[writer](_small(), path)
    before, listing = path.read_bytes(), _listing(tmp_path)
    real_write, written = os.write, [0]

    def write(fd, data):
        if written[0] > 100:  # part of the file is on disk, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = real_write(fd, bytes(data)[:60])
        written[0] += n
        return n

    monkeypatch.setattr(atomicfile.os, "write", write)
    with pytest.raises(OSError) as excinfo:
        WRITERS[writer](_large(), path)
    monkeypatch.undo()
    _check_refused(excinfo, path, errno.ENOSPC, "no space left on the device")
    assert path.read_bytes() == before and _listing(tmp_path) == listing


def _failing_open(code, only_temporaries=True):
    real_open = os.open

    def open_(name, flags, mode=0o777, **kwargs):
        if not only_temporaries or atomicfile.TEMP_MARK in os.fspath(name):
            raise OSError(code, os.strerror(code), name)
        return real_open(name, flags, mode, **kwargs)

    return open_


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("code, words", [(errno.EROFS, "is read-only"),
                                         (errno.EACCES, "permission denied"),
                                         (errno.EPERM, "not permitted")])
def test_read_only_or_forbidden_directory(tmp_path, monkeypatch, writer, code, words):
    path = tmp_path / "model.out"
    WRITERS[writer](_small(), path)
    before, listing = path.read_bytes(), _listing(tmp_path)
    monkeypatch.setattr(atomicfile.os, "open", _failing_open(code))
    with pytest.raises(OSError) as excinfo:
        WRITERS[writer](_large(), path)
    monkeypatch.undo()
    _check_refused(excinfo, path, code, words)
    assert type(excinfo.value) is type(OSError(code, "x"))  # PermissionError for EACCES
    assert path.read_bytes() == before and _listing(tmp_path) == listing


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_failed_rename_removes_the_temporary(tmp_path, monkeypatch, writer):
    path = tmp_path / "model.out"
    WRITERS[writer](_small(), path)
    before, listing = path.read_bytes(), _listing(tmp_path)

    def replace(src, dst):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(atomicfile.os, "replace", replace)
    with pytest.raises(PermissionError) as excinfo:
        WRITERS[writer](_large(), path)
    monkeypatch.undo()
    _check_refused(excinfo, path, errno.EACCES, "permission denied")
    assert path.read_bytes() == before and _listing(tmp_path) == listing


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_missing_directory_and_directory_target(tmp_path, writer):
    missing = tmp_path / "no-such-dir" / "model.out"
    with pytest.raises(FileNotFoundError) as excinfo:
        WRITERS[writer](_small(), missing)
    _check_refused(excinfo, missing, errno.ENOENT, f"the directory {missing.parent} does not exist")
    target = tmp_path / "a-directory"
    target.mkdir()
    with pytest.raises(IsADirectoryError) as excinfo:
        WRITERS[writer](_small(), target)
    assert f"{target} is a directory" in str(excinfo.value)
    assert _listing(tmp_path) == ["a-directory"] and _listing(target) == []


def test_interrupted_save_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "model.fmlp"
    _small().save(path)
    before = path.read_bytes()

    def write_all(f, chunks):
        f.write(chunks[0])
        raise KeyboardInterrupt

    monkeypatch.setattr(fio, "_write_all", write_all)
    with pytest.raises(KeyboardInterrupt):
        _large().save(path)
    assert path.read_bytes() == before and _listing(tmp_path) == ["model.fmlp"]


# The save refused by the file system itself: a directory its user may not write.  Root
# ignores permission bits, so as root the save runs in a forked child that has become an
# unprivileged user (nobody), in a directory that user owns and then may only read.
NOBODY = 65534


def _save_refused_by_permissions(directory):
    path = os.path.join(directory, "model.fmlp")
    _small().save(path)
    before = open(path, "rb").read()
    os.chmod(directory, 0o555)
    try:
        _large().save(path)
        outcome = {"raised": None}
    except OSError as exc:
        outcome = {"raised": type(exc).__name__, "errno": exc.errno, "message": str(exc)}
    outcome["unchanged"] = open(path, "rb").read() == before
    outcome["listing"] = _listing(directory)
    return outcome


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_real_permission_error(tmp_path):
    import json
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="fastmlp-permission-")  # outside root's 0700 tmp_path
    try:
        if os.geteuid() != 0:
            outcome = _save_refused_by_permissions(directory)
        else:
            os.chown(directory, NOBODY, NOBODY)
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: nobody, then the save; its only output is the pipe
                try:
                    os.close(read_end)
                    os.setgroups([])
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
                    report = _save_refused_by_permissions(directory)
                except BaseException as exc:  # reported to the parent, never raised here
                    report = {"child failed": repr(exc)}
                os.write(write_end, json.dumps(report).encode())
                os._exit(0)
            os.close(write_end)
            with os.fdopen(read_end) as pipe:
                text = pipe.read()
            os.waitpid(pid, 0)
            outcome = json.loads(text)
    finally:
        os.chmod(directory, 0o755)
        shutil.rmtree(directory, ignore_errors=True)
    path = os.path.join(directory, "model.fmlp")
    assert outcome.get("raised") == "PermissionError" and outcome["errno"] == errno.EACCES, outcome
    assert path in outcome["message"] and "permission denied" in outcome["message"], outcome
    assert outcome["unchanged"] and outcome["listing"] == ["model.fmlp"], outcome


# ----------------------------------------------------------------------------- a real tmpfs
@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KB tmpfs, mounted for the test (root with mount rights only)."""
    if os.name != "posix" or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the simulated full-disk tests run everywhere)")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_real_full_disk(small_tmpfs, writer):
    path = small_tmpfs / "model.out"
    WRITERS[writer](_small(), path)
    before = path.read_bytes()
    with pytest.raises(OSError) as excinfo:
        WRITERS[writer](_large(), path)
    _check_refused(excinfo, path, errno.ENOSPC, "no space left on the device")
    assert path.read_bytes() == before and _listing(small_tmpfs) == ["model.out"]
    # The space the failed save took is free again: a small model still fits.
    WRITERS[writer](_small(), small_tmpfs / "again.out")


def test_real_read_only_file_system(small_tmpfs):
    path = small_tmpfs / "model.fmlp"
    _small().save(path)
    before = path.read_bytes()
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    for writer in WRITERS.values():
        with pytest.raises(OSError) as excinfo:
            writer(_small(), path)
        _check_refused(excinfo, path, errno.EROFS, "is read-only")
    assert path.read_bytes() == before and _listing(small_tmpfs) == ["model.fmlp"]


# ----------------------------------------------------------------------------- stale temporaries
def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _temp_name(target, pid, host=None):
    host = atomicfile.host_tag() if host is None else host
    return f".{target}{atomicfile.TEMP_MARK}{pid}-0123abcd-{host}"


@pytest.mark.skipif(os.name != "posix", reason="whether another pid runs is asked with os.kill(pid, 0)")
def test_next_save_removes_temporaries_of_dead_processes_only(tmp_path):
    path = tmp_path / "model.fmlp"
    dead, alive = _dead_pid(), os.getppid()
    stale = [_temp_name("model.fmlp", dead), _temp_name("model.fmlp", os.getpid())]
    kept = [_temp_name("model.fmlp", alive),  # a save in another running process
            _temp_name("model.fmlp", dead, host="another-host"),  # cannot be judged from here
            _temp_name("other.fmlp", dead),  # another file's
            ".model.fmlp.unrelated"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"half a file")
    _small().save(path)
    assert _listing(tmp_path) == sorted(kept + ["model.fmlp"])
    fastmlp.load(path)


def test_a_running_save_keeps_its_temporary_while_another_saves(tmp_path, monkeypatch):
    """Two threads save to the same path: the second's clean-up must not remove the first's
    temporary file (same pid), and both saves succeed."""
    path = tmp_path / "model.fmlp"
    real_write_all = fio._write_all
    first_writing, release = threading.Event(), threading.Event()

    def write_all(f, chunks):
        if threading.current_thread().name != "first":
            return real_write_all(f, chunks)
        f.write(chunks[0])
        first_writing.set()
        release.wait(30)  # the first save is mid-write while the second one runs
        for chunk in chunks[1:]:
            f.write(chunk)

    monkeypatch.setattr(fio, "_write_all", write_all)
    errors = []

    def first():
        try:
            _large().save(path)
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=first, name="first")
    thread.start()
    assert first_writing.wait(30)
    _small().save(path)  # the second saver
    assert len([n for n in os.listdir(tmp_path) if atomicfile.TEMP_MARK in n]) == 1
    release.set()
    thread.join(30)
    assert errors == []
    assert _listing(tmp_path) == ["model.fmlp"]
    assert fastmlp.load(path).count_params() == _large().count_params()  # the last to finish


def test_concurrent_savers_leave_one_valid_file(tmp_path):
    path = tmp_path / "model.fmlp"
    models = [_small(), _large()]
    errors = []

    def saver(k):
        try:
            for _ in range(15):
                models[k % 2].save(path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=saver, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert _listing(tmp_path) == ["model.fmlp"]
    assert fastmlp.load(path).count_params() in {m.count_params() for m in models}


def test_temporary_names_are_recognisable(tmp_path):
    name = atomicfile.temp_path(str(tmp_path / "m.fmlp"))
    base = os.path.basename(name)
    assert base.startswith(".m.fmlp.fastmlp-tmp-") and f"-{os.getpid()}-" in f"-{base.split('-tmp-')[1]}"
    assert base.endswith(atomicfile.host_tag()) and socket.gethostname()


def test_fit_checkpoint_on_a_full_disk_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """Inside fit: the disk fills up at epoch 3's checkpoint; fit raises the OSError naming
    the checkpoint, which still holds epoch 2, and a rerun resumes from there."""
    X = np.random.default_rng(0).normal(size=(30, 3))
    y = (X[:, 0] > 0).astype(int)
    ck = tmp_path / "ck.fmlp"
    real_write = os.write

    class FullDiskFromEpoch3(fastmlp.callbacks.Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 3:
                monkeypatch.setattr(atomicfile.os, "write", full)

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as excinfo:
        _small().fit(X, y, epochs=4, batch_size=10, checkpoint=ck, resume=True,
                     callbacks=[FullDiskFromEpoch3()])
    monkeypatch.setattr(atomicfile.os, "write", real_write)
    _check_refused(excinfo, ck, errno.ENOSPC, "no space left on the device")
    assert _listing(tmp_path) == ["ck.fmlp"]
    assert fio.read(ck).header["training"]["epochs_completed"] == 2
    history = _small().fit(X, y, epochs=4, batch_size=10, checkpoint=ck, resume=True)
    assert history.epoch == [3, 4]
