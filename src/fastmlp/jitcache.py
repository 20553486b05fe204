"""Where numba keeps fastmlp's compiled kernels, and keeping that cache sound.

numba compiles a kernel the first time it meets a new combination of argument types and,
with ``cache=True``, saves the machine code on disk.  This module decides where, and
guards the cache against what numba itself does not:

- **Location.**  ``NUMBA_CACHE_DIR`` when set; else the package's own ``__pycache__``
  when it is writable; else a per-user directory (``$XDG_CACHE_HOME/fastmlp``, by
  default ``~/.cache/fastmlp``), so a read-only install (a system package, a container
  image) still compiles only once; else a directory under the system's temporary one.
- **Stale code.**  numba checks only the source file that defines a function, not those of
  its callees (numba #1833): the kernels' cache is dropped whenever any kernel source, or
  ``config.py``, differs from the one that filled it.  A process that started before another
  fastmlp (other kernel sources: an upgrade, an edited checkout) renewed the cache neither
  loads that one's files nor saves its own there any more: it compiles in memory.
- **Several processes.**  Each kernel compiles and saves under an exclusive file lock of
  its own in the cache directory: when several processes (the ranks of an MPI job on one
  node, a test suite's workers) need the same kernel with an empty cache, one compiles and
  the others wait, then load what it saved (numba #4807 reports crashes when processes fill
  one cache at once); processes that need different kernels compile them at the same time.
  A kernel's lock is taken inside its callers' (numba compiles callees from within the
  caller), and calls do not loop, so the locks cannot deadlock.  All compilations also hold
  the directory's lock shared, which renewing a stale cache takes exclusive.
- **Damaged files.**  After each compilation the cache files' sha256 digests go into a
  manifest; before numba reads a kernel's files they are checked against it, and a file
  that is truncated, garbled, or written by a process killed before it could record it is
  deleted, so numba compiles again instead of crashing or running damaged code.
- **Notices.**  Inside :func:`compile_notices`, a compilation prints one line on stderr
  when it starts and one when it ends, so a first fit never pauses silently.
- **Loading.**  Before it loads a cached function numba refreshes its compiler: it imports
  some 200 modules and installs every typing and lowering registry, most of a warm first
  fit's time.  Machine code loaded from the cache needs none of that, only numba's
  runtime (NRT), whose functions it calls: fastmlp's kernels load with just that
  (:class:`KernelCache`), and numba's compiler still refreshes itself before it compiles
  anything.
"""

import contextlib
import contextvars
import glob
import hashlib
import json
import os
import sys
import tempfile
import threading
import time

from numba import njit
from numba.core import config as numba_config
from numba.core import event
from numba.core.caching import FunctionCache, NullCache
from numba.core.compiler_lock import global_compiler_lock
from numba.core.dispatcher import Dispatcher
from numba.core.runtime import rtsys

#: The manifest of digests and the lock files, beside the cache files they guard: the
#: directory's lock (shared while compiling, exclusive to renew the cache), the manifest's,
#: and a folder of one lock per kernel function.
MANIFEST_NAME = "fastmlp-manifest.json"
LOCK_NAME = "fastmlp-compile.lock"
MANIFEST_LOCK_NAME = "fastmlp-manifest.lock"
KERNEL_LOCKS_NAME = "fastmlp-locks"
STAMP_NAME = "fastmlp-kernels.sha256"

_HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_SOURCES = os.path.join(_HERE, "kernels")

_notices = contextvars.ContextVar("fastmlp_compile_notices", default=False)

#: What a user is told is compiling, by entry point.
_DESCRIPTIONS = {
    "train_epoch": "the training loop",
    "compute_gradients": "the gradient step",
    "optimizer_update": "the optimizer update",
    "evaluate_chunked": "evaluation",
    "predict_into": "prediction",
}


def _writable_directory(path):
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _numba_subpath(source_dir):
    # numba's own naming of a source directory inside a cache root
    # (``_CacheLocator.get_suitable_cache_subpath``): the folder's name and a hash of its path.
    source_dir = os.path.abspath(source_dir)
    return "_".join([os.path.basename(source_dir), hashlib.sha1(source_dir.encode()).hexdigest()])


def user_cache_root():
    """The per-user cache root used when the package directory is read-only."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastmlp")


def choose_cache_root(source_dir=KERNEL_SOURCES, environ_root=None):
    """The root directory to hand numba as ``CACHE_DIR``, or None for the in-tree cache.

    Parameters
    ----------
    source_dir : str
        The kernels' source directory.
    environ_root : str or None
        ``NUMBA_CACHE_DIR`` as numba read it (``numba.config.CACHE_DIR``); it wins.

    Returns
    -------
    root : str or None
        None means numba's default, ``source_dir/__pycache__``, which is writable.
    cache_dir : str
        The directory the kernels' files will be in.
    """
    if environ_root:
        return environ_root, os.path.join(environ_root, _numba_subpath(source_dir))
    in_tree = os.path.join(source_dir, "__pycache__")
    if _writable_directory(in_tree):
        return None, in_tree
    for root in (user_cache_root(),
                 os.path.join(tempfile.gettempdir(), f"fastmlp-cache-{os.getuid()}")):
        if _writable_directory(os.path.join(root, _numba_subpath(source_dir))):
            return root, os.path.join(root, _numba_subpath(source_dir))
    return None, None


def _sources_digest(source_dir):
    digest = hashlib.sha256()
    paths = sorted(glob.glob(os.path.join(source_dir, "*.py")))
    paths += [os.path.join(os.path.dirname(source_dir), "config.py")]
    for path in paths:
        if os.path.exists(path):
            with open(path, "rb") as source:
                digest.update(os.path.basename(path).encode() + b"\0" + source.read())
    return digest.hexdigest()


def _cache_files(cache_dir, prefix=""):
    return sorted(glob.glob(os.path.join(glob.escape(cache_dir), glob.escape(prefix) + "*.nb[ic]")))


def drop_stale_cache(cache_dir, source_dir=KERNEL_SOURCES):
    """Delete the kernels' cache files in ``cache_dir`` if the sources changed since they
    were written; record the sources' digest.  Does nothing where it may not write."""
    digest = _sources_digest(source_dir)
    stamp_path = os.path.join(cache_dir, STAMP_NAME)
    try:
        with open(stamp_path) as stamp:
            if stamp.read() == digest:
                return
    except OSError:
        pass
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with _file_lock(os.path.join(cache_dir, LOCK_NAME)):
            for stale in _cache_files(cache_dir):
                os.remove(stale)
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(cache_dir, MANIFEST_NAME))
            _write_atomically(stamp_path, digest.encode())
    except OSError:
        pass


def _write_atomically(path, data):
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


_process_lock = threading.RLock()
#: lock file path -> [open handle or None, depth] of the flocks this process holds
_held_locks = {}


@contextlib.contextmanager
def _file_lock(path, exclusive=True):
    """An ``flock`` on ``path`` across processes, re-entrant within this one (a nested
    request gets the lock as first taken).  Where no lock can be had (Windows, a read-only
    directory) the block runs without one."""
    with _process_lock:
        held = _held_locks.get(path)
        if held is None:
            handle = None
            try:
                import fcntl

                handle = open(path, "a+b")
                fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            except (OSError, ImportError):
                if handle is not None:
                    handle.close()
                handle = None
            held = _held_locks[path] = [handle, 0]
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
            if held[1] == 0:
                del _held_locks[path]
                if held[0] is not None:
                    held[0].close()  # closing releases the flock


def _digest(path):
    with open(path, "rb") as data:
        return hashlib.sha256(data.read()).hexdigest()


class CacheGuard:
    """Checks a cache directory's files against the manifest and records new ones.

    Parameters
    ----------
    cache_dir : str or None
        None: no cache (then every method does nothing).
    sources_digest : str or None
        The digest of this process's kernel sources (what the cache's stamp must say).
    """

    def __init__(self, cache_dir, sources_digest=None):
        self.cache_dir = cache_dir
        self.sources_digest = sources_digest
        # (path, size, mtime_ns) -> digest of the files this process checked or recorded
        self._known = {}

    def holds_our_kernels(self):
        """Whether the cache's stamp still names this process's kernel sources.  Another
        fastmlp that renewed it since (:func:`drop_stale_cache`) made its files another
        version's code, which this process must neither run nor add to."""
        try:
            with open(os.path.join(self.cache_dir, STAMP_NAME)) as stamp:
                return stamp.read() == self.sources_digest
        except OSError:
            return False

    def _manifest(self):
        try:
            with open(os.path.join(self.cache_dir, MANIFEST_NAME)) as data:
                manifest = json.load(data)
            return manifest if isinstance(manifest, dict) else {}
        except (OSError, ValueError):
            return {}

    def _state(self, path):
        st = os.stat(path)
        return (path, st.st_size, st.st_mtime_ns)

    def check(self, prefix):
        """Delete the files named ``prefix*`` that the manifest does not vouch for."""
        if self.cache_dir is None:
            return
        manifest = None
        for path in _cache_files(self.cache_dir, prefix):
            try:
                state = self._state(path)
                if state in self._known:
                    continue
                if manifest is None:
                    manifest = self._manifest()
                digest = _digest(path)
                if manifest.get(os.path.basename(path)) == digest:
                    self._known[state] = digest
                    continue
                os.remove(path)
            except OSError:
                continue

    def trust(self, prefix):
        """Take the files named ``prefix*`` as sound: this process just wrote or checked
        them, holding their kernel's lock.  Returns whether any was new to it (written by
        this compilation, so not yet in the manifest)."""
        if self.cache_dir is None:
            return False
        new = False
        for path in _cache_files(self.cache_dir, prefix):
            with contextlib.suppress(OSError):
                state = self._state(path)
                if state not in self._known:
                    self._known[state] = _digest(path)
                    new = True
        return new

    def record(self):
        """Put the digests of the files this process wrote or checked into the manifest,
        keeping what other processes recorded there.  Reads no file it has not seen: a
        process that only loaded kernels changes nothing and writes nothing."""
        if self.cache_dir is None:
            return
        # Other processes record their kernels at the same time: read, merge and write
        # under the manifest's own lock, so that no process's entries are lost.
        with _file_lock(os.path.join(self.cache_dir, MANIFEST_LOCK_NAME)):
            manifest = self._manifest()
            changed = False
            for path in {state[0] for state in self._known}:
                try:
                    digest = self._known.get(self._state(path))
                except OSError:
                    continue
                name = os.path.basename(path)
                if digest is not None and manifest.get(name) != digest:
                    manifest[name] = digest
                    changed = True
            if changed:
                with contextlib.suppress(OSError):
                    _write_atomically(os.path.join(self.cache_dir, MANIFEST_NAME),
                                      json.dumps(manifest, sort_keys=True, indent=0).encode())


class _Notice(event.Listener):
    """Prints when the first real compilation (not a cache load) of a guarded call starts."""

    def __init__(self):
        self.started = None
        self.what = None

    def on_start(self, ev):
        if self.started is None and _notices.get():
            self.started = time.perf_counter()
            print(f"fastmlp: compiling {self.what} for this machine; this happens once per "
                  "machine and fastmlp version (`fastmlp compile` does it ahead of time)...",
                  file=sys.stderr, flush=True)

    def on_end(self, ev):
        pass


_notice = _Notice()
event.register("numba:compile", _notice)

_guard = CacheGuard(None)
# The root kernel_cache handed numba (None: numba's default, the in-tree cache).
_cache_root = None


def _describe(dispatcher, sig):
    name = dispatcher.py_func.__name__
    what = _DESCRIPTIONS.get(name, f"fastmlp.kernels {name}")
    # The first float array among the arguments is the data's (later ones may be float64
    # scratch, such as the per-batch losses).
    dtypes = [str(t.dtype) for t in sig if hasattr(t, "dtype") and str(t.dtype).startswith("float")]
    return f"{what} ({dtypes[0]})" if dtypes else what


def cache_file_prefix(py_func):
    """How numba's cache files of ``py_func`` begin (``module.qualname-line.``)."""
    module = os.path.splitext(os.path.basename(py_func.__code__.co_filename))[0]
    return f"{module}.{py_func.__qualname__}-{py_func.__code__.co_firstlineno}."


def kernel_lock_path(cache_dir, prefix):
    """The lock file of the kernel whose cache files begin with ``prefix``."""
    return os.path.join(cache_dir, KERNEL_LOCKS_NAME, prefix + "lock")


@contextlib.contextmanager
def _compile_locks(cache_dir, prefix):
    """The locks a kernel whose cache files are named ``prefix*`` compiles under: the
    cache directory's, shared (only renewing the cache takes it exclusive), then the
    kernel's own."""
    if cache_dir is None:
        yield
        return
    lock = kernel_lock_path(cache_dir, prefix)
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(lock), exist_ok=True)
    with _file_lock(os.path.join(cache_dir, LOCK_NAME), exclusive=False), _file_lock(lock):
        yield


_compile_depth = 0


def _guarded_compile(dispatcher):
    original = dispatcher.compile
    prefix = cache_file_prefix(dispatcher.py_func)

    def compile(sig):
        global _compile_depth
        # numba's compiler lock first, then ours: a user's jitted function that calls a
        # kernel holds numba's lock when it reaches this one, and the order must not flip.
        with global_compiler_lock, _compile_locks(_guard.cache_dir, prefix):
            _compile_depth += 1
            outermost = _compile_depth == 1
            if outermost:
                _notice.started = None
                _notice.what = _describe(dispatcher, sig if isinstance(sig, tuple) else ())
            in_cache = _guard.cache_dir is not None and _guard.holds_our_kernels()
            if in_cache:
                _guard.check(prefix)
            elif _guard.cache_dir is not None and not isinstance(dispatcher._cache, NullCache):
                dispatcher._cache = NullCache()  # compile in memory: neither load nor save
            try:
                return original(sig)
            finally:
                _compile_depth -= 1
                # Recorded before this kernel's lock is released: a process that takes it
                # next finds the new files vouched for, instead of deleting them as a
                # killed process's leftovers.
                if in_cache and _guard.trust(prefix):
                    _guard.record()
                if outermost and _notice.started is not None:
                    print(f"fastmlp: compiled in {time.perf_counter() - _notice.started:.1f} s",
                          file=sys.stderr, flush=True)
                    _notice.started = None

    dispatcher.compile = compile


@contextlib.contextmanager
def compile_notices(enabled=True):
    """Within this block, say on stderr when kernels start compiling and how long it took."""
    token = _notices.set(bool(enabled))
    try:
        yield
    finally:
        _notices.reset(token)


@contextlib.contextmanager
def kernel_cache(source_dir=KERNEL_SOURCES):
    """Import the kernel modules inside this block: their functions then cache where this
    module decided, and every one of them compiles under the guard.

    Yields the cache directory (None when nothing is writable: numba then keeps the
    compiled code in memory only).
    """
    global _guard, _cache_root
    root, cache_dir = choose_cache_root(source_dir, numba_config.CACHE_DIR)
    if cache_dir is not None:
        drop_stale_cache(cache_dir, source_dir)
    _guard = CacheGuard(cache_dir, _sources_digest(source_dir))
    _cache_root = root
    with _numba_cache_root(root):
        yield cache_dir


@contextlib.contextmanager
def _numba_cache_root(root):
    saved_root = numba_config.CACHE_DIR
    if root is not None:
        numba_config.CACHE_DIR = root
    try:
        yield
    finally:
        numba_config.CACHE_DIR = saved_root


def guarded_copy(dispatcher, **options):
    """A new numba function of ``dispatcher``'s Python function with ``options`` (numba's
    ``njit`` options), cached where the kernels are and compiled under the guard, as if its
    module had defined it inside :func:`kernel_cache`."""
    with _numba_cache_root(_cache_root):
        copy = njit(**options)(dispatcher.py_func)
    guard_dispatcher(copy)
    return copy


class KernelCache(FunctionCache):
    """numba's cache of one function's compiled code, loading it without a compiler refresh.

    numba's :meth:`FunctionCache.load_overload` calls ``target_context.refresh()`` and then
    loads.  The refresh is what a compilation needs (every registry of typing and lowering
    rules: about 0.1 s and 200 module imports the first time), but loaded machine code only
    links against numba's runtime, which ``rtsys.initialize`` sets up; the other symbols it
    uses are registered when the CPU target is created.  Saving is numba's own.
    """

    def load_overload(self, sig, target_context):
        rtsys.initialize(target_context)
        with self._guard_against_spurious_io_errors():
            return self._load_overload(sig, target_context)


def numba_loads_as_expected():
    """Whether numba's ``FunctionCache.load_overload`` is the refresh-then-load that
    :class:`KernelCache` replaces (numba 0.68); on another numba the kernels keep its own."""
    names = FunctionCache.load_overload.__code__.co_names
    return names == ("refresh", "_guard_against_spurious_io_errors", "_load_overload")


_LOADS_AS_EXPECTED = numba_loads_as_expected()


def own_dispatchers(module):
    """The numba functions defined in ``module`` (not those it imports)."""
    return [value for value in vars(module).values()
            if isinstance(value, Dispatcher) and value.py_func.__module__ == module.__name__]


def guard_dispatcher(dispatcher):
    """Route the numba function ``dispatcher`` through the cache guard."""
    if _LOADS_AS_EXPECTED and type(dispatcher._cache) is FunctionCache:
        # The same object, given KernelCache's loading: a new one would locate the cache
        # directory again (a test file written there; 8 ms per import of fastmlp).
        dispatcher._cache.__class__ = KernelCache
    _guarded_compile(dispatcher)


def guard_module(module):
    """Route every numba function of ``module`` through the cache guard."""
    for dispatcher in own_dispatchers(module):
        guard_dispatcher(dispatcher)


def cache_directory():
    """The directory holding fastmlp's compiled kernels (None: no cache could be written)."""
    return _guard.cache_dir
