"""The command line: demo (the README's main job), train, predict, evaluate, bench, and
clear one-line errors for bad files and arguments."""

import subprocess
import sys

import numba
import numpy as np
import pytest

import fastmlp
from fastmlp.cli import build_parser, main
from fastmlp.datasets import make_spiral


def test_demo_runs_and_reaches_its_accuracy():
    # As README's first command runs it: on its default of one thread.
    assert build_parser().parse_args(["demo"]).threads == 1
    out = subprocess.run([sys.executable, "-m", "fastmlp", "demo"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 35  # 20 spiral + 15 digits epochs
    spiral = float(next(line for line in lines if line.startswith("spiral: final")).split()[-1])
    digits = float(next(line for line in lines if line.startswith("digits: final")).split()[-1])
    assert spiral >= 0.95 and digits >= 0.93


def test_help_and_usage(capsys):
    for command in ([], ["train"], ["predict"], ["evaluate"], ["demo"], ["bench"]):
        with pytest.raises(SystemExit) as exc:
            main(command + ["--help"])
        assert exc.value.code == 0
        assert "usage: fastmlp" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["demo", "--threads", "0"]) == 1
    assert "thread count must be an integer" in capsys.readouterr().err


@pytest.fixture
def spiral_csv(tmp_path):
    X, y = make_spiral(n_per_class=60, seed=0)
    path = tmp_path / "spiral.csv"
    rows = ["x,y,cls"] + [f"{a:.6f},{b:.6f},{c}" for (a, b), c in zip(X, y)]
    path.write_text("\n".join(rows) + "\n")
    return path, X, y


def test_train_predict_evaluate_round_trip(tmp_path, spiral_csv, capsys):
    csv, X, y = spiral_csv
    model = tmp_path / "spiral.fastmlp"
    assert main(["train", str(csv), "--label", "cls", "--hidden", "100", "--epochs", "150",
                 "--lr", "0.1", "--seed", "1", "--val-split", "0.1", "--out", str(model), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "saved to" in out and "accuracy" in out
    # predict takes the training file as it is (its label column is dropped) ...
    assert main(["predict", str(model), str(csv), "--label", "cls"]) == 0
    labels = np.array(capsys.readouterr().out.split(), dtype=int)
    assert labels.shape == (180,) and (labels == y).mean() > 0.9
    # ... and an unlabelled file, written to --out
    np.save(tmp_path / "X.npy", X)
    predictions = tmp_path / "pred.txt"
    assert main(["predict", str(model), str(tmp_path / "X.npy"), "--out", str(predictions)]) == 0
    # Class labels: integers.
    np.testing.assert_array_equal(np.loadtxt(predictions, dtype=int), labels)
    assert main(["predict", str(model), str(csv), "--label", "cls", "--proba"]) == 0
    proba = np.array([line.split() for line in capsys.readouterr().out.splitlines()], dtype=float)
    # Printed with 6 significant digits: each of the 3 values off by up to 5e-7 (values
    # < 1) plus the float32 softmax's own gamma(5): 1e-5 bounds the row sums.
    np.testing.assert_allclose(proba.sum(axis=1), 1, atol=1e-5)
    assert main(["evaluate", str(model), str(csv), "--label", "cls"]) == 0
    report = dict(line.split() for line in capsys.readouterr().out.splitlines())
    # Printed with 6 decimals (%.6f): within 5e-7 of the fraction.
    assert float(report["accuracy"]) == pytest.approx((labels == y).mean(), abs=5e-7)


def test_train_regression_from_npy_pair(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(200, 3))
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", X @ [1.0, -2.0, 0.5])
    data = f"{tmp_path / 'X.npy'}:{tmp_path / 'y.npy'}"
    assert main(["train", data, "--loss", "mse", "--hidden", "", "--epochs", "60", "--lr", "0.05",
                 "--out", str(tmp_path / "lin.fastmlp"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "lin.fastmlp"), data]) == 0
    report = dict(line.split() for line in capsys.readouterr().out.splitlines())
    assert float(report["r2"]) > 0.99


BAD_FILES = [
    ("missing.csv", None, "no such file"),
    ("empty.csv", "", "empty file"),
    ("header.csv", "a,b,c\n", "a header but no data rows"),
    ("ragged.csv", "a,b,c\n1,2,3\n4,5\n", "line 3: 2 cells, the header has 3"),
    ("words.csv", "a,b,c\n1,2,3\n4,five,6\n", "line 3, column 'b': 'five' is not a number"),
    ("binary.csv", b"\xff\xfe\x00\x01garbage", "not a text CSV file"),
    ("broken.npz", b"PK\x03\x04 not really a zip", "not a readable .npz file"),
]


@pytest.mark.parametrize("name,content,message", BAD_FILES)
def test_malformed_files_get_one_clear_line(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["train", str(path), "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastmlp: error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_columns_and_arguments(tmp_path, spiral_csv, capsys):
    csv, _, _ = spiral_csv
    cases = [
        (["train", str(csv), "--label", "nope"], "no column named 'nope'"),
        (["train", str(csv), "--label", "7"], "column 7 is out of range"),
        (["train", str(csv), "--hidden", "ten"], "--hidden must be comma-separated integers"),
        (["train", str(csv), "--lr", "-1"], "lr must be in [0.0, inf)"),
        (["train", str(csv), "--early-stopping", "3"], "add --val-split"),
        (["train", str(csv), "--val-split", "0.2", "--early-stopping", "-1"], "--early-stopping must be >= 0"),
        (["train", str(csv), "--plot", str(tmp_path / "no" / "such" / "dir.png")], "does not exist"),
        (["train", str(csv), "--epochs", "0"], "epochs must be a positive integer"),
        (["train", str(csv), "--val-split", "1.5"], "--val-split must be in [0, 1)"),
        (["train", str(csv), "--label", "x"], "labels must be class indices"),
        (["predict", str(tmp_path / "nomodel"), str(csv)], "nomodel"),
        (["evaluate", str(csv), str(csv)], str(csv)),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_train_with_early_stopping_schedule_and_plot(tmp_path, spiral_csv, capsys):
    csv, _, _ = spiral_csv
    plot = tmp_path / "curves.png"
    assert main(["train", str(csv), "--label", "cls", "--epochs", "40", "--lr", "0.5",
                 "--val-split", "0.2", "--early-stopping", "2", "--lr-schedule", "plateau",
                 "--plot", str(plot), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    # One finished bar per epoch run (only a finished one shows val_loss), then the summary.
    bars = [line for line in out.splitlines() if line.startswith("epoch ") and "val_loss" in line]
    epochs_run = int(out.split(" epochs")[0].split(" x ")[-1])
    assert 1 <= epochs_run <= 40 and len(bars) == epochs_run
    assert "kept the weights of epoch" in out and "lr " in bars[0]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["train", str(csv), "--label", "cls", "--epochs", "3", "--lr-schedule", "cosine",
                 "--quiet"]) == 0
    assert "x 3 epochs" in capsys.readouterr().out


def test_bench_quick_prints_every_shape():
    out = subprocess.run([sys.executable, "-m", "fastmlp", "bench", "--quick", "--threads", "1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 5 and all(float(r.split()[-1].replace(",", "")) > 0 for r in rows)


def test_proba_of_a_model_without_probabilities_is_one_clear_line(tmp_path, spiral_csv, capsys):
    csv, _, _ = spiral_csv
    model = tmp_path / "hinge.fastmlp"
    assert main(["train", str(csv), "--label", "cls", "--loss", "multiclass_hinge", "--epochs", "1",
                 "--quiet", "--out", str(model)]) == 0
    capsys.readouterr()
    assert main(["predict", str(model), str(csv), "--label", "cls", "--proba"]) == 1
    err = capsys.readouterr().err
    assert "--proba needs a softmax_cross_entropy" in err and "multiclass_hinge" in err
    assert "Traceback" not in err


def test_a_closed_pipe_ends_the_command_quietly():
    """``fastmlp demo | head -1``: the reader leaves early; no traceback follows."""
    process = subprocess.Popen([sys.executable, "-m", "fastmlp", "demo", "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().startswith("== spiral")
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait(timeout=600) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
def test_reproducible_flag_gives_the_same_model_and_predictions_on_one_and_two_threads(
        tmp_path, spiral_csv, capsys, monkeypatch):
    # 400 hidden units on 180 rows: the elementwise passes have work to split, so 1 and 2
    # threads would run different builds outside reproducible mode.
    csv, X, y = spiral_csv
    seen = []
    real_fit = fastmlp.Sequential.fit

    def fit(self, *args, **kwargs):
        seen.append(fastmlp.get_reproducible())
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(fastmlp.Sequential, "fit", fit)
    outputs = []
    for threads in ("1", "2"):
        model = tmp_path / f"spiral-{threads}.fastmlp"
        assert main(["train", str(csv), "--label", "cls", "--hidden", "400", "--epochs", "3",
                     "--batch-size", "256", "--out", str(model), "--quiet", "--reproducible",
                     "--threads", threads]) == 0
        capsys.readouterr()
        assert main(["predict", str(model), str(csv), "--label", "cls", "--proba",
                     "--reproducible", "--threads", threads]) == 0
        outputs.append((fastmlp.load(model).get_weights(), capsys.readouterr().out))
    assert seen == [True, True]
    assert fastmlp.get_reproducible() is False  # the flag lasts for its command only
    for a, b in zip(outputs[0][0], outputs[1][0]):
        np.testing.assert_array_equal(a, b)
    assert outputs[0][1] == outputs[1][1]
