"""The safetensors format, written and read without the ``safetensors`` package.

A safetensors file (https://github.com/huggingface/safetensors) is::

    header_len   8 bytes   uint64, little-endian
    header       JSON, UTF-8, starts with "{", may be padded with spaces
    buffer       raw little-endian tensors at the offsets the header gives

The header maps each tensor's name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
(offsets into the buffer) and may hold ``"__metadata__"``, a map of strings to strings.
fastmlp writes one tensor pair per layer that has parameters, ``k`` being the layer's
position among all layers: ``layers.{k}.weight`` of shape ``(n_in, pieces * n_out)`` (the
model computes ``x @ W + b``) and ``layers.{k}.bias``; for a layer norm its gain
``layers.{k}.weight`` and bias ``layers.{k}.bias``, both ``(n,)`` (PyTorch's names); none
for a dropout layer.  The metadata holds ``architecture`` (the layers as JSON, as in the
``.fmlp`` header), ``loss``, ``dtype``, ``loss_params`` (a loss's parameters other than its defaults), ``seed``,
``dropout_seed`` (with dropout layers),
``optimizer`` (class, hyperparameters and step count, as JSON), ``format_version`` and
``fastmlp_version``.  It is a weights file: the optimizer's state
and the random stream are not kept, so a model read back trains on with a fresh optimizer
of the same class and hyperparameters (use :meth:`Sequential.save
<fastmlp.Sequential.save>` to continue a run exactly).

:func:`read` keeps every guarantee of the ``.fmlp`` reader: nothing is unpickled or run,
the header length is checked against the format's 100 MB limit and the real file size
before the header is read, every tensor's size and offsets are checked against the file
before anything is allocated, and the tensors must tile the buffer (no overlap, no gap, no
trailing bytes), as the format requires.  Whatever it refuses raises
:class:`~fastmlp.FormatError` naming the problem.
"""

import json
import math
import os
import stat
from collections import namedtuple

import numpy as np

from fastmlp import atomicfile, io
from fastmlp.layers import Dropout

#: The format's limit on the header (the safetensors package refuses larger ones too).
MAX_HEADER_BYTES = 100_000_000
#: Version of fastmlp's metadata layout (``__metadata__["format_version"]``).
FORMAT_VERSION = 1
#: safetensors dtype names fastmlp reads and writes -> the little-endian numpy dtype.
DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8")}
#: numpy dtype name of a model -> safetensors dtype name.
DTYPE_NAMES = {"float32": "F32", "float64": "F64"}
#: Every dtype the format defines, to tell "not supported here" from "not a dtype".
KNOWN_DTYPES = ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32",
                "U32", "F32", "F64", "I64", "U64")
#: Metadata a model file must hold (the others are optional).
REQUIRED_METADATA = ("architecture", "loss", "dtype")

#: What :func:`read` returns: the metadata (str -> str, empty when absent) and the tensors
#: (name -> read-only array).
Contents = namedtuple("Contents", ["metadata", "tensors"])


def looks_like_safetensors(prefix):
    """Whether the file's first bytes (at least 9) are those of a safetensors file: not
    fastmlp's magic, and a JSON object right after the 8-byte length."""
    return len(prefix) >= 9 and not prefix.startswith(io.MAGIC) and prefix[8:9] == b"{"


def sniff(path):
    """Whether the file at ``path`` is a safetensors file (by its bytes, not its name)."""
    with open(path, "rb") as f:
        return looks_like_safetensors(f.read(9))


# ----------------------------------------------------------------------------- writing
def metadata(model):
    """The ``__metadata__`` fastmlp writes for ``model`` (every value a string)."""
    from fastmlp import __version__

    def dumps(value):
        return json.dumps(value, allow_nan=False, separators=(",", ":"), sort_keys=True)

    meta = {
        "format_version": str(FORMAT_VERSION),
        "fastmlp_version": __version__,
        "architecture": dumps(io.layer_entries(model)),
        "loss": model.loss,
        "dtype": model.dtype.name,
        "seed": dumps(None if model.seed is None else int(model.seed)),
        "optimizer": dumps(io.optimizer_entry(model.optimizer)),
    }
    if any(isinstance(layer, Dropout) for layer in model.layers):
        meta["dropout_seed"] = dumps(int(model.dropout_seed))
    loss_params = io.changed_loss_params(model.loss_object)
    if loss_params:  # absent: the loss's defaults
        meta["loss_params"] = dumps(loss_params)
    return meta


def encode(model):
    """The file's chunks: length, header, then each layer's weight and bias."""
    dtype_name = DTYPE_NAMES[model.dtype.name]
    header, data, offset = {"__metadata__": metadata(model)}, [], 0
    for k, layer in enumerate(model.layers):
        if not layer.has_parameters:
            continue
        for suffix, arr in (("weight", layer.W), ("bias", layer.b)):
            if not np.isfinite(arr).all():
                raise ValueError(f"cannot export: layer {k}'s {suffix} contains NaN or Inf")
            arr = np.ascontiguousarray(arr, dtype=DTYPES[dtype_name])
            header[f"layers.{k}.{suffix}"] = {"dtype": dtype_name, "shape": list(arr.shape),
                                              "data_offsets": [offset, offset + arr.nbytes]}
            offset += arr.nbytes
            data.append(memoryview(arr).cast("B"))
    text = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the buffer starts 8-byte aligned, as the format advises
    return [len(text).to_bytes(8, "little"), text] + data


def export(model, path):
    """Write ``model``'s weights and description to ``path`` as safetensors, atomically."""
    chunks = encode(model)  # refuses (NaN weights) before the file system is touched

    def write(f):
        for chunk in chunks:
            f.write(chunk)

    atomicfile.atomic_write(path, write, action="export to")


# ----------------------------------------------------------------------------- reading
def _json(check, text, where):
    try:
        return io.parse_json(text)
    except (ValueError, RecursionError) as exc:
        check.fail(f"{where} is not valid JSON ({io.short(str(exc))})")


def _read_header(check, f, size):
    if size < 8:
        check.fail(f"file is truncated: {size} bytes, shorter than a safetensors header length")
    header_len = int.from_bytes(f.read(8), "little")
    if header_len > MAX_HEADER_BYTES:
        check.fail(f"safetensors header length {header_len} exceeds the format's "
                   f"{MAX_HEADER_BYTES}-byte limit (corrupted or crafted file)")
    if header_len > size - 8:
        check.fail(f"file is truncated or corrupted: the safetensors header claims {header_len} "
                   f"bytes but only {size - 8} follow")
    raw = f.read(header_len)
    if len(raw) != header_len:
        check.fail("the file changed size while it was read")
    if not raw.startswith(b"{"):
        check.fail("the safetensors header does not start with '{'")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        check.fail("the safetensors header is not UTF-8")
    header = _json(check, text, "the safetensors header")
    if not isinstance(header, dict):
        check.fail("the safetensors header is not a JSON object")
    return header_len, header


def _tensor_table(check, header, buffer_bytes):
    """``{name: (dtype, shape, begin, end)}``, checked against the buffer's real size, the
    ranges tiling it exactly."""
    table = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"tensor {io.short(name)}"
        check.keys(entry, where, ("dtype", "shape", "data_offsets"))
        dtype_name = entry["dtype"]
        if dtype_name not in DTYPES:
            known = dtype_name in KNOWN_DTYPES if isinstance(dtype_name, str) else False
            check.fail(f"{where} has dtype {io.short(dtype_name)}"
                       + ("" if known else ", not a safetensors dtype")
                       + f"; fastmlp reads {', '.join(DTYPES)}")
        shape, offsets = entry["shape"], entry["data_offsets"]
        if not isinstance(shape, list) or len(shape) > 8:
            check.fail(f"{where} has shape {io.short(shape)}; expected a list of sizes")
        for dim in shape:
            check.int(dim, f"{where} shape", 0, buffer_bytes)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(io.is_int, offsets))):
            check.fail(f"{where} data_offsets must be [begin, end] integers, got "
                       f"{io.short(offsets)}")
        begin, end = offsets
        if not 0 <= begin <= end:
            check.fail(f"{where} has data_offsets [{begin}, {end}]: negative or reversed")
        if end > buffer_bytes:
            check.fail(f"{where} ends at byte {end}, past the buffer's {buffer_bytes} bytes "
                       "(the file is truncated or the header is corrupted)")
        dtype = DTYPES[dtype_name]
        if end - begin != math.prod(shape) * dtype.itemsize:
            check.fail(f"{where} spans {end - begin} bytes but shape {shape} of {dtype_name} "
                       f"needs {math.prod(shape) * dtype.itemsize}")
        table[name] = (dtype, tuple(shape), begin, end)
    cursor = 0
    for name, (_, _, begin, end) in sorted(table.items(), key=lambda item: item[1][2:]):
        if begin != cursor:
            what = ("overlaps the previous tensor" if begin < cursor
                    else f"leaves a gap at byte {cursor}")
            check.fail(f"tensor {io.short(name)} at buffer byte {begin} {what}")
        cursor = end
    if cursor != buffer_bytes:
        check.fail(f"the tensors cover {cursor} buffer bytes but the file holds {buffer_bytes}: "
                   "trailing bytes, or a truncated or corrupted file")
    return table


def read(path):
    """Read and check a safetensors file completely, building nothing.

    Returns
    -------
    Contents
        ``metadata`` (str -> str; empty when the file has none) and ``tensors`` (name ->
        read-only little-endian array of its shape).

    Raises
    ------
    FormatError
        For anything that breaks the format's rules, or a dtype fastmlp does not read.
    OSError
        When the file cannot be opened or read.
    """
    path = io.check_path(path)
    check = io.Checker(path)
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            check.fail("not a regular file")
        size = st.st_size
        header_len, header = _read_header(check, f, size)
        meta = header.get("__metadata__", {})
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            check.fail("__metadata__ must be a JSON object of strings (the format's rule)")
        buffer_bytes = size - 8 - header_len
        table = _tensor_table(check, header, buffer_bytes)
        # Every size checked: this allocates what the file holds, no more.
        buffer = f.read(buffer_bytes)
    if len(buffer) != buffer_bytes:
        check.fail("the file changed size while it was read")
    tensors = {}
    for name, (dtype, shape, begin, end) in table.items():
        arr = np.frombuffer(buffer, dtype=dtype, count=(end - begin) // dtype.itemsize,
                            offset=begin)
        tensors[name] = arr.reshape(shape)
    return Contents(meta, tensors)


def check_optimizer_metadata(check, text):
    """The metadata's ``optimizer`` (JSON text) checked with ``check`` (an
    :class:`fastmlp.io.Checker`): ``(class, constructor arguments, the parsed entry)``."""
    entry = _json(check, text, "metadata optimizer")
    check.keys(entry, "metadata optimizer", ("class", "hyperparameters"), ("step_count",))
    opt_class = io.OPTIMIZERS[check.choice(entry["class"], "metadata optimizer class",
                                           tuple(io.OPTIMIZERS))]
    hyper = check.keys(entry["hyperparameters"], "metadata optimizer hyperparameters",
                       opt_class.hyperparameter_names)
    for name, value in hyper.items():
        items = value if isinstance(value, list) and 1 <= len(value) <= 4 else [value]
        if not all(isinstance(v, (int, float)) for v in items):  # bools are ints
            check.fail(f"metadata optimizer hyperparameter {name} must be a number, a boolean "
                       f"or a short list of numbers, got {io.short(value)}")
    if "step_count" in entry:
        check.int(entry["step_count"], "metadata optimizer step_count", 0, 1 << 62)
    return opt_class, io.hyperparameters_from_json(hyper), entry


def model_spec(path, contents):
    """The model that ``contents`` (from :func:`read`) describe, and its weights.

    Returns
    -------
    spec : fastmlp.io.ModelSpec
        As for a ``.fmlp`` file; the optimizer is SGD's defaults when the metadata names none.
    weights : list of ndarray
        ``[W1, b1, W2, b2, ...]`` as :meth:`Sequential.set_weights <fastmlp.Sequential.set_weights>`
        takes them.

    Raises
    ------
    FormatError
        When the metadata lacks what a model needs, or the tensors do not match it.
    """
    check = io.Checker(path)
    meta, tensors = contents
    missing = [key for key in REQUIRED_METADATA if key not in meta]
    if missing:
        check.fail(f"this safetensors file has no fastmlp model description: __metadata__ lacks "
                   f"{', '.join(missing)} (fastmlp needs the architecture, loss and dtype to "
                   "build a model; see docs/file-format.md)")
    if "format_version" in meta and meta["format_version"] != str(FORMAT_VERSION):
        check.fail(f"unsupported fastmlp metadata format_version {io.short(meta['format_version'])}"
                   f": this fastmlp reads version {FORMAT_VERSION}")
    layers = io.check_layers(path, _json(check, meta["architecture"], "metadata architecture"))
    loss = check.choice(meta["loss"], "metadata loss", tuple(io.LOSSES))
    loss_entry = {"loss": loss}
    if "loss_params" in meta:
        loss_entry["loss_params"] = _json(check, meta["loss_params"], "metadata loss_params")
    loss_params = io.check_loss_params(check, loss_entry)
    dtype = check.choice(meta["dtype"], "metadata dtype", tuple(DTYPE_NAMES))
    seed = None
    if "seed" in meta:
        seed = _json(check, meta["seed"], "metadata seed")
        if seed is not None:
            check.int(seed, "metadata seed", 0, math.inf)
    opt_class, hyper = io.SGD, {}
    if "optimizer" in meta:
        opt_class, hyper, _ = check_optimizer_metadata(check, meta["optimizer"])
    dropout_seed = None
    if any(kind == "dropout" for kind, *_ in layers):
        if "dropout_seed" not in meta:
            check.fail("metadata dropout_seed is missing: the architecture has a dropout layer")
        dropout_seed = _json(check, meta["dropout_seed"], "metadata dropout_seed")
        check.int(dropout_seed, "metadata dropout_seed", 0, (1 << 63) - 1)
    expected = {}
    for k, (kind, n_in, n_out, pieces, _, _) in enumerate(layers):
        if kind == "dropout":
            continue
        if kind == "layer_norm":
            expected[f"layers.{k}.weight"] = (n_out,)
            expected[f"layers.{k}.bias"] = (n_out,)
            continue
        expected[f"layers.{k}.weight"] = (n_in, pieces * n_out)
        expected[f"layers.{k}.bias"] = (pieces * n_out,)
    if set(tensors) != set(expected):
        extra, absent = sorted(set(tensors) - set(expected)), sorted(set(expected) - set(tensors))
        check.fail("the tensors do not match the architecture: "
                   + "; ".join(part for part in (
                       f"missing {', '.join(absent)}" if absent else "",
                       f"unexpected {', '.join(map(io.short, extra))}" if extra else "") if part))
    weights = []
    for name, shape in expected.items():
        arr = tensors[name]
        if arr.dtype != DTYPES[DTYPE_NAMES[dtype]] or arr.shape != shape:
            check.fail(f"tensor {name} is {DTYPE_NAMES.get(arr.dtype.name, arr.dtype.name)} "
                       f"{arr.shape}, but the architecture needs {DTYPE_NAMES[dtype]} {shape}")
        if not np.isfinite(arr).all():
            check.fail(f"tensor {name} contains NaN or Inf")
        weights.append(arr)
    spec = io.ModelSpec(layers, loss, dtype, seed, opt_class, hyper, dropout_seed, loss_params)
    return spec, weights
