"""Writing a file so that a failure never damages what was there: the one write path of
:meth:`Sequential.save <fastmlp.Sequential.save>`, ``fit``'s checkpoints and
:meth:`Sequential.export <fastmlp.Sequential.export>`.

The bytes go to a temporary file beside the target, named recognisably
``.{name}.fastmlp-tmp-{pid}-{token}-{host}``; it is flushed and fsynced, then replaces the
target in one ``os.replace``.  When anything fails (a full disk, a read-only file system, a
missing directory, no permission) the temporary file is removed, the target keeps its
previous bytes, and the error is an ``OSError`` of the same kind (``errno`` kept) whose
message names the path and the problem.

A process killed mid-save cannot remove its temporary file; the next save to the same
path does: it removes every temporary file of that path written on this host by a process
that no longer runs, or by this process outside a save in progress (a restarted container
often gets the killed process's pid again).  Temporary files of other hosts (a directory
shared over NFS) are left alone: whether their writer still runs cannot be known here.
"""

import errno
import os
import re
import secrets
import socket
import threading

TEMP_MARK = ".fastmlp-tmp-"

#: Temporary files this process is writing now (a thread's save must not remove another's).
_active = set()
_active_lock = threading.Lock()


def host_tag():
    """This host's name as temporary file names carry it."""
    # Only characters that are safe in any file name; short, so that long names still fit.
    return re.sub(r"[^A-Za-z0-9._]", "_", socket.gethostname() or "localhost")[:32]


def temp_path(path):
    """A fresh temporary file name for ``path`` (absolute), in the same directory."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}-"
                                   f"{host_tag()}")


def _pid_alive(pid):
    if os.name != "posix":
        return True  # no cheap check elsewhere: only this process's own files are judged
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return True
    return True


def stale_temporaries(path):
    """The temporary files of ``path`` (absolute) that no running save owns (see the module
    docstring); a directory that cannot be listed has none."""
    directory, name = os.path.split(path)
    prefix = f".{name}{TEMP_MARK}"
    host, me = host_tag(), os.getpid()
    try:
        entries = [entry.name for entry in os.scandir(directory) if entry.name.startswith(prefix)]
    except OSError:
        return []
    stale = []
    for entry in entries:
        parts = entry[len(prefix):].split("-", 2)
        if len(parts) != 3 or not parts[0].isdigit() or parts[2] != host:
            continue
        pid, full = int(parts[0]), os.path.join(directory, entry)
        with _active_lock:
            busy = full in _active
        if pid == me and not busy or pid != me and not _pid_alive(pid):
            stale.append(full)
    return stale


def remove_stale_temporaries(path):
    """Remove what :func:`stale_temporaries` finds; a file that is already gone, or that
    cannot be removed, is skipped (the save itself then reports any real problem)."""
    for stale in stale_temporaries(path):
        try:
            os.unlink(stale)
        except OSError:
            pass


class RawWriter:
    """``write`` and ``flush`` over a file descriptor, every byte through ``os.write`` (so a
    test can make the disk full by patching it); short writes are continued."""

    def __init__(self, fd):
        self.fd = fd

    def write(self, data):
        view = memoryview(data).cast("B")
        while view.nbytes:
            written = os.write(self.fd, view)
            view = view[written:]

    def flush(self):
        """Nothing is buffered."""


def describe_os_error(exc, path, action="save"):
    """An ``OSError`` of ``exc``'s kind (``errno`` kept) whose message names ``path`` and
    says what went wrong in words."""
    directory = os.path.dirname(path) or "."
    code = exc.errno
    reasons = {
        errno.ENOSPC: "no space left on the device",
        errno.EROFS: f"the file system of {directory} is read-only",
        errno.ENOENT: f"the directory {directory} does not exist",
        errno.ENOTDIR: f"{directory} is not a directory",
        errno.EACCES: f"permission denied (writing in {directory})",
        errno.EPERM: f"operation not permitted (writing in {directory})",
        errno.EISDIR: f"{path} is a directory",
        errno.ENAMETOOLONG: "the file name is too long",
    }
    if hasattr(errno, "EDQUOT"):
        reasons[errno.EDQUOT] = "the disk quota is exceeded"
    reason = reasons.get(code) or exc.strerror or str(exc)
    message = f"cannot {action} {path}: {reason}"
    if code is not None and code in reasons:
        message += f" ({os.strerror(code)})"
    try:
        error = type(exc)(code, message) if code is not None else type(exc)(message)
    except TypeError:  # a subclass with another signature
        error = OSError(code, message)
    return error


def atomic_write(path, write, action="save"):
    """Create or replace ``path`` with what ``write(f)`` writes to ``f`` (a
    :class:`RawWriter`), so that ``path`` is always either its old bytes or the complete
    new file, and no temporary file outlives the call.

    Raises
    ------
    OSError
        From :func:`describe_os_error`: the path and the problem in the message, ``errno``
        and the exception class of the underlying error.
    """
    path = os.path.abspath(os.fspath(path))
    remove_stale_temporaries(path)
    tmp = temp_path(path)
    with _active_lock:
        _active.add(tmp)
    try:
        try:
            # O_EXCL: never follow or reuse an existing file; 0o666 lets the umask decide.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
        except OSError as exc:
            raise describe_os_error(exc, path, action) from exc
        try:
            try:
                write(RawWriter(fd))
                os.fsync(fd)
            finally:
                os.close(fd)
            if os.path.isdir(path):  # os.replace would say only "Is a directory" or EEXIST
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
            os.replace(tmp, path)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise describe_os_error(exc, path, action) from exc
            raise
    finally:
        with _active_lock:
            _active.discard(tmp)
    fsync_directory(os.path.dirname(path))


def fsync_directory(directory):
    """Make a rename in ``directory`` durable (POSIX; a no-op elsewhere)."""
    if os.name != "posix":
        return  # Windows cannot open a directory; os.replace is what it offers
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot sync a directory; nothing to do then
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)
