"""model.summary(), model.count_params(), and the ``fastmlp info`` / ``fastmlp export``
commands.  Nothing here trains or predicts: no kernel is compiled."""

import re

import numpy as np
import pytest

import fastmlp
import fastmlp.io as fio
from fastmlp import SGD, Adam, Dense, Maxout, Sequential
from fastmlp.cli import main
from fastmlp.summary import readable_size


def _model(dtype=np.float32, optimizer=None):
    return Sequential([Dense(4, 16, activation="relu"), Maxout(16, 8, pieces=3),
                       Dense(8, 8, activation="leaky_relu", negative_slope=0.1), Dense(8, 3)],
                      optimizer=optimizer or Adam(lr=0.002), seed=7, dtype=dtype)


#: Parameters of _model's layers, counted by hand: n_in * pieces * n_out + pieces * n_out.
HAND_COUNTS = [4 * 16 + 16, 16 * 3 * 8 + 3 * 8, 8 * 8 + 8, 8 * 3 + 3]


def _summary(model, **kwargs):
    lines = []
    assert model.summary(print_fn=lines.append, **kwargs) is None  # Keras returns None
    return lines


def test_count_params_counts_every_weight_and_bias():
    model = _model()
    assert model.count_params() == sum(HAND_COUNTS) == sum(w.size for w in model.get_weights())
    assert isinstance(model.count_params(), int)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_summary_table_rows_and_totals(dtype):
    model = _model(dtype)
    lines = _summary(model)
    assert lines[0] == 'Model: "Sequential"'
    header = next(line for line in lines if "Layer (type)" in line)
    assert "Output Shape" in header and header.rstrip().endswith("Param #")
    rows = [line for line in lines if line.startswith(" layers.")]
    assert [row.split(" (")[0].strip() for row in rows] == [f"layers.{k}" for k in range(4)]
    assert "(Dense, relu)" in rows[0] and "(Maxout, 3 pieces)" in rows[1]
    assert "(Dense, leaky_relu)" in rows[2] and "(Dense)" in rows[3]
    widths = [int(re.search(r"\(None, (\d+)\)", row).group(1)) for row in rows]
    assert widths == [16, 8, 8, 3]
    counts = [int(row.split()[-1].replace(",", "")) for row in rows]
    assert counts == HAND_COUNTS
    total = sum(HAND_COUNTS)
    size = readable_size(total * np.dtype(dtype).itemsize)
    assert f"Total params: {total:,} ({size})" in lines
    assert f"Trainable params: {total:,} ({size})" in lines
    assert "Non-trainable params: 0 (0.00 B)" in lines
    # Adam keeps two slots per parameter.
    assert f"Optimizer params: {2 * total:,} ({readable_size(2 * total * np.dtype(dtype).itemsize)})" in lines
    assert set(lines[-1]) == {"_"} and all(len(line) <= len(lines[-1]) for line in lines)


def test_summary_prints_by_default_and_widens_for_long_rows(capsys):
    model = _model(optimizer=SGD())
    assert model.summary() is None
    printed = capsys.readouterr().out.splitlines()
    assert printed == _summary(model)
    # SGD keeps its velocity buffer whatever the momentum: one slot.
    assert any(line.startswith(f"Optimizer params: {model.count_params():,} ") for line in printed)
    wide = _summary(model, line_length=100)
    assert len(wide[1]) == 100
    narrow = _summary(model, line_length=20)  # too narrow for the rows: widened to fit them
    assert all(len(line) <= len(narrow[1]) for line in narrow)
    for row in (r for r in narrow if r.startswith(" layers.")):
        assert "(None, " in row  # no column cut off
    with pytest.raises(ValueError, match="line_length"):
        model.summary(line_length=3)


def test_readable_size_uses_powers_of_1024():
    assert readable_size(0) == "0.00 B"
    assert readable_size(1023) == "1023.00 B"
    assert readable_size(1536) == "1.50 KB"
    assert readable_size(3 << 20) == "3.00 MB"


# ----------------------------------------------------------------------------- fastmlp info
def _info(path, capsys):
    assert main(["info", str(path)]) == 0
    return capsys.readouterr().out.splitlines()


def test_info_on_a_saved_model(tmp_path, capsys):
    model = _model()
    model.optimizer.step_count = 42  # as after 42 steps
    path = tmp_path / "m.fmlp"
    model.save(path)
    out = _info(path, capsys)
    assert out[0] == f"file: {path}"
    assert out[1] == f"format: fastmlp version {fio.FORMAT_VERSION}, written by fastmlp {fastmlp.__version__}"
    assert "dtype: float32" in out and "loss: softmax_cross_entropy" in out
    assert ("optimizer: Adam(betas=(0.9, 0.999), eps=1e-08, lr=0.002, weight_decay=0.0), "
            "step count 42") in out
    assert "training: none recorded (a saved model, not a fit checkpoint)" in out
    assert "seed: 7" in out
    assert out[out.index("") + 1:] == _summary(model)


def test_info_on_a_checkpoint(tmp_path, capsys):
    model = _model(np.float64, SGD(lr=0.1, momentum=0.9))
    path = tmp_path / "ck.fmlp"
    # A checkpoint as fit writes it after epoch 3 of 10 (written directly: nothing trains).
    fio.save_checkpoint(model, path, np.arange(50, dtype=np.int64)[::-1].copy(), 3, 10, 8, True)
    out = _info(path, capsys)
    assert "dtype: float64" in out
    assert ("training: checkpoint after epoch 3 of 10 (batch size 8, shuffle on, 50 rows)") in out
    assert any(line.startswith("optimizer: SGD(") and "momentum=0.9" in line for line in out)


def test_info_on_a_safetensors_file(tmp_path, capsys):
    model = _model()
    model.optimizer.step_count = 5
    path = tmp_path / "weights.bin"  # the name says nothing: the bytes do
    model.export(path, format="safetensors")
    out = _info(path, capsys)
    assert out[1] == f"format: safetensors, fastmlp metadata version 1, written by fastmlp {fastmlp.__version__}"
    assert "dtype: float32" in out and "loss: softmax_cross_entropy" in out
    assert any(line.startswith("optimizer: Adam(") and "step count 5 when exported" in line
               for line in out)
    assert "training: not recorded (a safetensors file holds weights only)" in out
    assert out[out.index("") + 1:] == _summary(model)


def test_info_refuses_bad_files_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.fmlp"
    bad.write_bytes(b"not a model at all, just text")
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fastmlp: error: ") and "not a fastmlp model file" in err
    assert err.count("\n") == 1
    assert main(["info", str(tmp_path / "missing")]) == 1
    assert "No such file" in capsys.readouterr().err


# ----------------------------------------------------------------------------- fastmlp export
def test_export_command_writes_a_safetensors_file(tmp_path, capsys):
    model = _model()
    native, out = tmp_path / "m.fmlp", tmp_path / "m.safetensors"
    model.save(native)
    assert main(["export", str(native), "--format", "safetensors", "--out", str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    back = fastmlp.load(out)
    assert all(np.array_equal(a, b) for a, b in zip(back.get_weights(), model.get_weights()))
    with pytest.raises(SystemExit):
        main(["export", str(native), "--format", "h5", "--out", str(out)])
    assert "invalid choice: 'h5'" in capsys.readouterr().err
    assert main(["export", str(native), "--format", "safetensors",
                 "--out", str(tmp_path / "no-such-dir" / "m.safetensors")]) == 1
    assert "does not exist" in capsys.readouterr().err
