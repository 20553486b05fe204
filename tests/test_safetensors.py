"""model.export(path, format="safetensors") and fastmlp.load reading it back.

fastmlp writes and reads the format itself; the ``safetensors`` package (the test extra)
is the independent reference: it reads fastmlp's files and writes files fastmlp reads.  No
test here trains or predicts, so no kernel is compiled: equality of the weights, bit for
bit, is what a round trip promises.
"""

import json
import os
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastmlp
import fastmlp.safetensors_io as sio
from fastmlp import SGD, Adam, Dense, FormatError, Maxout, Sequential

# The test extra installs it (a missing package fails here rather than skips).
import safetensors.numpy as safetensors_numpy  # noqa: E402
from safetensors import safe_open  # noqa: E402

DTYPES = [np.float32, np.float64]


def _model(dtype=np.float32, loss="softmax_cross_entropy", optimizer=None, seed=0):
    layers = [Dense(4, 6, activation="leaky_relu", negative_slope=0.2),
              Maxout(6, 5, pieces=3),
              Dense(5, 5, activation="elu", alpha=0.7),
              Dense(5, 3)]
    return Sequential(layers, loss=loss, optimizer=optimizer or Adam(lr=0.01, betas=(0.8, 0.99)),
                      seed=seed, dtype=dtype)


def _same_weights(a, b):
    return all(x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
               for x, y in zip(a.get_weights(), b.get_weights()))


@pytest.fixture
def exported(tmp_path):
    model = _model()
    path = tmp_path / "model.safetensors"
    model.export(path, format="safetensors")
    return model, path


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "binary_cross_entropy", "mse"])
def test_round_trip_keeps_weights_architecture_loss_dtype_and_optimizer(tmp_path, dtype, loss):
    model = _model(dtype, loss, SGD(lr=0.03, momentum=0.5, nesterov=True))
    path = tmp_path / "m.safetensors"
    model.export(path, format="safetensors")
    back = fastmlp.load(path)
    assert _same_weights(model, back)  # bitwise: raw little-endian copies both ways
    assert repr(back) == repr(model)
    assert back.seed == model.seed and back.dtype == model.dtype and back.loss == loss
    # A weights file: the optimizer starts afresh, with the same class and hyperparameters.
    assert back.optimizer.step_count == 0 and not back.optimizer.state.any()


def test_the_safetensors_package_reads_fastmlps_file(exported):
    model, path = exported
    tensors = safetensors_numpy.load_file(str(path))
    expected = {}
    for k, (W, b) in enumerate(zip(model.get_weights()[::2], model.get_weights()[1::2])):
        expected[f"layers.{k}.weight"], expected[f"layers.{k}.bias"] = W, b
    assert sorted(tensors) == sorted(expected)
    for name, arr in expected.items():
        assert tensors[name].dtype == arr.dtype and np.array_equal(tensors[name], arr), name
    assert tensors["layers.0.weight"].shape == (4, 6)  # (n_in, n_out): x @ W + b
    assert tensors["layers.1.weight"].shape == (6, 15)  # maxout: (n_in, pieces * n_out)
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
    assert meta["loss"] == "softmax_cross_entropy" and meta["dtype"] == "float32"
    layers = json.loads(meta["architecture"])
    assert [entry["kind"] for entry in layers] == ["dense", "maxout", "dense", "dense"]
    assert layers[0]["activation_params"] == {"negative_slope": 0.2}
    optimizer = json.loads(meta["optimizer"])
    assert optimizer["class"] == "Adam" and optimizer["hyperparameters"]["betas"] == [0.8, 0.99]
    assert json.loads(meta["seed"]) == 0 and meta["format_version"] == "1"


@pytest.mark.parametrize("dtype", DTYPES)
def test_fastmlp_reads_a_file_the_safetensors_package_wrote(tmp_path, dtype):
    model = _model(dtype)
    rng = np.random.default_rng(5)
    weights = [rng.normal(size=w.shape).astype(dtype) for w in model.get_weights()]
    tensors = {}
    for k in range(len(model.layers)):
        tensors[f"layers.{k}.weight"], tensors[f"layers.{k}.bias"] = weights[2 * k], weights[2 * k + 1]
    path = tmp_path / "from-the-package.safetensors"
    safetensors_numpy.save_file(tensors, str(path), metadata=sio.metadata(model))
    back = fastmlp.load(path)
    for got, want in zip(back.get_weights(), weights):
        assert np.array_equal(got, want)
    assert repr(back) == repr(model)
    # Only the required metadata: the optimizer is SGD's defaults, no seed.
    minimal = {key: sio.metadata(model)[key] for key in ("architecture", "loss", "dtype")}
    safetensors_numpy.save_file(tensors, str(path), metadata=minimal)
    back = fastmlp.load(path)
    assert type(back.optimizer) is SGD and back.seed is None
    assert all(np.array_equal(g, w) for g, w in zip(back.get_weights(), weights))


def test_format_is_told_from_the_bytes_not_the_name(tmp_path):
    model = _model()
    native, weights = tmp_path / "really-native.safetensors", tmp_path / "really-safetensors.fmlp"
    model.save(native)
    model.export(weights, format="safetensors")
    assert _same_weights(fastmlp.load(native), model)
    assert _same_weights(fastmlp.load(weights), model)
    assert fastmlp.load(native).optimizer.state.shape == model.optimizer.state.shape


# ----------------------------------------------------------------------------- export API
def test_unknown_format_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown export format 'h5'; valid formats: 'onnx', 'safetensors'"):
        _model().export(tmp_path / "m", format="h5")
    with pytest.raises(ValueError, match="unknown export format"):
        _model().export(tmp_path / "m", format=None)
    assert os.listdir(tmp_path) == []


def test_export_refuses_nan_weights_and_unknown_options(tmp_path):
    model = _model()
    with pytest.raises(TypeError, match="opset"):
        model.export(tmp_path / "m", format="safetensors", opset=17)
    model.layers[2].W[0, 0] = np.nan
    with pytest.raises(ValueError, match="layer 2's weight contains NaN"):
        model.export(tmp_path / "m", format="safetensors")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- bad files
def _write_raw(path, header, buffer=b"", pad=True):
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    if pad:
        text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + buffer)
    return path


def _valid_parts(model=None):
    """The header (dict) and buffer of a valid file of ``model``."""
    model = model or Sequential([Dense(2, 3), Dense(3, 2)], seed=0)
    chunks = sio.encode(model)
    header = json.loads(bytes(chunks[1]))
    return header, b"".join(bytes(c) for c in chunks[2:])


def _shifted(header, name, delta_begin, delta_end):
    entry = header[name]
    entry["data_offsets"] = [entry["data_offsets"][0] + delta_begin,
                             entry["data_offsets"][1] + delta_end]
    return header


BAD_FILES = {
    "header length over the limit": (
        lambda p: p.write_bytes((100_000_001).to_bytes(8, "little") + b"{}"),
        "exceeds the format's 100000000-byte limit"),
    "header longer than the file": (
        lambda p: p.write_bytes((1000).to_bytes(8, "little") + b'{"a": 1}'),
        "header claims 1000 bytes but only 8 follow"),
    "shorter than the length field": (lambda p: p.write_bytes(b"\x05\x00\x00"),
                                      "not a fastmlp model file"),
    "not JSON": (lambda p: _write_raw(p, b"{nope"), "not valid JSON"),
    "not UTF-8": (lambda p: _write_raw(p, b'{"\xff": 1}'), "not UTF-8"),
    "duplicate key": (lambda p: _write_raw(p, b'{"a": {}, "a": {}}'), "duplicate key 'a'"),
    "NaN in the header": (lambda p: _write_raw(p, b'{"a": NaN}'), "NaN is not allowed"),
    "metadata not strings": (
        lambda p: _write_raw(p, {"__metadata__": {"loss": 3}}), "__metadata__ must be"),
    "bfloat16 tensor": (
        lambda p: _write_raw(p, {"w": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}},
                             b"\0\0"),
        "dtype 'BF16'; fastmlp reads F32, F64"),
    "invented dtype": (
        lambda p: _write_raw(p, {"w": {"dtype": "object", "shape": [1], "data_offsets": [0, 8]}},
                             b"\0" * 8),
        "'object', not a safetensors dtype"),
    "size does not match the shape": (
        lambda p: _write_raw(p, {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
                             b"\0" * 8),
        "spans 8 bytes but shape \\[3\\] of F32 needs 12"),
    "tensor past the end": (
        lambda p: _write_raw(p, {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                             b"\0" * 8),
        "ends at byte 16, past the buffer's 8 bytes"),
    "reversed offsets": (
        lambda p: _write_raw(p, {"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}},
                             b"\0" * 8),
        "negative or reversed"),
    "huge claimed tensor": (
        lambda p: _write_raw(p, {"w": {"dtype": "F64", "shape": [1 << 40],
                                       "data_offsets": [0, 8 << 40]}}, b"\0" * 8),
        "shape must be an integer in"),
    "overlapping tensors": (
        lambda p: _write_raw(p, *(lambda h, b: (_shifted(h, "layers.0.bias", -4, -4), b))(
            *_valid_parts())),
        "overlaps the previous tensor"),
    "trailing bytes": (
        lambda p: _write_raw(p, *(lambda h, b: (h, b + b"\0" * 8))(*_valid_parts())),
        "cover 68 buffer bytes but the file holds 76"),
    "no fastmlp metadata (a plain weights file)": (
        lambda p: _write_raw(p, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                             b"\0" * 8),
        "no fastmlp model description: __metadata__ lacks architecture, loss, dtype"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_refused_with_a_clear_error(tmp_path, case):
    make, message = BAD_FILES[case]
    path = tmp_path / "bad.safetensors"
    make(path)
    with pytest.raises(FormatError, match=message) as info:
        fastmlp.load(path)
    assert str(path) in str(info.value)


def test_a_gap_is_refused(tmp_path):
    header, buffer = _valid_parts()
    # Move the last tensor 4 bytes on, and add 4 bytes so that it still ends in the buffer.
    last = max(header, key=lambda k: header[k]["data_offsets"][0] if k != "__metadata__" else -1)
    _shifted(header, last, 4, 4)
    path = _write_raw(tmp_path / "gap.safetensors", header, buffer + b"\0" * 4)
    with pytest.raises(FormatError, match="leaves a gap at byte"):
        fastmlp.load(path)


def _edit_metadata(tmp_path, **changes):
    header, buffer = _valid_parts()
    header["__metadata__"].update(changes)
    return _write_raw(tmp_path / "m.safetensors", header, buffer)


@pytest.mark.parametrize("changes, message", [
    ({"loss": "hinge"}, "metadata loss must be one of"),
    ({"dtype": "float16"}, "metadata dtype must be one of 'float32', 'float64'"),
    ({"architecture": "[]"}, "model.layers must be a list of 1 to"),
    ({"architecture": '[{"kind": "dense", "n_in": 2, "n_out": 3, "activation": "relu", '
                      '"activation_params": {}}]'}, "unexpected 'layers.1.bias', 'layers.1.weight'"),
    ({"architecture": json.dumps([{"kind": "dense", "n_in": a, "n_out": b, "activation": "identity",
                                   "activation_params": {}} for a, b in ((2, 3), (3, 2), (2, 2))])},
     "missing layers.2.bias, layers.2.weight"),
    ({"architecture": "not json"}, "metadata architecture is not valid JSON"),
    ({"optimizer": '{"class": "Pickle", "hyperparameters": {}}'}, "optimizer class must be one of"),
    ({"optimizer": '{"class": "SGD", "hyperparameters": {"lr": 0.1}}'}, "hyperparameters lacks"),
    ({"seed": "-1"}, "metadata seed must be an integer"),
    ({"format_version": "2"}, "unsupported fastmlp metadata format_version '2'"),
    ({"dtype": "float64"}, "tensor layers.0.weight is F32 \\(2, 3\\), but the architecture "
                           "needs F64 \\(2, 3\\)"),
])
def test_bad_metadata_is_refused(tmp_path, changes, message):
    with pytest.raises(FormatError, match=message):
        fastmlp.load(_edit_metadata(tmp_path, **changes))


def test_extra_tensors_and_nan_are_refused(tmp_path):
    model = Sequential([Dense(2, 3), Dense(3, 2)], seed=0)
    tensors = {f"layers.{k}.{s}": w for k in range(2)
               for s, w in zip(("weight", "bias"), model.get_weights()[2 * k:2 * k + 2])}
    path = str(tmp_path / "m.safetensors")
    safetensors_numpy.save_file(dict(tensors, extra=np.zeros(2, np.float32)), path,
                                metadata=sio.metadata(model))
    with pytest.raises(FormatError, match="unexpected 'extra'"):
        fastmlp.load(path)
    tensors["layers.1.bias"] = np.array([0.0, np.inf], dtype=np.float32)
    safetensors_numpy.save_file(tensors, path, metadata=sio.metadata(model))
    with pytest.raises(FormatError, match="tensor layers.1.bias contains NaN or Inf"):
        fastmlp.load(path)


def test_a_huge_claim_allocates_nothing(tmp_path):
    # The header claims a 2**40-element tensor in a file of a few hundred bytes: refused
    # from the header alone, with no allocation anywhere near that size.
    header, buffer = _valid_parts()
    header["layers.0.weight"]["shape"] = [1 << 20, 1 << 20]
    path = _write_raw(tmp_path / "huge.safetensors", header, buffer)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="shape must be an integer in"):
            fastmlp.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_files_load_or_raise_format_error_only(tmp_path, data):
    """Bytes flipped, inserted or cut anywhere: the file loads (a flipped weight bit is a
    valid file) or is refused with FormatError; never another exception."""
    model = Sequential([Dense(2, 3, activation="tanh"), Maxout(3, 2, pieces=2), Dense(2, 2)], seed=0)
    raw = bytearray(b"".join(bytes(c) for c in sio.encode(model)))
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "length"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del raw[data.draw(st.integers(9, len(raw) - 1)):]
    elif kind == "insert":
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        raw[:8] = data.draw(st.integers(0, (1 << 64) - 1)).to_bytes(8, "little")
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(bytes(raw))
    try:
        back = fastmlp.load(path)
    except FormatError:
        return
    assert all(np.isfinite(w).all() for w in back.get_weights())
