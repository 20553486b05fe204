"""Training from a memory-mapped file: throughput against RAM, and peak anonymous memory.

    python benchmarks/larger_than_memory.py throughput [--gb 1] [--repeat 3] [--dir /tmp]
    python benchmarks/larger_than_memory.py memory [--gb 8] [--dir /tmp]

``throughput`` writes a float32 and a float64 file of about ``--gb`` GB each (64 features),
and times one epoch of ``fit`` (a 64-128-4 ReLU MLP, float32, batch 512) on: the float32
data in RAM; the float32 file mapped, page cache warm (the file read once before); the
same file cold (its pages dropped first: ``/proc/sys/vm/drop_caches`` when it is writable,
else ``posix_fadvise(DONTNEED)`` on the file, which drops its clean pages without root);
and the float64 file into the float32 model, warm.  Each figure is the fastest of
``--repeat`` epochs, with ``shuffle=True`` and
``shuffle="chunks"``.

``memory`` writes a float32 file of ``--gb`` GB (and int64 labels, also mapped), fits one
epoch on it with ``shuffle="chunks"`` and a validation pass, and reports the peak
``RssAnon`` (of a 64-8-4 network: sampled every 5 ms from /proc/self/status by a thread; the compiled loop
releases the GIL) over the value before the fit, next to the file size, the model and its
workspace, and the row order (8 bytes a row, the one per-row array of a fit).  The files
are deleted at the end.  Not a test: it takes minutes and GBs of disk.
"""

import argparse
import os
import shutil
import tempfile
import threading
import time

import numpy as np

from fastmlp import SGD, Dense, Sequential

N_FEATURES, N_OUT, BATCH = 64, 4, 512


def rss_anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def write_file(path, n_rows, dtype, seed=0):
    """Random features, written in blocks (memory stays small while writing)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n_rows, N_FEATURES))
    rng = np.random.default_rng(seed)
    block = 1 << 18
    for lo in range(0, n_rows, block):
        out[lo:lo + block] = rng.standard_normal((min(block, n_rows - lo), N_FEATURES))
    out.flush()
    del out


def labels_for(path, n_rows):
    X = np.load(path, mmap_mode="r")
    y = np.lib.format.open_memmap(path.replace(".npy", "-y.npy"), mode="w+", dtype=np.int64,
                                  shape=(n_rows,))
    block = 1 << 20
    for lo in range(0, n_rows, block):
        chunk = np.asarray(X[lo:lo + block])
        y[lo:lo + block] = (chunk[:, 0] > 0).astype(np.int64) + 2 * (chunk[:, 1] > 0)
    y.flush()
    del y
    return path.replace(".npy", "-y.npy")


def model():
    return Sequential([Dense(N_FEATURES, 128, activation="relu"), Dense(128, N_OUT)],
                      optimizer=SGD(lr=0.01), seed=0)


def drop_cache(path):
    """Drop the file's pages from the page cache; returns how."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return "drop_caches"
    except OSError:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return "fadvise"


def read_all(path):
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def epoch_seconds(X, y, shuffle, repeat, before=None):
    """The fastest of ``repeat`` epochs (``before()`` runs ahead of each, untimed)."""
    m = model()
    m.fit(X[:BATCH * 4], y[:BATCH * 4], epochs=1, batch_size=BATCH)  # compile first
    best = float("inf")
    for _ in range(repeat):
        if before is not None:
            before()
        started = time.perf_counter()
        m.fit(X, y, epochs=1, batch_size=BATCH, shuffle=shuffle)
        best = min(best, time.perf_counter() - started)
    return best


def throughput(directory, gb, repeat):
    n_rows = int(gb * 1e9) // (N_FEATURES * 4)
    f32, f64 = os.path.join(directory, "X32.npy"), os.path.join(directory, "X64.npy")
    write_file(f32, n_rows, np.float32)
    write_file(f64, n_rows, np.float64)
    y = np.asarray(np.load(labels_for(f32, n_rows), mmap_mode="r"))
    print(f"{n_rows} rows x {N_FEATURES} features; float32 file {os.path.getsize(f32) / 1e9:.2f} GB")
    print(f"{'source':34s} {'shuffle':8s} {'samples/s':>12s} {'vs RAM':>7s}")
    for shuffle in (True, "chunks"):
        in_ram = np.load(f32)
        ram = n_rows / epoch_seconds(in_ram, y, shuffle, repeat)
        del in_ram
        rows = [("RAM (float32 array)", ram)]
        read_all(f32)
        mapped = np.load(f32, mmap_mode="r")
        rows.append(("mmap float32, warm", n_rows / epoch_seconds(mapped, y, shuffle, repeat)))
        how = []
        rate = n_rows / epoch_seconds(mapped, y, shuffle, repeat,
                                      before=lambda: how.append(drop_cache(f32)))
        rows.append((f"mmap float32, cold ({how[-1]})", rate))
        read_all(f64)
        rows.append(("mmap float64 -> float32, warm",
                     n_rows / epoch_seconds(np.load(f64, mmap_mode="r"), y, shuffle, repeat)))
        for name, rate in rows:
            print(f"{name:34s} {str(shuffle):8s} {rate:12.0f} {rate / ram:7.2f}")


def memory(directory, gb):
    n_rows = int(gb * 1e9) // (N_FEATURES * 4)
    path = os.path.join(directory, "X.npy")
    write_file(path, n_rows, np.float32)
    y = np.load(labels_for(path, n_rows), mmap_mode="r")
    X = np.load(path, mmap_mode="r")
    # A small network and large batches: the point is the memory of a pass over the whole
    # file, which then takes minutes rather than an hour on a busy machine.
    m = Sequential([Dense(N_FEATURES, 8, activation="relu"), Dense(8, N_OUT)],
                   optimizer=SGD(lr=0.01), seed=0)
    m.fit(X[:BATCH], y[:BATCH], epochs=1, batch_size=BATCH, shuffle="chunks",
          validation_data=(X[:BATCH], y[:BATCH]))
    base = rss_anon()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    m.fit(X, y, epochs=1, batch_size=BATCH, shuffle="chunks",
          validation_data=(X[-n_rows // 10:], y[-n_rows // 10:]))
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    workspace = m._train_workspace.nbytes + m.params.nbytes * (2 + m.optimizer.state.shape[0])
    mib = 2 ** 20
    print(f"file {os.path.getsize(path) / 1e9:.2f} GB ({n_rows} rows), fit + validation "
          f"{seconds:.1f} s ({n_rows / seconds:.0f} samples/s)")
    print(f"RssAnon before the fit {base / mib:.1f} MiB, peak {peak[0] / mib:.1f} MiB, "
          f"growth {(peak[0] - base) / mib:.1f} MiB")
    print(f"  of which the row order {n_rows * 8 / mib:.1f} MiB; model + workspace "
          f"{workspace / mib:.2f} MiB; bound 1024 MiB + model + workspace: "
          f"{'met' if peak[0] - base < (1 << 30) + workspace else 'NOT met'}")
    print(f"peak RssAnon of the whole process {peak[0] / mib:.1f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["throughput", "memory"])
    parser.add_argument("--gb", type=float, default=None)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--repeat", type=int, default=3, help="epochs timed per figure (the fastest is kept)")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="fastmlp-large-", dir=args.dir)
    try:
        if args.what == "throughput":
            throughput(directory, args.gb or 1.0, args.repeat)
        else:
            memory(directory, args.gb or 8.0)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
