"""``Sequential.summary()``: the layer table Keras prints, as lines of text."""

#: Keras's Sequential summary: 65 characters, the columns ending at 45 % and 85 % of them.
DEFAULT_LINE_LENGTH = 65
_POSITIONS = (0.45, 0.85)


def readable_size(n_bytes):
    """``n_bytes`` as Keras 3 writes memory sizes: ``"396.00 B"``, ``"1.25 KB"``, ...
    (powers of 1024)."""
    size = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.2f} {unit}"
        size /= 1024


def layer_rows(model):
    """``(name, output shape, parameter count)`` of each layer, as the table shows them."""
    rows, spans = [], model.parameter_spans()
    for k, layer in enumerate(model.layers):
        kind = type(layer).__name__
        if kind == "Maxout":
            detail = f"{kind}, {layer.pieces} pieces"
        elif layer.activation != "identity":
            detail = f"{kind}, {layer.activation}"
        else:
            detail = kind
        n_params = spans[2 * k][1] + spans[2 * k + 1][1]
        rows.append((f"layers.{k} ({detail})", f"(None, {layer.n_out})", n_params))
    return rows


def summary_lines(model, line_length=None):
    """The lines of ``model``'s summary table (see :meth:`fastmlp.Sequential.summary`)."""
    if line_length is None:
        line_length = DEFAULT_LINE_LENGTH
    if isinstance(line_length, bool) or not isinstance(line_length, int) or line_length < 20:
        raise ValueError(f"line_length must be an integer >= 20, got {line_length!r}")
    rows = [(name, shape, f"{count:,}") for name, shape, count in layer_rows(model)]
    heading = ("Layer (type)", "Output Shape", "Param #")
    # Column ends as Keras places them, moved right where an entry would not fit.
    first = max([int(line_length * _POSITIONS[0])] + [len(r[0]) + 2 for r in rows + [heading]])
    second = max([int(line_length * _POSITIONS[1]), first + 14]
                 + [first + len(r[1]) + 1 for r in rows + [heading]])
    width = max([line_length] + [second + len(r[2]) + 1 for r in rows + [heading]])

    def row(fields):
        return (" " + fields[0]).ljust(first) + fields[1].ljust(second - first) + fields[2]

    total = model.count_params()
    itemsize = model.dtype.itemsize
    lines = [f'Model: "{type(model).__name__}"', "_" * width, row(heading), "=" * width]
    for k, fields in enumerate(rows):
        if k:
            lines.append("")
        lines.append(row(fields))
    lines += ["=" * width,
              f"Total params: {total:,} ({readable_size(total * itemsize)})",
              f"Trainable params: {total:,} ({readable_size(total * itemsize)})",
              f"Non-trainable params: 0 ({readable_size(0)})"]
    state = int(model.optimizer.state.size)
    if state:
        lines.append(f"Optimizer params: {state:,} ({readable_size(state * itemsize)})")
    lines.append("_" * width)
    return lines
