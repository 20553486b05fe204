"""Saving and loading models in a format that cannot run code: the ``.fmlp`` file.

One file holds everything a model needs to predict and to go on training exactly where it
stopped: the weights, the architecture, the loss, the dtype, the optimizer (class,
hyperparameters, state buffers, step count) and the shuffle RNG's state; a checkpoint
written by :meth:`Sequential.fit <fastmlp.Sequential.fit>` adds the epoch counter and the
current row order, and one written by :func:`~fastmlp.distributed.fit_distributed` adds
every rank's row count, row order and random streams.  Layout (all integers
little-endian; see ``docs/file-format.md``)::

    magic        8 bytes   b"\\x89FML\\r\\n\\x1a\\n"
    header_len   8 bytes   uint64, length of the header in bytes (a multiple of 8)
    header       JSON, UTF-8, padded with spaces (format version, model, tensor table)
    payload      raw little-endian tensors at the offsets the header gives
    checksum     32 bytes  SHA-256 of every byte before it

Nothing here unpickles, evaluates or imports anything named in a file.  :func:`read` (which
:func:`fastmlp.load` calls) checks the header's claims against the file's real size before it allocates, verifies the
checksum, and checks every field against the architecture; whatever it refuses raises
:class:`FormatError` naming the problem.  Writes go through :mod:`fastmlp.atomicfile`: a
temporary file in the same directory, flushed, fsynced and renamed over the target, so a
crash or a full disk during a save leaves the previous file intact.
"""

import hashlib
import json
import math
import os
import stat
from collections import namedtuple

import numpy as np

from fastmlp import atomicfile
from fastmlp.kernels.activations import ACTIVATIONS
from fastmlp import losses
from fastmlp.kernels.losses import LOSSES
from fastmlp.layers import Dense, Dropout, LayerNorm, Maxout
from fastmlp.optimizers import SGD, Adam, AdamW

MAGIC = b"\x89FML\r\n\x1a\n"  # PNG-style: a non-ASCII byte, and CR LF / ^Z / LF catch text-mode damage
FORMAT_VERSION = 2  # what this fastmlp writes
#: What it reads.  Version 2 added the ``dropout`` and ``layer_norm`` layer kinds, the
#: model's optional ``dropout_seed`` and ``loss_params``, and the optional
#: ``clip_norm``/``clip_value`` optimizer hyperparameters; a version-1 file has none of them
#: and loads as before (the loss's defaults, no clipping).
READABLE_VERSIONS = (1, 2)
PREFIX_BYTES = len(MAGIC) + 8
CHECKSUM_BYTES = 32  # SHA-256

#: Refused outright, before anything is allocated: far beyond any real model.
MAX_HEADER_BYTES = 16 << 20
MAX_LAYERS = 4096
MAX_CALLBACKS = 8

#: Optimizer classes a file may name (a name is looked up here, never imported).
OPTIMIZERS = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}

#: Tensor dtype names in the header -> the little-endian numpy dtype stored.
TENSOR_DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8"), "int64": np.dtype("<i8")}

_TOP_KEYS = {"format", "format_version", "fastmlp_version", "checksum", "model", "optimizer",
             "rng", "training", "tensors"}
_TRAINING_KEYS = {"epochs_completed", "epochs", "batch_size", "shuffle", "n_samples"}


def _shuffle_fields(shuffle):
    """The checkpoint's ``shuffle`` entries for fit's shuffle setting: True/False, or
    ``(chunk_rows, window)`` for a chunk shuffle (then ``shuffle_chunks`` is added)."""
    if isinstance(shuffle, tuple):
        return {"shuffle": True, "shuffle_chunks": [int(shuffle[0]), int(shuffle[1])]}
    return {"shuffle": bool(shuffle)}


def _describe_shuffle(fields):
    chunks = fields.get("shuffle_chunks")
    if chunks is None:
        return repr(fields["shuffle"])
    return f"ChunkShuffle(chunk_rows={chunks[0]}, window={chunks[1]})"
#: Per-rank entries of a checkpoint written by fit_distributed (``training.ranks``).
_RANK_KEYS = {"n_samples", "rng", "shuffle_rng"}


class FormatError(ValueError):
    """A file is not a valid fastmlp model file: wrong magic, another format version,
    truncated, corrupted (checksum), or a header whose claims do not hold up."""


#: What :func:`read` returns: the validated header and the tensors (read-only arrays).
Contents = namedtuple("Contents", ["header", "tensors"])


# ----------------------------------------------------------------------------- writing
def _write_all(f, chunks):
    # One function for every byte written, so a test can slow it down and kill the
    # process mid-save.
    for chunk in chunks:
        f.write(chunk)


def atomic_write(path, chunks):
    """Write ``chunks`` (bytes-like) to ``path`` so that ``path`` is always either the old
    file or the complete new one, and a failure leaves no temporary file and raises an
    ``OSError`` naming the path (:func:`fastmlp.atomicfile.atomic_write`)."""
    # _write_all is looked up at call time, so that a test's replacement takes effect.
    atomicfile.atomic_write(path, lambda f: _write_all(f, chunks))


def _layer_entry(layer):
    if type(layer) is Dense:
        _, param_name, _ = ACTIVATIONS[layer.activation]
        params = {param_name: float(layer.activation_param)} if param_name else {}
        return {"kind": "dense", "n_in": layer.n_in, "n_out": layer.n_out,
                "activation": layer.activation, "activation_params": params}
    if type(layer) is Maxout:
        return {"kind": "maxout", "n_in": layer.n_in, "n_out": layer.n_out, "pieces": layer.pieces}
    if type(layer) is Dropout:
        return {"kind": "dropout", "rate": layer.rate}
    if type(layer) is LayerNorm:
        return {"kind": "layer_norm", "n": layer.n_out, "eps": layer.eps}
    raise TypeError(f"cannot save layer {layer!r}: only Dense, Maxout, Dropout and LayerNorm "
                    "have a file format")


def _optimizer_entry(opt):
    name = type(opt).__name__
    if OPTIMIZERS.get(name) is not type(opt):
        raise TypeError(f"cannot save optimizer {opt!r}: the file format knows {', '.join(OPTIMIZERS)}")
    hyper = {key: _hyper_to_json(getattr(opt, key)) for key in opt.hyperparameter_names}
    # Written only when set: a file without them clips nothing (as version 1 files).
    hyper.update({key: _hyper_to_json(getattr(opt, key)) for key in opt.clip_names
                  if getattr(opt, key) is not None})
    return {"class": name, "hyperparameters": hyper, "step_count": int(opt.step_count)}


def _model_entry(model, dtype_name, seed):
    entry = {"loss": model.loss, "dtype": dtype_name,
             "seed": None if seed is None else int(seed),
             "layers": [_layer_entry(layer) for layer in model.layers]}
    loss_params = changed_loss_params(model.loss_object)
    if loss_params:  # optional (version 2): absent means the loss's defaults
        entry["loss_params"] = loss_params
    if any(type(layer) is Dropout for layer in model.layers):
        # The masks' key; without a seed it came from the OS and must be kept for a resume.
        entry["dropout_seed"] = int(model.dropout_seed)
    return entry


def changed_loss_params(loss):
    """The parameters of ``loss`` (a :mod:`fastmlp.losses` object) that differ from its
    class's defaults, as floats: what the files record, so that a model with a default loss
    writes the fields version 1 had and no others."""
    defaults = losses.get(loss.name).params()
    return {k: float(v) for k, v in loss.params().items() if v != defaults[k]}


def _loss_params(check, model):
    """The ``model.loss_params`` of a checked header, as the loss's full parameter dict."""
    params = model.get("loss_params", {})
    check.keys(params, "model loss_params", (), tuple(losses.get(model["loss"]).params()))
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            check.fail(f"model loss_params {name} must be a number, got {_short(value)}")
    try:
        return losses.get(model["loss"], params).params()
    except ValueError as exc:
        check.fail(f"model loss_params: {exc}")


def _hyper_to_json(value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (tuple, list)):  # Adam's betas
        return [_hyper_to_json(v) for v in value]
    return float(value)


def _hyper_from_json(value):
    return tuple(value) if isinstance(value, list) else value


def _encode(model, training=None, order=None, extra_tensors=()):
    """The file's chunks: prefix, header, tensors, checksum.

    ``extra_tensors``: more ``(name, array)`` pairs of the model's dtype (callback state).
    """
    from fastmlp import __version__

    dtype_name = model.dtype.name
    tensors = [("params", dtype_name, model.params),
               ("optimizer_state", dtype_name, model.optimizer.state)]
    if training is not None:
        tensors.append(("shuffle_order", "int64", order))
    tensors += [(name, dtype_name, arr) for name, arr in extra_tensors]
    table = {}
    data = []
    offset = 0
    for name, dtype_name_k, arr in tensors:
        if dtype_name_k != "int64" and not np.isfinite(arr).all():
            raise ValueError(f"cannot save: the model's {name} contain NaN or Inf")
        # Little-endian on disk whatever the machine; no copy on a little-endian one.
        arr = np.ascontiguousarray(arr, dtype=TENSOR_DTYPES[dtype_name_k])
        table[name] = {"dtype": dtype_name_k, "shape": list(arr.shape),
                       "offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        data.append(memoryview(arr).cast("B"))
    seed = model.seed
    header = {
        "format": "fastmlp",
        "format_version": FORMAT_VERSION,
        "fastmlp_version": __version__,
        "checksum": "sha256",
        "model": _model_entry(model, dtype_name, seed),
        "optimizer": _optimizer_entry(model.optimizer),
        "rng": model.rng.bit_generator.state,
        "training": training,
        "tensors": table,
    }
    text = json.dumps(header, allow_nan=False, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)  # so the payload starts 8-byte aligned
    digest = hashlib.sha256()
    chunks = [MAGIC + len(text).to_bytes(8, "little"), text] + data
    for chunk in chunks:
        digest.update(chunk)
    return chunks + [digest.digest()]


def check_path(path, what="path"):
    """``path`` as a str, after checking it names a file (``TypeError``/``ValueError``)."""
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise TypeError(f"{what} must be a str or os.PathLike file name, got {path!r}")
    path = os.fspath(path)
    if path == "":
        raise ValueError(f"{what} is empty")
    return path


def save(model, path):
    """Write ``model`` to ``path`` atomically (see :meth:`Sequential.save`)."""
    path = check_path(path)
    atomic_write(path, _encode(model))


def save_checkpoint(model, path, order, epochs_completed, epochs, batch_size, shuffle,
                    callbacks=()):
    """Write a checkpoint: the model plus the epoch counter and the current row ``order``
    (``fit`` shuffles it in place each epoch, so the next epoch's order depends on it), and
    what each of ``callbacks`` (those that keep state) returns from ``get_state()``
    (``training.callbacks``; its arrays become tensors ``callbacks.K.NAME``)."""
    training = {"epochs_completed": int(epochs_completed), "epochs": int(epochs),
                "batch_size": int(batch_size), **_shuffle_fields(shuffle),
                "n_samples": int(order.shape[0])}
    extra = _add_callback_states(training, callbacks)
    atomic_write(path, _encode(model, training, order, extra))


def _add_callback_states(training, callbacks):
    """Record each callback's ``get_state()`` in ``training["callbacks"]`` (only when there
    are callbacks); return its arrays as the ``(name, array)`` tensors to write."""
    extra = []
    if callbacks:
        entries = []
        for k, callback in enumerate(callbacks):
            state, arrays = callback.get_state() or (None, {})
            entries.append({"class": type(callback).__name__, "state": state,
                            "tensors": sorted(arrays)})
            extra += [(f"callbacks.{k}.{name}", arrays[name]) for name in sorted(arrays)]
        training["callbacks"] = entries
    return extra


def save_distributed_checkpoint(model, path, rank_states, epochs_completed, epochs, batch_size,
                                shuffle, callbacks=()):
    """Write a checkpoint of a ``fit_distributed`` run (called on rank 0 only).

    ``model`` is rank 0's replica (parameters, optimizer state and step count are the same
    on every rank).  ``rank_states`` holds, for each rank in rank order, what
    :func:`rank_state` returned there: its row order, its shuffle stream's state and its
    model RNG's state.  The row orders are stored as one ``shuffle_order`` tensor over all
    ranks' rows, rank ``r``'s local row ``i`` numbered ``sum(n_0 .. n_{r-1}) + i``, so the
    tensor stays a permutation of ``n_samples`` rows as in a single-process checkpoint.
    ``callbacks`` are rank 0's stateful callbacks, stored as :func:`save_checkpoint` stores
    them (their state is the same on every rank).
    """
    lengths = [int(order.shape[0]) for order, _, _ in rank_states]
    offsets = np.cumsum([0] + lengths[:-1])
    order = np.concatenate([np.asarray(o, dtype=np.int64) + off
                            for (o, _, _), off in zip(rank_states, offsets)])
    ranks = [{"n_samples": n, "shuffle_rng": shuffle_rng, "rng": rng}
             for n, (_, shuffle_rng, rng) in zip(lengths, rank_states)]
    training = {"epochs_completed": int(epochs_completed), "epochs": int(epochs),
                "batch_size": int(batch_size), **_shuffle_fields(shuffle),
                "n_samples": int(sum(lengths)), "ranks": ranks}
    extra = _add_callback_states(training, callbacks)
    atomic_write(path, _encode(model, training, order, extra))


def rank_state(model, order, shuffle_rng):
    """What one rank contributes to a distributed checkpoint (see
    :func:`save_distributed_checkpoint`): copies, safe to send."""
    return (np.array(order, dtype=np.int64), shuffle_rng.bit_generator.state,
            model.rng.bit_generator.state)


# ----------------------------------------------------------------------------- reading
def _fail(path, message):
    raise FormatError(f"{path}: {message}")


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen[key] = value
    return seen


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _no_constant(name):
    raise ValueError(f"{name} is not allowed")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


class _Checker:
    """Field checks that name the offending field in their error."""

    def __init__(self, path):
        self.path = path

    def fail(self, message):
        _fail(self.path, message)

    def keys(self, obj, where, required, optional=()):
        if not isinstance(obj, dict):
            self.fail(f"{where} must be a JSON object, got {type(obj).__name__}")
        missing = sorted(set(required) - set(obj))
        if missing:
            self.fail(f"{where} lacks {', '.join(missing)}")
        extra = sorted(set(obj) - set(required) - set(optional))
        if extra:
            self.fail(f"{where} has unknown field(s) {', '.join(map(repr, extra))}")
        return obj

    def int(self, value, where, low, high):
        if not _is_int(value) or not low <= value <= high:
            self.fail(f"{where} must be an integer in [{low}, {high}], got {_short(value)}")
        return value

    def choice(self, value, where, choices):
        if not isinstance(value, str) or value not in choices:
            self.fail(f"{where} must be one of {', '.join(map(repr, choices))}, got {_short(value)}")
        return value


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe_foreign(prefix):
    if prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "it looks like a Python pickle, which fastmlp never loads (unpickling can run code)"
    if prefix.startswith(b"PK\x03\x04"):
        return "it looks like a zip archive (e.g. a numpy .npz), not a fastmlp file"
    if prefix.startswith(b"\x93NUMPY"):
        return "it looks like a numpy .npy file, not a fastmlp file"
    return "it does not start with the fastmlp magic bytes"


def _read_header(path, f, size):
    if size == 0:
        _fail(path, "the file is empty (0 bytes)")
    if size < PREFIX_BYTES + CHECKSUM_BYTES:
        prefix = f.read(PREFIX_BYTES)
        if not MAGIC.startswith(prefix[:len(MAGIC)]):
            _fail(path, f"not a fastmlp model file: {_describe_foreign(prefix)}")
        _fail(path, f"file is truncated: {size} bytes, shorter than the smallest fastmlp file")
    prefix = f.read(PREFIX_BYTES)
    if prefix[:len(MAGIC)] != MAGIC:
        _fail(path, f"not a fastmlp model file: {_describe_foreign(prefix)}")
    header_len = int.from_bytes(prefix[len(MAGIC):], "little")
    room = size - PREFIX_BYTES - CHECKSUM_BYTES
    if header_len > MAX_HEADER_BYTES:
        _fail(path, f"header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit "
                    "(corrupted or crafted file)")
    if header_len > room:
        _fail(path, f"file is truncated or corrupted: the header claims {header_len} bytes but "
                    f"only {room} remain")
    text = f.read(header_len)
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates,
                            parse_float=_finite_float, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return prefix + text, None, f"the header is not valid JSON ({_short(str(exc))})"
    if not isinstance(header, dict):
        return prefix + text, None, "the header is not a JSON object"
    return prefix + text, header, None


def _tensor_table(check, header, header_len, size):
    """Validated ``{name: (dtype, shape, begin, end)}`` whose ranges tile the payload."""
    tensors = header.get("tensors")
    if not isinstance(tensors, dict) or not tensors or len(tensors) > 3 + 4 * MAX_CALLBACKS:
        check.fail("the header's tensor table is missing or malformed")
    payload = size - PREFIX_BYTES - header_len - CHECKSUM_BYTES
    table = {}
    for name, entry in tensors.items():
        where = f"tensor {_short(name)}"
        check.keys(entry, where, ("dtype", "shape", "offsets"))
        dtype = TENSOR_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        if dtype is None:
            check.fail(f"{where} has dtype {_short(entry['dtype'])}; allowed: "
                       f"{', '.join(TENSOR_DTYPES)} (never Python objects)")
        shape, offsets = entry["shape"], entry["offsets"]
        if not isinstance(shape, list) or not 1 <= len(shape) <= 2:
            check.fail(f"{where} has shape {_short(shape)}; expected a list of 1 or 2 sizes")
        for dim in shape:
            check.int(dim, f"{where} shape", 0, size)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
            check.fail(f"{where} offsets must be [begin, end] integers, got {_short(offsets)}")
        begin, end = offsets
        if not 0 <= begin <= end:
            check.fail(f"{where} has offsets [{begin}, {end}]: negative or reversed")
        if end > payload:
            check.fail(f"{where} ends at payload byte {end}, past the payload's {payload} bytes "
                       "(the file is truncated or the header is corrupted)")
        if end - begin != math.prod(shape) * dtype.itemsize:
            check.fail(f"{where} spans {end - begin} bytes but shape {shape} of {entry['dtype']} "
                       f"needs {math.prod(shape) * dtype.itemsize}")
        table[name] = (dtype, tuple(shape), begin, end)
    cursor = 0
    for name, (_, _, begin, end) in sorted(table.items(), key=lambda item: item[1][2:]):
        if begin != cursor:
            what = "overlaps the previous tensor" if begin < cursor else f"leaves a gap at byte {cursor}"
            check.fail(f"tensor {_short(name)} at payload byte {begin} {what}")
        cursor = end
    if cursor != payload:
        check.fail(f"the tensors cover {cursor} payload bytes but the file holds {payload}: "
                   "trailing bytes, or a truncated or corrupted file")
    return table


def _check_layers(check, layers, version=FORMAT_VERSION):
    if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_LAYERS:
        count = len(layers) if isinstance(layers, list) else _short(layers)
        check.fail(f"model.layers must be a list of 1 to {MAX_LAYERS} layers, got {count}")
    kinds = ("dense", "maxout") if version == 1 else ("dense", "maxout", "dropout", "layer_norm")
    built = []
    for k, entry in enumerate(layers):
        where = f"layer {k + 1}"
        kind = check.choice(entry.get("kind") if isinstance(entry, dict) else None,
                            f"{where} kind", kinds)
        if kind == "dropout":
            check.keys(entry, where, ("kind", "rate"))
            rate = entry["rate"]
            if not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 <= rate < 1):
                check.fail(f"{where} rate must be a number in [0, 1), got {_short(rate)}")
            built.append(("dropout", None, None, 1, None, {"rate": rate}))
            continue
        if kind == "layer_norm":
            check.keys(entry, where, ("kind", "n", "eps"))
            n = check.int(entry["n"], f"{where} n", 1, 1 << 40)
            eps = entry["eps"]
            if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps > 0):
                check.fail(f"{where} eps must be a positive number, got {_short(eps)}")
            built.append(("layer_norm", n, n, 1, None, {"eps": eps}))
            continue
        if kind == "dense":
            check.keys(entry, where, ("kind", "n_in", "n_out", "activation", "activation_params"))
        else:
            check.keys(entry, where, ("kind", "n_in", "n_out", "pieces"))
        # Sizes are bounded here and again by the parameter tensor, which must fit in the file.
        n_in = check.int(entry["n_in"], f"{where} n_in", 1, 1 << 40)
        n_out = check.int(entry["n_out"], f"{where} n_out", 1, 1 << 40)
        if kind == "maxout":
            pieces = check.int(entry["pieces"], f"{where} pieces", 2, 1 << 20)
            built.append(("maxout", n_in, n_out, pieces, None, None))
            continue
        activation = check.choice(entry["activation"], f"{where} activation", tuple(ACTIVATIONS))
        _, param_name, _ = ACTIVATIONS[activation]
        params = check.keys(entry["activation_params"], f"{where} activation_params",
                            (param_name,) if param_name else ())
        for name, value in params.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                check.fail(f"{where} {name} must be a number, got {_short(value)}")
        built.append(("dense", n_in, n_out, 1, activation, params))
    sized = [k for k, entry in enumerate(built) if entry[1] is not None]
    if not any(built[k][0] in ("dense", "maxout") for k in sized):
        check.fail("model.layers has no dense or maxout layer")
    for before, k in zip(sized, sized[1:]):
        if built[k][1] != built[before][2]:
            check.fail(f"layer {k + 1} takes {built[k][1]} inputs but layer {before + 1} outputs "
                       f"{built[before][2]}")
    return built


def _layer_parameter_count(kind, n_in, n_out, pieces):
    if kind == "dropout":
        return 0
    if kind == "layer_norm":
        return 2 * n_out
    return n_in * pieces * n_out + pieces * n_out


def _check_rng(check, rng, where="rng"):
    check.keys(rng, where, ("bit_generator", "state", "has_uint32", "uinteger"))
    check.choice(rng["bit_generator"], f"{where} bit_generator", ("PCG64",))
    check.keys(rng["state"], f"{where} state", ("state", "inc"))
    check.int(rng["state"]["state"], f"{where} state.state", 0, (1 << 128) - 1)
    check.int(rng["state"]["inc"], f"{where} state.inc", 0, (1 << 128) - 1)
    check.int(rng["has_uint32"], f"{where} has_uint32", 0, 1)
    check.int(rng["uinteger"], f"{where} uinteger", 0, (1 << 32) - 1)


def _check_ranks(check, ranks, n_samples):
    """``training.ranks`` of a distributed checkpoint: one entry per rank, rows adding up."""
    if not isinstance(ranks, list) or not 1 <= len(ranks) <= n_samples:
        count = len(ranks) if isinstance(ranks, list) else _short(ranks)
        check.fail(f"training ranks must be a list of 1 to n_samples ({n_samples}) entries, "
                   f"got {count}")
    for r, entry in enumerate(ranks):
        where = f"training ranks[{r}]"
        check.keys(entry, where, _RANK_KEYS)
        check.int(entry["n_samples"], f"{where} n_samples", 1, n_samples)
        _check_rng(check, entry["rng"], f"{where} rng")
        _check_rng(check, entry["shuffle_rng"], f"{where} shuffle_rng")
    total = sum(entry["n_samples"] for entry in ranks)
    if total != n_samples:
        check.fail(f"training ranks hold {total} rows in all, but training n_samples is "
                   f"{n_samples}")


def _check_header(check, header, table):
    """Everything but the tensor table: the model, optimizer, RNG and training sections."""
    check.keys(header, "the header", _TOP_KEYS)
    if header["format"] != "fastmlp":
        check.fail(f"format is {_short(header['format'])}, not 'fastmlp'")
    if header["checksum"] != "sha256":
        check.fail(f"unknown checksum {_short(header['checksum'])}")
    if not isinstance(header["fastmlp_version"], str) or len(header["fastmlp_version"]) > 64:
        check.fail("fastmlp_version must be a short string")
    version = header["format_version"]
    optional = ("dropout_seed", "loss_params") if version >= 2 else ()
    model = check.keys(header["model"], "model", ("loss", "dtype", "seed", "layers"), optional)
    check.choice(model["loss"], "model loss", tuple(LOSSES))
    _loss_params(check, model)
    dtype = check.choice(model["dtype"], "model dtype", ("float32", "float64"))
    if model["seed"] is not None:
        check.int(model["seed"], "model seed", 0, math.inf)
    layers = _check_layers(check, model["layers"], version)
    has_dropout = any(entry[0] == "dropout" for entry in layers)
    if has_dropout != ("dropout_seed" in model):
        check.fail("model dropout_seed must be given exactly when a layer is a dropout layer")
    if has_dropout:
        check.int(model["dropout_seed"], "model dropout_seed", 0, (1 << 63) - 1)
    opt = check.keys(header["optimizer"], "optimizer", ("class", "hyperparameters", "step_count"))
    opt_class = OPTIMIZERS[check.choice(opt["class"], "optimizer class", tuple(OPTIMIZERS))]
    hyper = check.keys(opt["hyperparameters"], "optimizer hyperparameters",
                       opt_class.hyperparameter_names,
                       opt_class.clip_names if header["format_version"] >= 2 else ())
    for name, value in hyper.items():
        items = value if isinstance(value, list) and 1 <= len(value) <= 4 else [value]
        if not all(isinstance(v, (int, float)) for v in items):  # bools are ints
            check.fail(f"optimizer hyperparameter {name} must be a number, a boolean or a short "
                       f"list of numbers, got {_short(value)}")
    check.int(opt["step_count"], "optimizer step_count", 0, 1 << 62)
    _check_rng(check, header["rng"])

    # The tensors the architecture implies, compared with the table before anything is built.
    n_params = sum(_layer_parameter_count(kind, n_in, n_out, pieces)
                   for kind, n_in, n_out, pieces, _, _ in layers)
    expected = {"params": (dtype, (n_params,)),
                "optimizer_state": (dtype, (opt_class.n_slots, n_params))}
    training = header["training"]
    if training is not None:
        check.keys(training, "training", _TRAINING_KEYS, ("ranks", "callbacks", "shuffle_chunks"))
        n_samples = check.int(training["n_samples"], "training n_samples", 1, 1 << 62)
        check.int(training["epochs"], "training epochs", 1, 1 << 62)
        check.int(training["epochs_completed"], "training epochs_completed", 1, training["epochs"])
        check.int(training["batch_size"], "training batch_size", 1, n_samples)
        if not isinstance(training["shuffle"], bool):
            check.fail("training shuffle must be true or false")
        if "shuffle_chunks" in training:
            chunks = training["shuffle_chunks"]
            if not (isinstance(chunks, list) and len(chunks) == 2 and training["shuffle"]):
                check.fail("training shuffle_chunks must be [chunk_rows, window], with shuffle true")
            check.int(chunks[0], "training shuffle_chunks chunk_rows", 1, 1 << 62)
            check.int(chunks[1], "training shuffle_chunks window", 1, 1 << 62)
        if "ranks" in training:
            _check_ranks(check, training["ranks"], n_samples)
        expected["shuffle_order"] = ("int64", (n_samples,))
        for name in _check_callback_entries(check, training.get("callbacks", [])):
            expected[name] = (dtype, (n_params,))
    if set(table) != set(expected):
        check.fail(f"the file holds tensors {sorted(table)}, expected {sorted(expected)}")
    for name, (dtype_name, shape) in expected.items():
        got_dtype, got_shape = table[name][:2]
        if got_dtype != TENSOR_DTYPES[dtype_name] or got_shape != shape:
            check.fail(f"tensor {name} is {got_dtype.name} {got_shape}, but the architecture "
                       f"needs {dtype_name} {shape}")
    return layers


def _check_callback_entries(check, entries):
    """Check ``training.callbacks``; return the names of the tensors it declares."""
    if not isinstance(entries, list) or len(entries) > MAX_CALLBACKS:
        check.fail(f"training callbacks must be a list of at most {MAX_CALLBACKS} entries")
    names = []
    for k, entry in enumerate(entries):
        where = f"training callback {k}"
        check.keys(entry, where, ("class", "state", "tensors"))
        if not isinstance(entry["class"], str) or not 0 < len(entry["class"]) <= 200:
            check.fail(f"{where} class must be a class name, got {_short(entry['class'])}")
        state = entry["state"]
        if state is not None:
            if not isinstance(state, dict) or len(state) > 64:
                check.fail(f"{where} state must be null or an object of at most 64 fields")
            for key, value in state.items():
                if not (value is None or isinstance(value, (int, float))):  # bools are ints
                    check.fail(f"{where} state field {_short(key)} must be a number, a boolean "
                               f"or null, got {_short(value)}")
        tensors = entry["tensors"]
        if not (isinstance(tensors, list) and len(tensors) <= 4
                and all(isinstance(t, str) and 0 < len(t) <= 64 for t in tensors)):
            check.fail(f"{where} tensors must be a list of at most 4 short names")
        names += [f"callbacks.{k}.{t}" for t in tensors]
    return names


def read(path):
    """Read and check a fastmlp file completely, building nothing.

    Returns
    -------
    Contents
        ``header`` (the parsed JSON, every field checked) and ``tensors`` (name -> read-only
        little-endian array).

    Raises
    ------
    FormatError
        For anything but a complete, intact file of this format version.
    OSError
        When the file cannot be opened or read.
    """
    path = check_path(path)
    check = _Checker(path)
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            check.fail("not a regular file")
        size = st.st_size
        head, header, json_problem = _read_header(path, f, size)
        if header is not None:
            version = header.get("format_version")
            if not _is_int(version) or version not in READABLE_VERSIONS:
                check.fail(f"unsupported format version {_short(version)}: this fastmlp reads "
                           f"versions {', '.join(map(str, READABLE_VERSIONS))}")
        # ``size`` is the real file size, so this allocates what the file holds, no more.
        rest = f.read(size - len(head))
    if len(rest) != size - len(head):
        check.fail("the file changed size while it was read")
    digest = hashlib.sha256(head)
    digest.update(memoryview(rest)[:-CHECKSUM_BYTES])
    intact = digest.digest() == rest[-CHECKSUM_BYTES:]
    if json_problem is not None:
        check.fail(f"{json_problem}; " + ("the checksum matches, so the writer was faulty" if intact
                                         else "checksum mismatch: the file is corrupted or truncated"))
    try:
        table = _tensor_table(check, header, len(head) - PREFIX_BYTES, size)
    except FormatError as exc:
        if intact:
            raise
        raise FormatError(f"{exc}; checksum mismatch: the file is corrupted or truncated") from None
    if not intact:
        check.fail("checksum mismatch: the file is corrupted (bit flips, or a partial write)")
    _check_header(check, header, table)
    tensors = {}
    for name, (dtype, shape, begin, end) in table.items():
        arr = np.frombuffer(rest, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin)
        tensors[name] = arr.reshape(shape)
    for name, arr in tensors.items():
        if name != "shuffle_order" and not np.isfinite(arr).all():
            check.fail(f"tensor {name} contains NaN or Inf")
    if "shuffle_order" in tensors:
        order = tensors["shuffle_order"]
        if not np.array_equal(np.sort(order), np.arange(order.shape[0])):
            check.fail("tensor shuffle_order is not a permutation of the rows")
        begin = 0
        for r, entry in enumerate(header["training"].get("ranks", ())):
            # Rows never move between ranks: each rank's stretch holds its own rows only.
            end = begin + entry["n_samples"]
            part = order[begin:end]
            if part.size and not (part.min() >= begin and part.max() < end):
                check.fail(f"tensor shuffle_order gives rank {r} rows of another rank")
            begin = end
    return Contents(header, tensors)


#: What :func:`model_spec` returns: enough to build the model a file describes.
ModelSpec = namedtuple("ModelSpec", ["layers", "loss", "dtype", "seed", "optimizer_class",
                                     "hyperparameters", "dropout_seed", "loss_params"])


def model_spec(path, contents):
    """The model that checked ``contents`` (from :func:`read`) describe, as plain values.

    ``layers`` holds ``(kind, n_in, n_out, pieces, activation, activation_params)`` per
    layer (``kind`` is ``"dense"``, ``"maxout"``, ``"dropout"`` with ``{"rate": r}`` as
    its parameters and no sizes, or ``"layer_norm"`` with ``{"eps": e}``);
    ``dropout_seed`` is the masks' key or None; ``optimizer_class`` is one of
    :data:`OPTIMIZERS` and ``hyperparameters`` its keyword arguments.  The file format
    knows no model class: :func:`fastmlp.load` builds the ``Sequential``.  ``loss_params``
    is the loss's parameters (its defaults where the file has none, as version 1 files).
    """
    header = contents.header
    model_h, opt_h = header["model"], header["optimizer"]
    check = _Checker(path)
    return ModelSpec(_check_layers(check, model_h["layers"], header["format_version"]),
                     model_h["loss"], model_h["dtype"], model_h["seed"], OPTIMIZERS[opt_h["class"]],
                     {k: _hyper_from_json(v) for k, v in opt_h["hyperparameters"].items()},
                     model_h.get("dropout_seed"), _loss_params(check, model_h))


def _apply_state(model, contents):
    header, tensors = contents
    np.copyto(model.params, tensors["params"])
    np.copyto(model.optimizer.state, tensors["optimizer_state"])
    model.optimizer.step_count = header["optimizer"]["step_count"]
    model.rng.bit_generator.state = header["rng"]
    if "dropout_seed" in header["model"]:
        model.dropout_seed = header["model"]["dropout_seed"]


def _model_description(model):
    return {"loss": model.loss, "loss_params": model.loss_object.params(),
            "dtype": model.dtype.name,
            "layers": [_layer_entry(layer) for layer in model.layers],
            "optimizer": type(model.optimizer).__name__}


def read_checkpoint(model, path, epochs, batch_size, shuffle, n_samples, lengths=None,
                    callbacks=()):
    """Check that the checkpoint at ``path`` can resume ``fit`` on ``model``; change nothing.

    Returns the checked contents and the number of epochs it completed.  A checkpoint of
    another model or another run (architecture, loss, dtype, optimizer class, row count,
    batch size, shuffle) is refused with ``ValueError``; a damaged file with ``FormatError``.
    ``lengths`` (every rank's row count, in rank order) marks a ``fit_distributed`` run:
    its checkpoint must then come from the same number of ranks with the same row counts,
    and a single-process checkpoint and a distributed one never resume each other.
    """
    contents = read(path)
    header = contents.header
    training = header["training"]
    if training is None:
        raise ValueError(f"{path} is a saved model, not a checkpoint written by fit; "
                         "pass resume=False or another checkpoint path")
    mine = _model_description(model)
    theirs = dict(header["model"], optimizer=header["optimizer"]["class"],
                  loss_params=_loss_params(_Checker(path), header["model"]))
    for key, value in mine.items():
        if theirs[key] != value:
            raise ValueError(f"checkpoint {path} belongs to another model: its {key} is "
                             f"{_short(theirs[key])}, this model's {_short(value)}")
    ranks = training.get("ranks")
    if lengths is None and ranks is not None:
        raise ValueError(f"checkpoint {path} was written by fit_distributed on {len(ranks)} "
                         f"rank(s); resume it with comm= on {len(ranks)} rank(s), or pass "
                         "resume=False to start afresh")
    if lengths is not None:
        if ranks is None:
            raise ValueError(f"checkpoint {path} was written by a single-process fit; it cannot "
                             f"resume a run on {len(lengths)} rank(s) (each rank has its own rows "
                             "and shuffle stream): pass resume=False to start afresh")
        if len(ranks) != len(lengths):
            raise ValueError(f"checkpoint {path} was written by {len(ranks)} rank(s), this job has "
                             f"{len(lengths)}; resuming would not continue that run: run it on "
                             f"{len(ranks)} rank(s), or pass resume=False to start afresh")
        saved = [entry["n_samples"] for entry in ranks]
        if saved != list(lengths):
            raise ValueError(f"checkpoint {path} was written with shards of {_short(saved)} rows "
                             f"(rank 0, 1, ...), this job's shards have {_short(list(lengths))}; "
                             "resuming would not continue that run (pass resume=False to start "
                             "afresh)")
    theirs, mine = ({k: training[k] for k in ("shuffle", "shuffle_chunks") if k in training},
                    _shuffle_fields(shuffle))
    if theirs != mine:
        raise ValueError(f"checkpoint {path} was written by fit with "
                         f"shuffle={_describe_shuffle(theirs)}, this call has "
                         f"shuffle={_describe_shuffle(mine)}; resuming would not continue that "
                         "run (pass resume=False to start afresh)")
    for key, value in (("n_samples", n_samples), ("batch_size", batch_size)):
        if training[key] != value:
            raise ValueError(f"checkpoint {path} was written by fit with {key}={training[key]!r}, "
                             f"this call has {key}={value!r}; resuming would not continue that run "
                             "(pass resume=False to start afresh)")
    saved_callbacks = [entry["class"] for entry in training.get("callbacks", [])]
    these_callbacks = [type(callback).__name__ for callback in callbacks]
    if saved_callbacks != these_callbacks:
        raise ValueError(f"checkpoint {path} was written by fit with the stateful callbacks "
                         f"{_short(saved_callbacks)}, this call has {_short(these_callbacks)}; "
                         "their state would not carry over (pass the same ones, in the same "
                         "order, or resume=False to start afresh)")
    done = training["epochs_completed"]
    if done > epochs:
        raise ValueError(f"checkpoint {path} has already completed {done} epochs, more than "
                         f"epochs={epochs}")
    return contents, done


def rank_states(contents):
    """Every rank's ``(order, shuffle_rng_state, model_rng_state)`` from a distributed
    checkpoint accepted by :func:`read_checkpoint`, rows numbered locally (from 0)."""
    order = contents.tensors["shuffle_order"]
    states, begin = [], 0
    for entry in contents.header["training"]["ranks"]:
        end = begin + entry["n_samples"]
        states.append((order[begin:end] - begin, entry["shuffle_rng"], entry["rng"]))
        begin = end
    return states


def apply_checkpoint_model(model, contents):
    """Put the checkpoint's parameters, optimizer state, step count and RNG state into
    ``model`` (after :func:`read_checkpoint` accepted it)."""
    _apply_state(model, contents)


def callback_states(contents):
    """Per callback of a checkpoint accepted by :func:`read_checkpoint`, in order, the
    ``(state, arrays)`` its ``get_state()`` returned when it was written."""
    entries = contents.header["training"].get("callbacks", [])
    return [(entry["state"], {name: contents.tensors[f"callbacks.{k}.{name}"]
                              for name in entry["tensors"]})
            for k, entry in enumerate(entries)]


def apply_checkpoint(model, contents, order):
    """Put the checkpoint's parameters, optimizer state, step count, RNG state and row
    order into ``model`` and ``order`` (after :func:`read_checkpoint` accepted it)."""
    apply_checkpoint_model(model, contents)
    np.copyto(order, contents.tensors["shuffle_order"])



# ----------------------------------------------------------------------------- shared with other formats
# What fastmlp.safetensors_io reuses, so that a model is described and checked the same way
# whatever file holds it.

def layer_entries(model):
    """The header's ``model.layers`` entries of ``model``'s layers (JSON-ready dicts)."""
    return [_layer_entry(layer) for layer in model.layers]


def optimizer_entry(optimizer):
    """The header's ``optimizer`` entry: class, hyperparameters and step count."""
    return _optimizer_entry(optimizer)


def parse_json(text):
    """``json.loads`` as the header reader uses it: duplicate keys, NaN, Infinity and
    overflowing numbers refused (``ValueError``)."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_float=_finite_float,
                      parse_constant=_no_constant)


def check_layers(path, layers):
    """Check ``model.layers`` entries as :func:`read` does; return them as the
    ``ModelSpec.layers`` tuples.  Raises :class:`FormatError` naming ``path``."""
    return _check_layers(_Checker(path), layers)


def hyperparameters_from_json(hyperparameters):
    """The optimizer's constructor arguments from its header entry's ``hyperparameters``."""
    return {key: _hyper_from_json(value) for key, value in hyperparameters.items()}


def check_loss_params(check, model_entry):
    """The loss's full parameter dict from ``model_entry`` (``{"loss": name}`` and an
    optional ``"loss_params"``), checked as :func:`read` checks a header's; ``check`` is a
    :class:`Checker`."""
    return _loss_params(check, model_entry)


#: Field checks that name the file and the offending field in their FormatError.
Checker = _Checker
short = _short
is_int = _is_int
