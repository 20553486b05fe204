"""The formats :meth:`Sequential.export <fastmlp.Sequential.export>` writes.

Each format is one entry of :data:`EXPORT_FORMATS`: its name, and the module and function
that write it, imported only when that format is asked for (so a format's optional
dependency is imported by its own export alone).  The function is called as
``function(model, path, **options)``.
"""

import importlib

from fastmlp import io

#: format name -> (module, function name).
EXPORT_FORMATS = {
    "onnx": ("fastmlp.onnx_export", "export_onnx"),
    "safetensors": ("fastmlp.safetensors_io", "export"),
}


def export(model, path, format, **options):
    """Write ``model`` to ``path`` in ``format`` (see :meth:`fastmlp.Sequential.export`)."""
    if not isinstance(format, str) or format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid formats: "
                         f"{', '.join(map(repr, EXPORT_FORMATS))}")
    path = io.check_path(path)
    module, function = EXPORT_FORMATS[format]
    getattr(importlib.import_module(module), function)(model, path, **options)
