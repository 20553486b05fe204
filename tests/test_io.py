"""model.save / fastmlp.load: exact round trips, atomic writes, and every kind of bad file
refused with a FormatError that names the problem (never code execution, never a crash,
never an allocation the file's real size does not justify)."""

import hashlib
import json
import os
import pickle
import stat
import tracemalloc

import numpy as np
import pytest

import fastmlp
import fastmlp.io as fio
from fastmlp import SGD, Adam, AdamW, Dense, FormatError, Maxout, Sequential
from conftest import LOSS_OUTPUTS, random_targets as _targets

DTYPES = [np.float32, np.float64]

OPTIMIZERS = [
    lambda: SGD(lr=0.05),
    lambda: SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda: Adam(lr=0.01, betas=(0.8, 0.99), eps=1e-7, weight_decay=1e-4),
    lambda: AdamW(lr=0.01),
]



def _model(loss="softmax_cross_entropy", dtype=np.float32, optimizer=None, seed=0, n_out=3):
    # Every activation kind and both layer kinds, small enough to compile and run fast.
    layers = [Dense(4, 6, activation="leaky_relu", negative_slope=0.2),
              Dense(6, 6, activation="elu", alpha=0.7),
              Maxout(6, 5, pieces=3),
              Dense(5, 5, activation="sigmoid"),
              Dense(5, 5, activation="relu"),
              Dense(5, 4, activation="tanh"),
              Dense(4, n_out)]
    return Sequential(layers, loss=loss, optimizer=optimizer or SGD(lr=0.05, momentum=0.9),
                      seed=seed, dtype=dtype)


def _state(model):
    """Everything training depends on, as comparable bytes and values."""
    return (model.params.tobytes(), model.optimizer.state.tobytes(), model.optimizer.step_count,
            model._rng.bit_generator.state, repr(model), model.seed, model.loss, model.dtype)


@pytest.fixture
def saved(tmp_path, rng):
    """(model, path) of a trained model saved to disk."""
    model = _model()
    model.fit(rng.normal(size=(20, 4)), rng.integers(0, 3, size=20), epochs=2, batch_size=6)
    path = tmp_path / "model.fmlp"
    model.save(path)
    return model, path


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make_opt", OPTIMIZERS)
@pytest.mark.parametrize("loss", list(LOSS_OUTPUTS))
def test_round_trip_is_exact_and_training_continues_identically(tmp_path, rng, loss, make_opt, dtype):
    n_out = LOSS_OUTPUTS[loss]
    X, y = rng.normal(size=(23, 4)), _targets(rng, loss, 23, n_out)
    model = _model(loss, dtype, make_opt(), n_out=n_out)
    model.fit(X, y, epochs=2, batch_size=5)
    path = tmp_path / "m.fmlp"
    model.save(str(path))
    loaded = fastmlp.load(path)
    # Bitwise: the file stores every array's bytes and the RNG state exactly.
    assert _state(loaded) == _state(model)
    assert type(loaded.optimizer) is type(model.optimizer)
    for name in model.optimizer.hyperparameter_names:
        # Hyperparameters are stored as JSON numbers, which round-trip floats exactly.
        assert getattr(loaded.optimizer, name) == getattr(model.optimizer, name)
    # Bitwise: the same weights bit for bit, the same kernels and shapes.
    np.testing.assert_array_equal(loaded.decision_function(X), model.decision_function(X))
    # The optimizer state, step count (Adam's bias correction) and shuffle RNG came back:
    # both go on to the same bits.
    model.fit(X, y, epochs=2, batch_size=5)
    loaded.fit(X, y, epochs=2, batch_size=5)
    # Bitwise, as above.
    assert _state(loaded) == _state(model)


def test_unseeded_model_round_trips(tmp_path):
    model = Sequential([Dense(3, 2)], seed=None)
    model.save(tmp_path / "m.fmlp")
    loaded = fastmlp.load(tmp_path / "m.fmlp")
    # Bitwise, as above.
    assert loaded.seed is None and _state(loaded) == _state(model)


def test_file_layout_is_as_documented(saved):
    model, path = saved
    data = path.read_bytes()
    assert data[:8] == b"\x89FML\r\n\x1a\n"
    header_len = int.from_bytes(data[8:16], "little")
    assert header_len % 8 == 0
    header = json.loads(data[16:16 + header_len])
    assert header["format_version"] == 2 and header["training"] is None
    assert header["rng"] == model._rng.bit_generator.state
    assert hashlib.sha256(data[:-32]).digest() == data[-32:]
    begin, end = header["tensors"]["params"]["offsets"]
    payload = data[16 + header_len:-32]
    # The payload holds the float32 parameters' bytes as they are.
    np.testing.assert_array_equal(np.frombuffer(payload[begin:end], "<f4"), model.params)
    assert len(payload) == model.params.nbytes + model.optimizer.state.nbytes


# ----------------------------------------------------------------------------- writing
def test_save_replaces_atomically_and_leaves_no_temporary_file(saved, rng):
    model, path = saved
    model.fit(rng.normal(size=(8, 4)), rng.integers(0, 3, size=8), epochs=1)
    model.save(path)
    # Bitwise, as above.
    assert _state(fastmlp.load(path)) == _state(model)
    assert os.listdir(path.parent) == ["model.fmlp"]


def test_saved_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        Sequential([Dense(2, 2)], seed=0).save(tmp_path / "m.fmlp")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m.fmlp").st_mode) == 0o644


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(saved, monkeypatch):
    model, path = saved
    before = path.read_bytes()

    def broken(f, chunks):
        f.write(chunks[0])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fio, "_write_all", broken)
    model.params[:] = 0.5
    with pytest.raises(OSError, match="No space"):
        model.save(path)
    # Refused: the file's bytes untouched.
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == ["model.fmlp"]


def test_save_refuses_what_it_cannot_write(tmp_path):
    class MyDense(Dense):
        pass

    class MySGD(SGD):
        pass

    with pytest.raises(TypeError, match="only Dense and Maxout"):
        Sequential([MyDense(2, 2)], seed=0).save(tmp_path / "a")
    with pytest.raises(TypeError, match="cannot save optimizer"):
        Sequential([Dense(2, 2)], optimizer=MySGD(), seed=0).save(tmp_path / "b")
    model = Sequential([Dense(2, 2)], seed=0)
    model.layers[0].W[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.save(tmp_path / "c")
    for bad in (3, b"bytes", None):
        with pytest.raises(TypeError, match="str or os.PathLike"):
            model.save(bad)
    with pytest.raises(ValueError, match="empty"):
        model.save("")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- bad files
def _split(data):
    header_len = int.from_bytes(data[8:16], "little")
    return json.loads(data[16:16 + header_len]), data[16 + header_len:-32]


def _assemble(header, payload, text=None):
    """A file with a correct checksum around any header: tests the checks behind it."""
    if text is None:
        text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    body = fio.MAGIC + len(text).to_bytes(8, "little") + text + payload
    return body + hashlib.sha256(body).digest()


def _crafted(edit):
    def make(data):
        header, payload = _split(data)
        payload = edit(header, payload) or payload
        return _assemble(header, payload)
    return make


def _layer(header, k):
    return header["model"]["layers"][k]


def _set(path, value):
    def edit(header, payload):
        obj = header
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
    return edit


def _delete(path):
    def edit(header, payload):
        obj = header
        for key in path[:-1]:
            obj = obj[key]
        del obj[path[-1]]
    return edit


def _nan_params(header, payload):
    arr = bytearray(payload)
    arr[0:4] = np.array([np.nan], "<f4").tobytes()
    return bytes(arr)


def _reorder_tensors(header, payload):
    # Both tensors claim the same bytes.
    header["tensors"]["optimizer_state"]["offsets"] = header["tensors"]["params"]["offsets"]


def _deep_json(data):
    return _assemble(None, _split(data)[1], text=b"[" * 100000 + b"]" * 100000)


def _raw_header(text):
    return lambda data: _assemble(None, _split(data)[1], text=text)


# (id, how to make the bad file from a good one, what the error must say)
BAD_FILES = [
    ("empty", lambda d: b"", "empty"),
    ("magic-only", lambda d: d[:8], "truncated"),
    ("text", lambda d: b"W1 = [[0.1, 0.2]]\n" * 10, "magic"),
    ("npy", lambda d: b"\x93NUMPY\x01\x00" + b" " * 100, r"\.npy"),
    ("header-len-huge", lambda d: d[:8] + (2**63).to_bytes(8, "little") + d[16:], "exceeds"),
    ("header-len-past-end", lambda d: d[:8] + (len(d) - 40).to_bytes(8, "little") + d[16:],
     "truncated or corrupted"),
    ("header-len-short", lambda d: d[:8] + (100).to_bytes(8, "little") + d[16:], "not valid JSON"),
    ("trailing-bytes", lambda d: d + b"\0" * 8, "trailing bytes"),
    ("version-3", _crafted(_set(["format_version"], 3)), "unsupported format version 3"),
    ("version-0", _crafted(_set(["format_version"], 0)), "unsupported format version 0"),
    ("version-string", _crafted(_set(["format_version"], "1")), "unsupported format version '1'"),
    ("version-bool", _crafted(_set(["format_version"], True)), "unsupported format version True"),
    ("version-missing", _crafted(_delete(["format_version"])), "unsupported format version None"),
    ("not-utf8", _raw_header(b"\xff\xfe{}"), "not valid JSON"),
    ("header-list", _raw_header(b"[1, 2]"), "not a JSON object"),
    ("deep-nesting", _deep_json, "not valid JSON"),
    ("nan-literal", _raw_header(b'{"format_version": 1, "x": NaN}'), "not valid JSON"),
    ("inf-number", _raw_header(b'{"format_version": 1, "x": 1e999}'), "not valid JSON"),
    ("huge-int", _raw_header(b'{"format_version": 1, "x": ' + b"9" * 5000 + b"}"), "not valid JSON"),
    ("duplicate-key", _raw_header(b'{"format_version": 1, "format_version": 1}'), "duplicate key"),
    ("unknown-field", _crafted(_set(["eval"], "__import__('os')")), "unknown field"),
    ("missing-model", _crafted(_delete(["model"])), "lacks model"),
    ("wrong-format-name", _crafted(_set(["format"], "pickle")), "not 'fastmlp'"),
    ("unknown-checksum", _crafted(_set(["checksum"], "crc32")), "unknown checksum"),
    ("no-tensors", _crafted(_set(["tensors"], {})), "tensor table"),
    ("tensor-object-dtype", _crafted(_set(["tensors", "params", "dtype"], "object")), "never Python objects"),
    ("tensor-pickle-dtype", _crafted(_set(["tensors", "params", "dtype"], "|O")), "never Python objects"),
    ("tensor-huge-shape", _crafted(_set(["tensors", "params", "shape"], [10**12])), "shape must be an integer in"),
    ("tensor-3d", _crafted(_set(["tensors", "params", "shape"], [1, 1, 1])), "list of 1 or 2"),
    ("tensor-negative-shape", _crafted(_set(["tensors", "params", "shape"], [-5])), "shape must be"),
    ("tensor-negative-offset", _crafted(_set(["tensors", "params", "offsets"], [-8, 100])), "negative"),
    ("tensor-reversed", _crafted(_set(["tensors", "params", "offsets"], [100, 8])), "reversed"),
    ("tensor-past-end", _crafted(_set(["tensors", "params", "offsets"], [0, 10**15])), "past the payload"),
    ("tensor-float-offsets", _crafted(_set(["tensors", "params", "offsets"], [0.0, 8.0])), "integers"),
    ("tensors-overlap", _crafted(_reorder_tensors), "overlaps"),
    ("tensor-extra", _crafted(_set(["tensors", "evil"], {"dtype": "int64", "shape": [0],
                                                         "offsets": [0, 0]})), "expected"),
    ("params-wrong-dtype", _crafted(_set(["tensors", "params", "dtype"], "int64")), "of int64 needs"),
    ("params-float64-half", _crafted(lambda h, p: h["tensors"]["params"].update(
        dtype="float64", shape=[h["tensors"]["params"]["shape"][0] // 2])), "architecture needs float32"),
    ("layers-absurd-count", _crafted(_set(["model", "layers"], [{"kind": "dense"}] * 100000)), "1 to 4096"),
    ("layers-empty", _crafted(_set(["model", "layers"], [])), "1 to 4096"),
    ("layer-unknown-kind", _crafted(lambda h, p: _layer(h, 0).update(kind="conv2d")), "kind must be"),
    ("layer-unknown-activation", _crafted(lambda h, p: _layer(h, 3).update(activation="os.system")),
     "activation must be one of"),
    ("layer-bool-size", _crafted(lambda h, p: _layer(h, 0).update(n_in=True)), "n_in must be an integer"),
    ("layer-string-size", _crafted(lambda h, p: _layer(h, 0).update(n_out="6")), "n_out must be"),
    ("layer-huge-size", _crafted(lambda h, p: _layer(h, 0).update(n_in=2**50)), "n_in must be"),
    ("layer-zero-size", _crafted(lambda h, p: _layer(h, 0).update(n_in=0)), "n_in must be"),
    ("layer-shape-mismatch", _crafted(lambda h, p: _layer(h, 0).update(n_in=5)), "architecture needs"),
    ("layers-do-not-chain", _crafted(lambda h, p: _layer(h, 1).update(n_in=7)), "takes 7 inputs"),
    ("maxout-one-piece", _crafted(lambda h, p: _layer(h, 2).update(pieces=1)), "pieces must be"),
    ("activation-param-unknown", _crafted(lambda h, p: _layer(h, 0).update(
        activation_params={"slope": 0.1})), "lacks negative_slope"),
    ("activation-param-extra", _crafted(lambda h, p: _layer(h, 3).update(
        activation_params={"alpha": 0.1})), "unknown field"),
    ("activation-param-string", _crafted(lambda h, p: _layer(h, 1).update(
        activation_params={"alpha": "1"})), "must be a number"),
    ("activation-param-invalid", _crafted(lambda h, p: _layer(h, 1).update(
        activation_params={"alpha": -1.0})), "invalid model: alpha"),
    ("loss-unknown", _crafted(_set(["model", "loss"], "hinge2")), "loss must be"),
    ("dtype-float16", _crafted(_set(["model", "dtype"], "float16")), "dtype must be"),
    ("seed-negative", _crafted(_set(["model", "seed"], -1)), "seed must be"),
    ("optimizer-unknown", _crafted(_set(["optimizer", "class"], "subprocess.Popen")), "class must be"),
    ("optimizer-other-class", _crafted(_set(["optimizer", "class"], "Adam")), "unknown field|lacks"),
    ("optimizer-bad-lr", _crafted(_set(["optimizer", "hyperparameters", "lr"], -1.0)), "invalid model: lr"),
    ("optimizer-lr-object", _crafted(_set(["optimizer", "hyperparameters", "lr"], {"a": 1})),
     "must be a number"),
    ("step-count-negative", _crafted(_set(["optimizer", "step_count"], -3)), "step_count"),
    ("rng-other-generator", _crafted(_set(["rng", "bit_generator"], "MT19937")), "bit_generator"),
    ("rng-negative-state", _crafted(_set(["rng", "state", "state"], -1)), r"state\.state"),
    ("rng-huge-inc", _crafted(_set(["rng", "state", "inc"], 2**200)), r"state\.inc"),
    ("params-nan", _crafted(_nan_params), "contains NaN or Inf"),
    ("training-garbage", _crafted(_set(["training"], {"epochs_completed": 1})), "training lacks"),
    ("training-without-order", _crafted(_set(["training"], {
        "epochs_completed": 1, "epochs": 2, "batch_size": 1, "shuffle": True, "n_samples": 4})), "expected"),
]


def test_bad_file_table_is_big():
    assert len(BAD_FILES) >= 60


@pytest.mark.parametrize("make, message", [case[1:] for case in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_file_is_refused_with_a_named_problem(saved, make, message):
    _, path = saved
    path.write_bytes(make(path.read_bytes()))
    with pytest.raises(FormatError, match=message) as info:
        fastmlp.load(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_every_truncation_is_refused(saved):
    _, path = saved
    data = path.read_bytes()
    for n in range(len(data)):
        path.write_bytes(data[:n])
        with pytest.raises(FormatError, match="truncated|empty|corrupted"):
            fastmlp.load(path)


def test_every_byte_with_a_flipped_bit_is_refused(saved):
    _, path = saved
    data = path.read_bytes()
    bits = np.random.default_rng(5).integers(0, 8, size=len(data))
    for i, bit in enumerate(bits):
        damaged = bytearray(data)
        damaged[i] ^= 1 << int(bit)
        path.write_bytes(damaged)
        with pytest.raises(FormatError):
            fastmlp.load(path)


class _Payload:
    """Unpickling this would create the file ``_Payload.target``: proof that code ran."""

    target = None

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickled_objects_never_run(tmp_path):
    _Payload.target = str(tmp_path / "pwned")
    evil = pickle.dumps(_Payload(), protocol=4)
    path = tmp_path / "model.fmlp"
    path.write_bytes(evil)
    with pytest.raises(FormatError, match="pickle"):
        fastmlp.load(path)
    # A pickle inside a .npz (an object array), under any name.
    np.savez(tmp_path / "m.npz", params=np.array([_Payload()], dtype=object))
    with pytest.raises(FormatError, match="zip archive"):
        fastmlp.load(tmp_path / "m.npz")
    # A pickle as a fastmlp tensor: the dtype is refused, the bytes never interpreted.
    good = tmp_path / "good.fmlp"
    Sequential([Dense(2, 2)], seed=0).save(good)
    header, payload = _split(good.read_bytes())
    header["tensors"]["params"].update(dtype="object", shape=[1], offsets=[0, len(evil)])
    header["tensors"]["optimizer_state"]["offsets"] = [len(evil), len(evil) + 24]
    path.write_bytes(_assemble(header, evil + payload[-24:]))
    with pytest.raises(FormatError, match="never Python objects"):
        fastmlp.load(path)
    assert not os.path.exists(_Payload.target)


@pytest.mark.parametrize("claim_tensor", [True, False])
def test_crafted_sizes_allocate_nothing_big(saved, claim_tensor):
    _, path = saved
    header, payload = _split(path.read_bytes())
    huge = 10**11  # 400 GB of float32 if anything believed it
    header["model"]["layers"] = [{"kind": "dense", "n_in": huge, "n_out": 1, "activation": "identity",
                                  "activation_params": {}}]
    if claim_tensor:
        header["tensors"]["params"].update(shape=[huge + 1], offsets=[0, 4 * (huge + 1)])
    path.write_bytes(_assemble(header, payload))
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="shape must be an integer in" if claim_tensor
                           else "the architecture needs float32 \\(100000000001,\\)"):
            fastmlp.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastmlp.load(tmp_path / "missing.fmlp")
    with pytest.raises(OSError):
        fastmlp.load(tmp_path)
    with pytest.raises(TypeError, match="str or os.PathLike"):
        fastmlp.load(123)


def test_format_error_is_public():
    assert issubclass(fastmlp.FormatError, ValueError)
    assert {"load", "FormatError"} <= set(fastmlp.__all__)


# ----------------------------------------------------------------------------- callback state in checkpoints
@pytest.fixture
def checkpoint_with_callbacks(tmp_path, rng):
    from fastmlp.callbacks import EarlyStopping, ReduceLROnPlateau

    X, y = rng.normal(size=(30, 4)), rng.integers(0, 3, size=30)
    path = tmp_path / "ck.fastmlp"
    _model().fit(X, y, epochs=2, batch_size=8, validation_data=(X[:6], y[:6]), checkpoint=path,
                 callbacks=[ReduceLROnPlateau(patience=1), EarlyStopping(patience=5)])
    return path


def _best_params_nan(header, payload):
    begin = header["tensors"]["callbacks.1.best_params"]["offsets"][0]
    arr = bytearray(payload)
    arr[begin:begin + 4] = np.array([np.inf], "<f4").tobytes()
    return bytes(arr)


BAD_CALLBACK_STATES = [
    ("not-a-list", _set(["training", "callbacks"], {"a": 1}), "must be a list"),
    ("too-many", _set(["training", "callbacks"], [{}] * 9), "at most 8"),
    ("class-not-text", lambda h, p: h["training"]["callbacks"][0].update({"class": 7}), "class must be"),
    ("state-text", lambda h, p: h["training"]["callbacks"][0]["state"].update(lr="0.1"), "must be a number"),
    ("state-list", lambda h, p: h["training"]["callbacks"][0].update(state=[1]), "state must be null or"),
    ("extra-key", lambda h, p: h["training"]["callbacks"][0].update(code="x"), "unknown field"),
    ("too-many-tensors", lambda h, p: h["training"]["callbacks"][1].update(tensors=list("abcde")),
     "at most 4"),
    ("undeclared-tensor", lambda h, p: h["training"]["callbacks"][1].update(tensors=[]), "expected"),
    ("tensor-inf", _best_params_nan, "callbacks.1.best_params contains NaN or Inf"),
]


@pytest.mark.parametrize("edit,message", [c[1:] for c in BAD_CALLBACK_STATES],
                         ids=[c[0] for c in BAD_CALLBACK_STATES])
def test_bad_callback_state_is_refused(checkpoint_with_callbacks, edit, message):
    path = checkpoint_with_callbacks
    assert fio.read(path).header["training"]["callbacks"][1]["tensors"] == ["best_params"]
    path.write_bytes(_crafted(edit)(path.read_bytes()))
    with pytest.raises(fio.FormatError, match=message):
        fio.read(path)


@pytest.mark.parametrize("fields,message", [
    ({"lr": -0.5, "best": 1.0, "bad_epochs": 0, "cooldown_left": 0}, "not valid"),
    ({"lr": 0.1, "best": 1.0, "bad_epochs": -1, "cooldown_left": 0}, "bad_epochs"),
    ({"lr": 0.1, "best": 1.0, "bad_epochs": True, "cooldown_left": 0}, "bad_epochs"),
    ({"lr": 0.1, "best": 1.0, "bad_epochs": 0}, "fields"),
])
def test_a_callback_refuses_a_state_it_cannot_take(fields, message):
    from fastmlp.callbacks import ReduceLROnPlateau

    with pytest.raises(ValueError, match=message):
        ReduceLROnPlateau().check_state(fields, {})
