"""History.plot: a matplotlib Figure (no pyplot) with one panel per metric family, saved
where asked; clear errors for an empty History, an unknown metric, a missing matplotlib."""

import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from fastmlp import SGD, Dense, History, Sequential
from conftest import three_class_data as _data


def _fitted_history(loss="softmax_cross_entropy", validation=True, epochs=4):
    X, y = _data()
    if loss == "mse":
        y = X @ np.ones((4, 2))
    model = Sequential([Dense(4, 8, activation="tanh"), Dense(8, 3 if loss != "mse" else 2)], loss=loss,
                       optimizer=SGD(lr=0.1), seed=3)
    kw = dict(validation_data=(X[:8], y[:8])) if validation else {}
    return model.fit(X, y, epochs=epochs, batch_size=8, **kw)


def _lines(axes):
    return {line.get_label(): line for line in axes.get_lines()}


def _assert_line(line, xs, ys):
    # The plot holds the History's floats as given: exact.
    np.testing.assert_array_equal(line.get_xdata(), xs)
    np.testing.assert_array_equal(line.get_ydata(), ys)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_classifier_with_validation(tmp_path):
    history = _fitted_history()
    path = tmp_path / "loss.png"
    figure = history.plot(path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 2
    for axes, name in zip(figure.axes, ["loss", "accuracy"]):
        assert axes.get_ylabel() == name and axes.get_xlabel() == "epoch"
        lines = _lines(axes)
        assert set(lines) == {f"training {name}", f"validation {name}"}
        _assert_line(lines[f"training {name}"], [1, 2, 3, 4], history[name])
        _assert_line(lines[f"validation {name}"], [1, 2, 3, 4], history[f"val_{name}"])
        assert axes.get_legend() is not None
        ticks = axes.get_xticks()
        assert len(ticks) > 0 and np.array_equal(ticks, np.round(ticks))  # whole epochs only


def test_classifier_without_validation_has_training_lines_only():
    history = _fitted_history(validation=False)
    figure = history.plot()
    assert [axes.get_ylabel() for axes in figure.axes] == ["loss", "accuracy"]
    for axes, name in zip(figure.axes, ["loss", "accuracy"]):
        lines = _lines(axes)
        assert list(lines) == [f"training {name}"]
        _assert_line(lines[f"training {name}"], history.epoch, history[name])


def test_regressor_has_one_panel(tmp_path):
    history = _fitted_history("mse")
    figure = history.plot(str(tmp_path / "mse.png"))  # a str path works too
    assert (tmp_path / "mse.png").read_bytes().startswith(PNG_MAGIC)
    assert len(figure.axes) == 1 and figure.axes[0].get_ylabel() == "loss"
    lines = _lines(figure.axes[0])
    assert set(lines) == {"training loss", "validation loss"}
    _assert_line(lines["validation loss"], [1, 2, 3, 4], history["val_loss"])


@pytest.mark.parametrize("metrics", [["loss"], ["accuracy"], ["lr"], ["accuracy", "loss"]])
def test_chosen_metrics(metrics):
    history = _fitted_history()
    figure = history.plot(metrics=metrics)
    assert [axes.get_ylabel() for axes in figure.axes] == metrics
    for axes, name in zip(figure.axes, metrics):
        _assert_line(_lines(axes)[f"training {name}"], history.epoch, history[name])
    if metrics == ["lr"]:
        assert len(figure.axes[0].get_lines()) == 1  # there is no val_lr


def test_epoch_numbers_of_a_resumed_run_are_the_x_values():
    history = History()
    history.epoch = [4, 5, 6]
    history.history = {"loss": [0.5, 0.4, 0.3], "val_loss": [0.6, 0.5, 0.55], "lr": [0.1] * 3}
    figure = history.plot()
    assert len(figure.axes) == 1
    lines = _lines(figure.axes[0])
    _assert_line(lines["training loss"], [4, 5, 6], [0.5, 0.4, 0.3])
    _assert_line(lines["validation loss"], [4, 5, 6], [0.6, 0.5, 0.55])


@pytest.mark.parametrize("suffix,magic", [(".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_other_formats_follow_the_extension(tmp_path, suffix, magic):
    path = tmp_path / f"curves{suffix}"
    _fitted_history(epochs=2).plot(path)
    assert path.read_bytes().startswith(magic)


def test_no_file_without_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert isinstance(_fitted_history(epochs=2).plot(), Figure)
    assert list(tmp_path.iterdir()) == []


def test_unknown_metric_is_refused(tmp_path):
    history = _fitted_history(epochs=2)
    with pytest.raises(ValueError, match="no metric 'val_acc' in this History; it has loss, accuracy"):
        history.plot(tmp_path / "x.png", metrics=["loss", "val_acc"])
    assert not (tmp_path / "x.png").exists()
    mse_history = _fitted_history("mse", epochs=2)
    with pytest.raises(ValueError, match="no metric 'accuracy'"):
        mse_history.plot(metrics=["accuracy"])


def test_empty_history_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no epochs to plot"):
        History().plot(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_without_matplotlib(monkeypatch, tmp_path):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.ticker"):
        monkeypatch.setitem(sys.modules, name, None)
    history = _fitted_history(epochs=2)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        history.plot(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_does_not_import_pyplot(tmp_path):
    path = tmp_path / "p.png"
    code = (
        "import sys, numpy as np, fastmlp\n"
        "X = np.random.default_rng(0).normal(size=(16, 2)); y = (X[:, 0] > 0).astype(int)\n"
        "m = fastmlp.Sequential([fastmlp.Dense(2, 2)], seed=0)\n"
        "h = m.fit(X, y, epochs=3, validation_split=0.25)\n"
        f"fig = h.plot({str(path)!r})\n"
        "assert 'matplotlib.figure' in sys.modules\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
        "print(len(fig.axes))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
    assert path.read_bytes().startswith(PNG_MAGIC)
