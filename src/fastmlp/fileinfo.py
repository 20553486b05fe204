"""What ``fastmlp info MODEL`` prints: a model file's metadata and the model's summary.

Works for fastmlp's own ``.fmlp`` files (saved models and ``fit`` checkpoints) and for
safetensors files with fastmlp's metadata; the format is told from the file's bytes.  The
file is read and checked as :func:`fastmlp.load` checks it; no kernel is compiled.
"""

from fastmlp import io, safetensors_io
from fastmlp.sequential import model_from_spec
from fastmlp.summary import summary_lines


def _optimizer_text(class_name, hyperparameters):
    inner = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v!r}"
                      for k, v in sorted(hyperparameters.items()))
    return f"{class_name}({inner})"


def _training_text(training):
    if training is None:
        return "none recorded (a saved model, not a fit checkpoint)"
    text = (f"checkpoint after epoch {training['epochs_completed']} of {training['epochs']} "
            f"(batch size {training['batch_size']}, shuffle {'on' if training['shuffle'] else 'off'}, "
            f"{training['n_samples']} rows")
    if "ranks" in training:
        text += f", {len(training['ranks'])} MPI ranks"
    callbacks = [entry["class"] for entry in training.get("callbacks", [])]
    if callbacks:
        text += f", callbacks {', '.join(callbacks)}"
    return text + ")"


def describe(path):
    """The lines ``fastmlp info`` prints for the model file at ``path``.

    Raises
    ------
    FormatError
        When the file is not one :func:`fastmlp.load` reads.
    OSError
        When it cannot be read.
    """
    path = io.check_path(path)
    if safetensors_io.sniff(path):
        contents = safetensors_io.read(path)
        spec, _ = safetensors_io.model_spec(path, contents)
        meta = contents.metadata
        optimizer = f"{spec.optimizer_class.__name__} (defaults)"
        if "optimizer" in meta:
            _, _, entry = safetensors_io.check_optimizer_metadata(io.Checker(path),
                                                                     meta["optimizer"])
            optimizer = _optimizer_text(entry["class"], entry["hyperparameters"])
            if "step_count" in entry:
                optimizer += (f", step count {entry['step_count']} when exported (its state is "
                              "not in the file: a loaded model starts it afresh)")
        version = meta.get("format_version", "none (metadata not written by fastmlp)")
        lines = [f"file: {path}",
                 f"format: safetensors, fastmlp metadata version {version}"
                 + (f", written by fastmlp {meta['fastmlp_version']}"
                    if "fastmlp_version" in meta else ""),
                 f"dtype: {spec.dtype}",
                 f"loss: {spec.loss}",
                 f"optimizer: {optimizer}",
                 "training: not recorded (a safetensors file holds weights only)"]
        known = {"format_version", "fastmlp_version", "architecture", "loss", "dtype", "seed",
                 "optimizer"}
        lines += [f"metadata {key}: {meta[key]}" for key in sorted(set(meta) - known)]
    else:
        contents = io.read(path)
        spec = io.model_spec(path, contents)
        header = contents.header
        opt = header["optimizer"]
        lines = [f"file: {path}",
                 f"format: fastmlp version {header['format_version']}, written by fastmlp "
                 f"{header['fastmlp_version']}",
                 f"dtype: {spec.dtype}",
                 f"loss: {spec.loss}",
                 f"optimizer: {_optimizer_text(opt['class'], opt['hyperparameters'])}, "
                 f"step count {opt['step_count']}",
                 f"training: {_training_text(header['training'])}"]
    lines.append(f"seed: {spec.seed}")
    # The summary needs the architecture only: the weights are not copied in.
    return lines + [""] + summary_lines(model_from_spec(path, spec))
