"""Inputs larger than memory (docs/large-data.md): memory-mapped and foreign-dtype arrays
gathered batch by batch, the streaming input check, shuffle="chunks", chunk sources, and
the memory a fit on a mapped file takes.

Bitwise comparisons here hold by construction: the gather copies (and converts, element
by element, with the rounding of ``astype``) exactly the values a converted in-memory copy
holds, into the same batch buffer, and the compiled steps that follow are the same code
on the same values.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastmlp import SGD, ChunkShuffle, DataChangedError, Dense, Sequential, streaming
from fastmlp.callbacks import Callback
from fastmlp.cli import main

from compile_record import recording_compiles

N, N_IN, N_OUT = 600, 7, 3


def make_model(dtype=np.float32, loss="softmax_cross_entropy", n_out=N_OUT):
    return Sequential([Dense(N_IN, 12, activation="tanh"), Dense(12, n_out)], loss=loss,
                      optimizer=SGD(lr=0.1, momentum=0.9), seed=3, dtype=dtype)


@pytest.fixture
def data():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(N, N_IN))
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)


def mapped(tmp_path, arr, name="X.npy", fortran=False):
    """``arr`` written to a .npy file and mapped back read-only."""
    path = tmp_path / name
    out = np.lib.format.open_memmap(path, mode="w+", dtype=arr.dtype, shape=arr.shape,
                                    fortran_order=fortran)
    out[...] = arr
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


@pytest.mark.parametrize("file_dtype,fortran", [(np.float32, False), (np.float64, False),
                                                (np.float32, True), (np.float64, True)])
@pytest.mark.parametrize("model_dtype", [np.float32, np.float64])
def test_mapped_file_trains_as_the_same_data_in_memory(tmp_path, data, file_dtype, fortran,
                                                       model_dtype):
    X, y = data
    X_file = mapped(tmp_path, X.astype(file_dtype), fortran=fortran)
    assert isinstance(X_file, np.memmap)
    # The reference: the file's values converted in memory first, as fit did before.
    X_ram = np.ascontiguousarray(X.astype(file_dtype), dtype=model_dtype)
    a, b = make_model(model_dtype), make_model(model_dtype)
    a.fit(X_ram, y, epochs=3, batch_size=32, validation_data=(X_ram, y))
    b.fit(X_file, y, epochs=3, batch_size=32, validation_data=(X_file, y))
    assert np.array_equal(a.params, b.params)  # bitwise: see the module docstring
    assert a.history.history == b.history.history
    assert a.evaluate(X_ram, y) == b.evaluate(X_file, y)
    assert np.array_equal(a.predict_proba(X_ram), b.predict_proba(X_file))
    assert np.array_equal(a.predict(X_ram), b.predict(X_file))
    assert np.array_equal(a.decision_function(X_ram), b.decision_function(X_file))
    assert a.score(X_ram, y) == b.score(X_file, y)


def test_large_foreign_array_in_memory_is_not_converted_whole(data, monkeypatch):
    X, y = data
    monkeypatch.setattr(streaming, "STREAM_MIN_BYTES", 1)
    X_f = np.asfortranarray(X)  # float64, F-ordered, for a float32 model
    assert streaming.is_streamed(X_f, np.float32)
    rows = make_model().rows(X_f, y)
    assert rows.X is X_f  # used in place, not copied
    a, b = make_model(), make_model()
    a.fit(X.astype(np.float32), y, epochs=2)
    b.fit(X_f, y, epochs=2)
    assert np.array_equal(a.params, b.params)


def test_regression_targets_from_a_mapped_file(tmp_path, data):
    X, _ = data
    t = np.stack([X[:, 0] - X[:, 2], X[:, 1]], axis=1)
    X_file = mapped(tmp_path, X)
    a, b = make_model(loss="mse", n_out=2), make_model(loss="mse", n_out=2)
    a.fit(X.astype(np.float32), t, epochs=2)
    b.fit(X_file, t, epochs=2)
    assert np.array_equal(a.params, b.params)
    assert a.score(X.astype(np.float32), t) == b.score(X_file, t)


def test_foreign_input_compiles_only_the_gathering_entry_points(tmp_path, data):
    X, y = data
    model = make_model()
    X32 = X.astype(np.float32)
    model.fit(X32, y, epochs=1)
    model.evaluate(X32, y)
    model.predict_proba(X32)
    with recording_compiles() as compiled:
        X_file = mapped(tmp_path, X)  # float64: another dtype, and read-only
        model.fit(X_file, y, epochs=1)
        model.evaluate(X_file, y)
        model.predict_proba(X_file)
    # Not forward, dense_forward, ...: the layer chain runs on the gathered buffer, whose
    # type it was already compiled for.
    assert set(compiled) <= {"train_epoch", "gather_chunk", "evaluate_gathered",
                             "predict_gathered", "first_label_out_of_range"}


# ---------------------------------------------------------------- the streaming check
@pytest.fixture
def small_chunks(monkeypatch):
    # Chunks of 2 rows: the bad value lies in a late chunk, not the first one read.
    monkeypatch.setattr(streaming, "CHECK_CHUNK_BYTES", 2 * N_IN * 8)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_in_a_late_row_is_named_and_nothing_changes(tmp_path, data, small_chunks, bad):
    X, y = data
    X = X.copy()
    X[N - 7, 4] = bad
    X_file = mapped(tmp_path, X)
    model = make_model()
    before = model.params.copy()
    with pytest.raises(ValueError, match=rf"X has a NaN or infinite value in row {N - 7} of "
                                         rf".*X\.npy \(column 4\)"):
        model.fit(X_file, y, epochs=2)
    assert np.array_equal(model.params, before) and model.optimizer.step_count == 0
    for call in (model.predict, model.predict_proba):
        with pytest.raises(ValueError, match=f"row {N - 7}"):
            call(X_file)
    with pytest.raises(ValueError, match=f"row {N - 7}"):
        model.evaluate(X_file, y)


def test_float64_beyond_float32_range_is_named(tmp_path, data, small_chunks):
    X, y = data
    X = X.copy()
    X[N - 2, 1] = 1e39  # finite in float64, Inf once converted to float32
    with pytest.raises(ValueError, match=rf"row {N - 2} .*\(column 1\) \(1e\+39 overflows float32\)"):
        make_model(np.float32).fit(mapped(tmp_path, X), y)
    make_model(np.float64).fit(mapped(tmp_path, X, "X64.npy"), y)  # fine in float64


def test_wrong_width_and_empty_files(tmp_path, data):
    X, y = data
    with pytest.raises(ValueError, match=f"X has {N_IN + 1} features per row, but the first "
                                         f"layer expects {N_IN}"):
        make_model().fit(mapped(tmp_path, np.ones((N, N_IN + 1))), y)
    with pytest.raises(ValueError, match="X is empty"):
        make_model().fit(mapped(tmp_path, np.ones((0, N_IN)), "empty.npy"), y[:0])


def test_labels_out_of_range_in_a_late_row_of_a_mapped_file(tmp_path, data):
    X, y = data
    y = y.copy()
    y[N - 3] = N_OUT
    model = make_model()
    before = model.params.copy()
    with pytest.raises(ValueError, match=rf"y\[{N - 3}\] = {N_OUT} is not a class index"):
        model.fit(mapped(tmp_path, X), mapped(tmp_path, y, "y.npy"))
    assert np.array_equal(model.params, before)


class Tamper(Callback):
    """At the end of epoch ``epoch``, do ``action(path)`` to the training file."""

    def __init__(self, epoch, action, path):
        self.epoch, self.action, self.path = epoch, action, path

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            self.action(self.path)


def _truncate(path):
    os.truncate(path, os.path.getsize(path) // 2)


def _rewrite(path):
    with open(path, "r+b") as f:  # same size, new contents
        f.seek(-8, os.SEEK_END)
        f.write(np.float64(np.nan).tobytes())


@pytest.mark.parametrize("action", [_truncate, _rewrite])
def test_file_changed_during_training_stops_before_reading_it(tmp_path, data, action):
    X, y = data
    X_file = mapped(tmp_path, X)
    reference = make_model()
    reference.fit(X_file, y, epochs=1, batch_size=32)
    model = make_model()
    with pytest.raises(DataChangedError, match=r"X's file .*X\.npy changed after fit checked it"):
        model.fit(X_file, y, epochs=3, batch_size=32,
                  callbacks=[Tamper(1, action, tmp_path / "X.npy")])
    # The model is as after the last completed epoch.
    assert np.array_equal(model.params, reference.params)
    assert model.optimizer.step_count == reference.optimizer.step_count


# ---------------------------------------------------------------- shuffle="chunks"
@pytest.mark.parametrize("n,chunk_rows,window", [(1000, 64, 3), (7, 3, 1), (5, 10, 4),
                                                 (130, 13, 10)])
def test_chunk_shuffle_order(n, chunk_rows, window):
    shuffle = ChunkShuffle(chunk_rows=chunk_rows, window=window)
    order = np.zeros(n, dtype=np.int64)
    shuffle.fill_order(np.random.default_rng(0), order)
    assert np.array_equal(np.sort(order), np.arange(n))
    chunk_of = order // chunk_rows
    # Walk the windows: each covers whole chunks, at most `window` of them, and together
    # they cover every chunk once.
    at, seen = 0, set()
    while at < n:
        chunks = set()
        rows = 0
        while at + rows < n and len(chunks | {chunk_of[at + rows]}) <= window:
            chunks.add(int(chunk_of[at + rows]))
            rows += 1
        size = sum(min(chunk_rows, n - c * chunk_rows) for c in chunks)
        assert set(chunk_of[at:at + size].tolist()) == chunks and not chunks & seen
        seen |= chunks
        at += size
    assert seen == set(range(-(-n // chunk_rows)))


def test_chunk_shuffle_actually_shuffles_within_windows_and_across_epochs():
    shuffle = ChunkShuffle(chunk_rows=100, window=4)
    rng = np.random.default_rng(1)
    first, second = np.zeros(1000, np.int64), np.zeros(1000, np.int64)
    shuffle.fill_order(rng, first)
    shuffle.fill_order(rng, second)
    assert not np.array_equal(first, second)
    assert not np.array_equal(first[:400], np.sort(first[:400]))


def test_chunk_shuffle_resume_is_bit_identical(tmp_path, data):
    X, y = data
    shuffle = ChunkShuffle(chunk_rows=50, window=3)
    straight = make_model()
    straight.fit(X, y, epochs=4, batch_size=32, shuffle=shuffle)
    checkpoint = tmp_path / "run.fmlp"
    first = make_model()
    first.fit(X, y, epochs=2, batch_size=32, shuffle=shuffle, checkpoint=checkpoint)
    resumed = make_model()
    resumed.fit(X, y, epochs=4, batch_size=32, shuffle=shuffle, checkpoint=checkpoint,
                resume=True)
    assert resumed.history.epoch == [3, 4]
    assert np.array_equal(straight.params, resumed.params)
    assert straight.optimizer.step_count == resumed.optimizer.step_count
    for other in (True, ChunkShuffle(chunk_rows=50, window=2), "chunks"):
        with pytest.raises(ValueError, match="written by fit with shuffle=ChunkShuffle"
                                             r"\(chunk_rows=50, window=3\)"):
            make_model().fit(X, y, epochs=4, batch_size=32, shuffle=other,
                             checkpoint=checkpoint, resume=True)


def test_full_shuffle_checkpoint_refuses_a_chunk_shuffle_resume(tmp_path, data):
    X, y = data
    checkpoint = tmp_path / "run.fmlp"
    make_model().fit(X, y, epochs=1, checkpoint=checkpoint)
    with pytest.raises(ValueError, match=r"shuffle=True, this call has shuffle=ChunkShuffle"):
        make_model().fit(X, y, epochs=2, shuffle="chunks", checkpoint=checkpoint, resume=True)


def test_shuffle_chunks_trains_and_differs_from_the_full_shuffle(data):
    X, y = data
    a, b = make_model(), make_model()
    a.fit(X, y, epochs=5, shuffle="chunks")
    b.fit(X, y, epochs=5, shuffle=ChunkShuffle())
    assert np.array_equal(a.params, b.params)  # "chunks" is ChunkShuffle()
    assert a.score(X, y) > 0.8  # quadrant classes: learnable by a small net


@pytest.mark.parametrize("shuffle,message", [
    ("rows", "shuffle must be True, False, 'chunks' or a ChunkShuffle"),
    (1, "shuffle must be True, False, 'chunks' or a ChunkShuffle")])
def test_bad_shuffle(data, shuffle, message):
    with pytest.raises(ValueError, match=message):
        make_model().fit(*data, shuffle=shuffle)


@pytest.mark.parametrize("kwargs,message", [(dict(chunk_rows=0), "chunk_rows must be a positive"),
                                            (dict(window=1.5), "window must be a positive"),
                                            (dict(window=True), "window must be a positive")])
def test_bad_chunk_shuffle(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ChunkShuffle(**kwargs)


# ---------------------------------------------------------------- chunk sources
def chunks_of(X, y, size):
    return lambda: ((X[lo:lo + size], y[lo:lo + size]) for lo in range(0, len(X), size))


def test_chunk_source_trains_as_arrays_when_chunks_hold_whole_batches(data):
    X, y = data
    a, b = make_model(), make_model()
    a.fit(X, y, epochs=3, batch_size=30, shuffle=False)
    b.fit(chunks_of(X, y, 120), epochs=3, batch_size=30, shuffle=False)
    assert np.array_equal(a.params, b.params)  # the same batches in the same order
    # The epoch's loss is the same rows' losses, summed per chunk instead of at once: the
    # float64 sum of N per-row terms reassociated, so a few ulps of float64 at most.
    np.testing.assert_allclose(a.history.history["loss"], b.history.history["loss"],
                               rtol=N * np.finfo(np.float64).eps)
    assert a.history.history["accuracy"] == b.history.history["accuracy"]


def test_chunk_source_with_clipping_records_the_gradient_norm(data):
    X, y = data
    a, b = make_model(), make_model()
    a.optimizer.clip_norm = b.optimizer.clip_norm = 0.5
    a.fit(X, y, epochs=2, batch_size=30, shuffle=False)
    b.fit(chunks_of(X, y, 120), epochs=2, batch_size=30, shuffle=False)
    assert np.array_equal(a.params, b.params)  # the same clipped steps in the same order
    # The mean of the same per-step norms, summed per chunk instead of at once (float64).
    np.testing.assert_allclose(a.history.history["grad_norm"], b.history.history["grad_norm"],
                               rtol=N * np.finfo(np.float64).eps)


def test_chunk_source_list_and_shuffle_within_chunks(data):
    X, y = data
    pairs = [(X[:300], y[:300]), (X[300:], y[300:])]
    model = make_model()
    history = model.fit(pairs, epochs=20, batch_size=16, validation_data=pairs)
    assert model.score(X, y) > 0.8
    assert "val_loss" in history.history
    evaluated = model.evaluate(pairs)
    in_memory = model.evaluate(X, y)
    assert evaluated["accuracy"] == in_memory["accuracy"]
    # Two chunks' mean losses recombined by row counts vs one pass: float64 rounding of a
    # sum of N terms, as above.
    assert evaluated["loss"] == pytest.approx(in_memory["loss"], rel=N * np.finfo(np.float64).eps)


def test_bad_chunk_mid_epoch_leaves_the_last_completed_step(data):
    X, y = data
    X_bad = X.copy()
    X_bad[450, 2] = np.nan
    reference = make_model()
    reference.fit(chunks_of(X[:400], y[:400], 200), epochs=1, batch_size=32)
    model = make_model()
    with pytest.raises(ValueError, match=r"chunk 2 of epoch 1 \(from row 400\): X has a NaN or "
                                         r"infinite value in row 450 of the epoch \(row 50 of "
                                         r"the chunk, column 2\)"):
        model.fit(chunks_of(X_bad, y, 200), epochs=1, batch_size=32)
    assert np.array_equal(model.params, reference.params)
    assert model.optimizer.step_count == reference.optimizer.step_count


@pytest.mark.parametrize("chunk,message", [
    ((np.ones((10, N_IN + 2)), np.zeros(10, int)),
     rf"chunk 1 of epoch 1 \(from row 100\): X has {N_IN + 2} features per row"),
    ((np.ones((10, N_IN)), np.full(10, N_OUT)),
     rf"chunk 1 of epoch 1 \(from row 100\): y\[0\] = {N_OUT} is not a class index"),
    ((np.ones((10, N_IN)), np.zeros(9, int)), "y has 9 labels but X has 10 rows"),
    ("not a pair", "chunk 1 of epoch 1 .*expected a pair"),
])
def test_bad_late_chunks(data, chunk, message):
    X, y = data
    with pytest.raises((ValueError, TypeError), match=message):
        make_model().fit(lambda: iter([(X[:100], y[:100]), chunk]), epochs=1)


@pytest.mark.parametrize("kwargs,message", [
    (dict(y=np.zeros(3)), "does not take y"),
    (dict(validation_split=0.2), "does not take validation_split"),
    (dict(sample_weight=np.ones(3)), "does not take sample_weight"),
    (dict(class_weight="balanced"), "does not take class_weight"),
    (dict(checkpoint="x.fmlp"), "does not take checkpoint"),
    (dict(shuffle="chunks"), "shuffle='chunks' is for arrays"),
])
def test_chunk_source_refuses(data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_model().fit(chunks_of(*data, 100), **kwargs)


def test_one_shot_iterator_serves_one_epoch(data):
    X, y = data
    make_model().fit(iter([(X, y)]), epochs=1)
    with pytest.raises(ValueError, match="X is an iterator, good for one epoch"):
        make_model().fit(iter([(X, y)]), epochs=2)


def test_empty_source(data):
    with pytest.raises(ValueError, match="yielded no chunks in epoch 1"):
        make_model().fit(lambda: iter(()), epochs=1)


def test_parquet_row_groups(tmp_path, data):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    X, y = data
    columns = {f"x{j}": X[:, j] for j in range(N_IN)} | {"label": y}
    pq.write_table(pa.table(columns), tmp_path / "train.parquet", row_group_size=128)

    def row_groups():
        f = pq.ParquetFile(tmp_path / "train.parquet")
        for k in range(f.num_row_groups):
            t = f.read_row_group(k)
            yield (np.column_stack([t[f"x{j}"].to_numpy() for j in range(N_IN)]),
                   t["label"].to_numpy())

    a, b = make_model(), make_model()
    a.fit(row_groups, epochs=2, batch_size=32, shuffle=False)
    b.fit(chunks_of(X, y, 128), epochs=2, batch_size=32, shuffle=False)
    assert np.array_equal(a.params, b.params)


# ---------------------------------------------------------------- the command line
def test_cli_maps_npy_inputs(tmp_path, data, capsys):
    from fastmlp.datafiles import load_data

    X, y = data
    np.save(tmp_path / "X.npy", X.astype(np.float32))
    np.save(tmp_path / "y.npy", y)
    pair = f"{tmp_path / 'X.npy'}:{tmp_path / 'y.npy'}"
    X_loaded, _ = load_data(pair)
    assert isinstance(X_loaded, np.memmap) and X_loaded.dtype == np.float32
    out = tmp_path / "m.fmlp"
    assert main(["train", pair, "--hidden", "8", "--epochs", "2", "--val-split", "0.25",
                 "--seed", "0", "--out", str(out), "--quiet"]) == 0
    assert "trained 450 samples" in capsys.readouterr().out


# ---------------------------------------------------------------- memory
RSS_PROBE = textwrap.dedent("""
    import sys, threading, time
    import numpy as np
    from fastmlp import Sequential, Dense, SGD
    from fastmlp.sequential import PREDICT_CHUNK_ROWS

    def rss_anon():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024

    path, n_features = sys.argv[1], int(sys.argv[2])
    model = Sequential([Dense(n_features, 16, activation="relu"), Dense(16, 4)],
                       optimizer=SGD(lr=0.01), seed=0)
    X = np.load(path, mmap_mode="r")
    y = np.zeros(X.shape[0], dtype=np.int64)
    # Compile everything on a few rows first: the compiler's memory is not the data's.  Over
    # more rows than one prediction chunk, so that evaluation and prediction compile the
    # build (serial or parallel) that the whole file's chunks then use.
    few = 2 * PREDICT_CHUNK_ROWS
    model.fit(X[:few], y[:few], epochs=1, batch_size=256, shuffle="chunks",
              validation_data=(X[:few], y[:few]))
    model.predict_proba(X[:few])
    base = rss_anon()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    model.fit(X, y, epochs=1, batch_size=256, shuffle="chunks", validation_data=(X, y))
    model.predict_proba(X[: X.shape[0] // 2])
    done.set()
    sampler.join()
    peak[0] = max(peak[0], rss_anon())
    print(base, peak[0])
""")


def test_fit_on_a_mapped_file_takes_memory_that_does_not_grow_with_it(tmp_path):
    n_features, n_rows = 64, 1 << 19  # 256 MiB of float64: a float32 copy would be 128 MiB
    path = tmp_path / "big.npy"
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n_rows, n_features))
    rng = np.random.default_rng(0)
    for lo in range(0, n_rows, 1 << 16):
        X[lo:lo + (1 << 16)] = rng.standard_normal((1 << 16, n_features))
    X.flush()
    del X
    result = subprocess.run([sys.executable, "-c", RSS_PROBE, str(path), str(n_features)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    base, peak = map(int, result.stdout.split()[-2:])
    # What does grow with the rows: labels and row order (8 bytes each), the predictions of
    # half the rows (4 outputs of float32), 8 + 8 + 8 = 24 bytes a row; plus one chunk of
    # the streaming check (CHECK_CHUNK_BYTES, and its float32 copy and mask).  Anything
    # that copied X (128 MiB in float32) would break the bound.
    per_row = 8 + 8 + 4 * 4 / 2
    bound = n_rows * per_row + 2 * streaming.CHECK_CHUNK_BYTES + (16 << 20)
    assert peak - base < bound, f"RssAnon grew by {(peak - base) / 2**20:.1f} MiB"
    assert bound < n_rows * n_features * 4 / 2  # the bound is tighter than half a copy


# ---------------------------------------------------------------- MPI
def test_mpi_ranks_read_only_their_slice_of_a_mapped_file(tmp_path, data):
    from test_distributed import MPIEXEC, mpiexec

    if not MPIEXEC.exists():
        pytest.fail(f"{MPIEXEC} missing: mpich is part of the test extra")
    X, y = data
    used = N - 50
    X = X.copy()
    X[used + 10, 0] = np.nan  # past every rank's slice: reading it would fail the fit
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    (tmp_path / "used_rows.txt").write_text(str(used))
    script = os.path.join(os.path.dirname(__file__), "mpi_large_data.py")
    run = mpiexec(2, [sys.executable, script, str(tmp_path)], tmp_path / "logs")
    assert run.returncode == 0, repr(run)
    assert (tmp_path / "result.txt").read_text() == "ok", repr(run)


def test_a_list_of_number_pairs_is_still_data():
    X = [(0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (0.0, 0.0)]
    model = Sequential([Dense(2, 4, activation="tanh"), Dense(4, 2)], seed=0)
    model.fit(X, [1, 1, 0, 0], epochs=2)
    assert model.predict(X).shape == (4,)
