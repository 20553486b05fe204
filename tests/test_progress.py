"""What fit prints: verbose=1 (tqdm's bar or the plain one), verbose=2, verbose=0; the
epoch run in slices for the bar ends exactly as the epoch run whole."""

import io
import re
import subprocess
import sys

import numpy as np
import pytest

from tolerances import FLOAT64_TRAJECTORY_RTOL

import fastmlp.progress as progress
import fastmlp.training.local as local_training
from fastmlp import SGD, Dense, DivergenceError, Sequential
from fastmlp.callbacks import EarlyStopping, ReduceLROnPlateau, StepDecay
from fastmlp.kernels import network
from fastmlp.progress import BAR_WIDTH, EpochProgress
from conftest import three_class_data as _data, training_state as _state


def _model(loss="softmax_cross_entropy", n_out=3, dtype=np.float32, lr=0.1):
    return Sequential([Dense(4, 8, activation="tanh"), Dense(8, n_out)], loss=loss,
                      optimizer=SGD(lr=lr, momentum=0.9), seed=3, dtype=dtype)


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def no_tqdm(monkeypatch):
    monkeypatch.setattr(progress, "_tqdm", lambda: None)


FULL_BAR = "[" + "=" * BAR_WIDTH + "]"


def _besides_compile_notices(err):
    # With a cold cache (this file run on its own) a verbose fit compiles kernels and says
    # so on stderr, as it should (tests/test_cache.py checks those notices); nothing else
    # may go there.
    return [line for line in err.splitlines()
            if not line.startswith(("fastmlp: compiling ", "fastmlp: compiled in "))]


# ----------------------------------------------------------------------------- the plain bar through fit
@pytest.mark.parametrize("with_validation", [True, False])
def test_plain_bar_to_a_file_writes_one_finished_line_per_epoch(no_tqdm, capsys, with_validation):
    X, y = _data()
    kw = dict(validation_data=(X[:8], y[:8])) if with_validation else {}
    history = _model().fit(X, y, epochs=3, batch_size=8, verbose=1, **kw)
    captured = capsys.readouterr()
    assert _besides_compile_notices(captured.err) == []
    assert "\r" not in captured.out and captured.out.endswith("\n")
    lines = captured.out.splitlines()
    assert len(lines) == 3
    for k, line in enumerate(lines, 1):
        assert line.startswith(f"epoch {k}/3 {FULL_BAR} 5/5  ")
        assert f"loss {history['loss'][k - 1]:.4f}" in line
        assert f"accuracy {history['accuracy'][k - 1]:.4f}" in line
        if with_validation:
            assert f"val_loss {history['val_loss'][k - 1]:.4f}" in line
            assert f"val_accuracy {history['val_accuracy'][k - 1]:.4f}" in line
        else:
            assert "val_" not in line
        assert "lr " not in line
        assert re.search(r"  \d+\.\d\ds$", line)


def test_plain_bar_for_a_regressor(no_tqdm, capsys):
    X, _ = _data()
    y = X @ np.ones((4, 2))
    history = _model("mse", 2).fit(X, y, epochs=2, batch_size=16, verbose=1,
                                   callbacks=[StepDecay(1, 0.5)])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith(f"epoch 2/2 {FULL_BAR} 3/3  loss {history['loss'][1]:.4f}  lr 0.05  ")
    assert "accuracy" not in lines[0]


def test_plain_bar_when_training_diverges_shows_the_batches_done(no_tqdm, capsys):
    X, _ = _data(24)
    y = X @ np.ones((4, 2))
    model = Sequential([Dense(4, 8, activation="relu"), Dense(8, 2)], loss="mse",
                       optimizer=SGD(lr=1e30), seed=3)
    with pytest.raises(DivergenceError, match="epoch 1, step 2 of 3"):
        model.fit(X, y, epochs=3, batch_size=8, verbose=1)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("epoch 1/3 [")
    assert "loss " in lines[0]
    # One batch of three ran: the bar must not claim the epoch finished.
    assert " 1/3  " in lines[0] and FULL_BAR not in lines[0]


def test_running_metrics_on_a_terminal_are_the_means_over_the_batches_so_far(monkeypatch):
    monkeypatch.setattr(progress, "_tqdm", lambda: None)
    monkeypatch.setattr(progress, "REDRAW_SECONDS", 0)  # draw at every update
    monkeypatch.setattr(local_training, "REDRAW_SECONDS", 1e-9)  # one batch per slice
    stream = FakeTTY()
    monkeypatch.setattr(sys, "stdout", stream)
    rng = np.random.default_rng(8)
    n, batch = 23, 5  # the last batch has 3 rows
    X = rng.normal(size=(n, 4))
    y = rng.integers(0, 3, size=n)
    w = rng.uniform(0, 2, size=n)
    model, twin = _model(dtype=np.float64), _model(dtype=np.float64)
    history = model.fit(X, y, epochs=1, batch_size=batch, shuffle=False, sample_weight=w, verbose=1)
    draws = stream.getvalue()[1:].split("\r")
    assert len(draws) == 5 + 1  # one per batch, and the close
    loss_sum, right = 0.0, 0
    for k, start in enumerate(range(0, n, batch), 1):
        Xb, yb = X[start:start + batch], y[start:start + batch]
        right += int((twin.predict(Xb) == yb).sum())
        loss_sum += len(yb) * twin.train_step(Xb, yb, sample_weight=w[start:start + batch])
        rows = min(n, start + batch)
        assert f"] {k}/5  loss {loss_sum / rows:.4f}  accuracy {right / rows:.4f}  " in draws[k - 1]
    assert draws[-1].startswith(f"epoch 1/1 {FULL_BAR} 5/5  loss {history['loss'][0]:.4f}  ")
    # fit's compiled loop against train_step, float64 sums of the same losses:
    # tolerances.FLOAT64_TRAJECTORY_RTOL (both models are float64).
    assert history["loss"][0] == pytest.approx(loss_sum / n, rel=FLOAT64_TRAJECTORY_RTOL)


# ----------------------------------------------------------------------------- EpochProgress alone
def test_plain_bar_on_a_terminal_redraws_in_place(monkeypatch):
    monkeypatch.setattr(progress, "REDRAW_SECONDS", 0)
    stream = FakeTTY()
    bar = EpochProgress(2, 5, 4, stream=stream, use_tqdm=False)
    for done in (1, 2, 3):
        bar.update(done, {"loss": 1.0 / done})
    bar.close({"loss": 0.25, "val_loss": 0.5})
    out = stream.getvalue()
    assert out.startswith("\r") and out.endswith("\n") and out.count("\n") == 1
    draws = out[1:].split("\r")
    assert len(draws) == 4
    assert draws[0].startswith("epoch 2/5 [" + "=" * 6 + ">" + "." * 17 + "] 1/4  loss 1.0000  ")
    assert draws[1].startswith("epoch 2/5 [" + "=" * 12 + ">" + "." * 11 + "] 2/4  loss 0.5000  ")
    assert draws[2].startswith("epoch 2/5 [" + "=" * 18 + ">" + "." * 5 + "] 3/4  loss 0.3333  ")
    assert draws[3].startswith(f"epoch 2/5 {FULL_BAR} 4/4  loss 0.2500  val_loss 0.5000  ")
    assert all(re.search(r"  \d+\.\d\ds\n?$", d) for d in draws)


def test_plain_bar_on_a_terminal_redraws_at_most_every_redraw_seconds(monkeypatch):
    monkeypatch.setattr(progress, "REDRAW_SECONDS", 3600.0)
    clock = {"now": 1000.0}
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock["now"])
    stream = FakeTTY()
    bar = EpochProgress(1, 1, 10, stream=stream, use_tqdm=False)
    for done, now in [(1, 5000.0), (2, 5001.0), (3, 8599.0), (4, 8601.0), (5, 8602.0)]:
        clock["now"] = now  # drawn at 5000 and at 8601, an hour later; the rest too soon
        bar.update(done, {"loss": 1.0})
    bar.close({"loss": 1.0})
    draws = stream.getvalue()[1:].split("\r")
    assert [d.split("  ")[0].split("] ")[1] for d in draws] == ["1/10", "4/10", "10/10"]
    assert draws[-1].endswith("  7602.00s\n")  # seconds since the bar started


def test_plain_bar_to_a_file_writes_only_when_closed():
    stream = io.StringIO()
    bar = EpochProgress(1, 2, 3, stream=stream, use_tqdm=False)
    bar.update(1, {"loss": 0.5})
    bar.update(2, {"loss": 0.5})
    assert stream.getvalue() == ""
    bar.close({"loss": 0.5, "accuracy": 0.75})
    out = stream.getvalue()
    assert out.startswith(f"epoch 1/2 {FULL_BAR} 3/3  loss 0.5000  accuracy 0.7500  ")
    assert out.count("\n") == 1 and out.endswith("\n") and "\r" not in out


def test_tqdm_bar_directly():
    stream = io.StringIO()
    bar = EpochProgress(1, 3, 4, stream=stream, use_tqdm=True)
    bar.update(2, {"loss": 0.5})
    bar.close({"loss": 0.25, "val_loss": 0.5})
    out = stream.getvalue()
    assert "epoch 1/3" in out and "4/4" in out and "loss 0.2500  val_loss 0.5000" in out
    assert out.endswith("\n")


def test_epoch_line_and_format_metrics():
    assert progress.format_metrics({"loss": 0.123456, "lr": 0.000123456}) == "loss 0.1235  lr 0.0001235"
    assert progress.epoch_line(3, 10, {"loss": 1.0}, 2.5) == "epoch 3/10  loss 1.0000  2.50s"


# ----------------------------------------------------------------------------- tqdm through fit
def test_tqdm_bar_through_fit(capsys):
    import tqdm  # noqa: F401  (in the test extra: this test needs it, and does not skip)

    X, y = _data()
    history = _model().fit(X, y, epochs=2, batch_size=8, verbose=1, validation_data=(X[:8], y[:8]))
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out
    assert "5/5" in out and "batch" in out
    for k in (0, 1):
        assert (f"loss {history['loss'][k]:.4f}  accuracy {history['accuracy'][k]:.4f}  "
                f"val_loss {history['val_loss'][k]:.4f}  val_accuracy {history['val_accuracy'][k]:.4f}") in out
    assert FULL_BAR not in out  # tqdm's bar, not the plain one


@pytest.mark.parametrize("code", [
    "import fastmlp",
    "import fastmlp, numpy as np\n"
    "m = fastmlp.Sequential([fastmlp.Dense(2, 2)], seed=0)\n"
    "X = np.zeros((4, 2)); y = np.array([0, 1, 0, 1])\n"
    "m.fit(X, y, epochs=2, verbose=0); m.fit(X, y, epochs=2, verbose=2)\n"
    "h = m.history",
])
def test_tqdm_and_matplotlib_are_imported_lazily(code):
    check = (code + "\nimport sys\n"
             "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tqdm', 'matplotlib'))\n"
             "assert not bad, bad\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


# ----------------------------------------------------------------------------- slices
@pytest.mark.parametrize("bar", ["plain", "tqdm"])
def test_an_epoch_in_slices_ends_exactly_as_one_whole(monkeypatch, capsys, bar):
    if bar == "plain":
        monkeypatch.setattr(progress, "_tqdm", lambda: None)
    monkeypatch.setattr(local_training, "REDRAW_SECONDS", 1e-7)  # a slice of ~one batch per redraw
    calls = []
    real = network.train_epoch

    def spy(*args):
        calls.append((args[-6], args[-5]))  # first_batch, stop_batch
        return real(*args)

    monkeypatch.setattr(network, "train_epoch", spy)
    rng = np.random.default_rng(5)
    X = rng.normal(size=(3000, 4))
    y = (X[:, 0] > X[:, 1]).astype(int) + (X[:, 2] > 0)
    n_batches = 375
    kw = dict(epochs=2, batch_size=8, shuffle=True, validation_data=(X[:50], y[:50]))

    whole = _model(dtype=np.float64, lr=0.02)
    h_whole = whole.fit(X, y, verbose=0, **kw)
    assert calls == [(0, n_batches)] * 2
    calls.clear()

    sliced = _model(dtype=np.float64, lr=0.02)
    h_sliced = sliced.fit(X, y, verbose=1, **kw)
    assert len(calls) > 4
    epoch_starts = [k for k, (first, _) in enumerate(calls) if first == 0]
    assert len(epoch_starts) == 2
    for a, b in zip(epoch_starts, epoch_starts[1:] + [len(calls)]):
        epoch = calls[a:b]
        assert len(epoch) > 1  # really in slices
        assert epoch[-1][1] == n_batches
        assert all(prev[1] == nxt[0] for prev, nxt in zip(epoch, epoch[1:]))  # contiguous

    assert _state(sliced) == _state(whole)
    assert h_sliced.history == h_whole.history
    assert "epoch 2/2" in capsys.readouterr().out


# ----------------------------------------------------------------------------- verbose=2, 0, bad values
LINE = r"^epoch (\d+)/3  loss \d+\.\d{4}  accuracy \d\.\d{4}  (lr [0-9.e-]+  )?\d+\.\d\ds$"


@pytest.mark.parametrize("callbacks,shows_lr", [
    ([], False), ([EarlyStopping("loss")], False), ([StepDecay(1, 0.5)], True),
    ([ReduceLROnPlateau("loss")], True),
])
def test_verbose_2_prints_one_line_per_epoch(capsys, callbacks, shows_lr):
    X, y = _data()
    history = _model().fit(X, y, epochs=3, batch_size=8, verbose=2, callbacks=callbacks)
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == len(history.epoch) and _besides_compile_notices(captured.err) == []
    for epoch, line in zip(history.epoch, lines):
        match = re.match(LINE, line)
        assert match, line
        assert int(match.group(1)) == epoch
        assert f"loss {history['loss'][epoch - 1]:.4f}  accuracy {history['accuracy'][epoch - 1]:.4f}" in line
        assert (match.group(2) is not None) == shows_lr
        if shows_lr:
            assert match.group(2) == f"lr {history['lr'][epoch - 1]:.4g}  "
    if callbacks and isinstance(callbacks[0], StepDecay):
        assert "lr 0.025" in lines[2]


def test_verbose_2_with_validation_data(capsys):
    X, y = _data()
    history = _model().fit(X, y, epochs=2, batch_size=8, verbose=2, validation_data=(X[:8], y[:8]))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith(f"epoch 2/2  loss {history['loss'][1]:.4f}  accuracy "
                               f"{history['accuracy'][1]:.4f}  val_loss {history['val_loss'][1]:.4f}  "
                               f"val_accuracy {history['val_accuracy'][1]:.4f}  ")


def test_verbose_0_is_silent(capsys):
    X, y = _data()
    _model().fit(X, y, epochs=3, batch_size=8, verbose=0, validation_data=(X[:8], y[:8]),
                 callbacks=[StepDecay(1, 0.5), EarlyStopping("val_loss")])
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.parametrize("verbose", [3, -1, True, False, 1.0, "1", None, np.float64(2)])
def test_bad_verbose_changes_nothing(verbose):
    X, y = _data()
    model = _model()
    before = _state(model)
    with pytest.raises(ValueError, match="verbose must be 0, 1 or 2"):
        model.fit(X, y, epochs=2, verbose=verbose)
    assert _state(model) == before and model.history is None


def test_numpy_integer_verbose_is_accepted(capsys):
    X, y = _data()
    _model().fit(X, y, epochs=2, batch_size=8, verbose=np.int64(2))
    assert len(capsys.readouterr().out.splitlines()) == 2
