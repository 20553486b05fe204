"""The ``fastmlp`` command line: ``train``, ``predict``, ``evaluate``, ``demo``, ``bench``,
``compile``, ``info``, ``export``.

Every expected failure (a bad file, a missing column, bad hyperparameters, a model file
that does not load) is printed as one ``fastmlp: error: ...`` line with exit status 1;
usage errors exit with 2, as argparse does.
"""

import argparse
import contextlib
import os
import sys
import time

from fastmlp.kernels.activations import ACTIVATIONS
from fastmlp.kernels.losses import LOSSES


class CommandError(Exception):
    """A failure to report as one line, without a traceback."""


def _data_arguments(parser):
    parser.add_argument("data", metavar="DATA",
                        help="file.csv (header row; label column chosen by --label, default the "
                             "last), file.npz (arrays X and y), or X.npy:y.npy")
    parser.add_argument("--label", metavar="NAME|INDEX", default=None,
                        help="CSV label column, by header name or 0-based position (default: last)")


_REPRODUCIBLE_HELP = ("bitwise the same results on any thread count, and each row's prediction "
                      "whatever rows come with it; slower (fastmlp.reproducible)")


def _threads_argument(parser, reproducible_help=None, default=None, default_help="all cores"):
    # With ``reproducible_help``, also a ``--reproducible`` flag that this help describes.
    parser.add_argument("--threads", type=int, default=default,
                        help=f"threads for training and prediction (default: {default_help})")
    if reproducible_help:
        parser.add_argument("--reproducible", action="store_true", help=reproducible_help)


def build_parser():
    parser = argparse.ArgumentParser(prog="fastmlp", description="Fast JIT-compiled MLPs for CPUs.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser("train", help="train a model on a data file and save it",
                                description="Train an MLP on DATA; save it with --out.")
    _data_arguments(train)
    train.add_argument("--hidden", default="100", metavar="N,N,...",
                       help="hidden layer widths, comma-separated; '' for none (default: 100)")
    train.add_argument("--activation", default="relu", choices=list(ACTIVATIONS) + ["maxout"],
                       help="hidden-layer activation (default: relu)")
    train.add_argument("--layer-norm", action="store_true",
                       help="a LayerNorm after each hidden layer's activation")
    train.add_argument("--dropout", type=float, default=0.0, metavar="RATE",
                       help="a Dropout(RATE) after each hidden layer (after its layer norm), "
                            "RATE in [0, 1) (default: 0, none)")
    train.add_argument("--loss", default="softmax_cross_entropy", choices=list(LOSSES),
                       help="loss (default: softmax_cross_entropy); huber and l1 are robust "
                            "regression losses")
    train.add_argument("--label-smoothing", type=float, default=None, metavar="E",
                       help="softmax_cross_entropy's label smoothing, in [0, 1) (default: 0)")
    train.add_argument("--huber-delta", type=float, default=None, metavar="DELTA",
                       help="where huber turns from quadratic to linear, > 0 (default: 1)")
    train.add_argument("--clip-norm", type=float, default=None, metavar="MAX_NORM",
                       help="clip the gradient's global L2 norm to MAX_NORM before each update "
                            "(default: no clipping)")
    train.add_argument("--optimizer", default="sgd", choices=["sgd", "adam", "adamw"],
                       help="optimizer (default: sgd)")
    train.add_argument("--lr", type=float, default=None,
                       help="learning rate (default: 0.01 for sgd, 0.001 for adam/adamw)")
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    train.add_argument("--epochs", type=int, default=10, help="epochs (default: 10)")
    train.add_argument("--batch-size", type=int, default=32, help="minibatch size (default: 32)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--val-split", type=float, default=0.0, metavar="FRACTION",
                       help="hold out this fraction of DATA for validation (default: 0)")
    train.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                       help="stop after PATIENCE epochs without a better validation loss and keep "
                            "the best epoch's weights (needs --val-split)")
    train.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine", "plateau"],
                       help="cosine: anneal the rate to 0 over --epochs; plateau: divide it by 10 "
                            "after 5 epochs without improvement of the validation loss (training "
                            "loss without --val-split) (default: constant)")
    train.add_argument("--plot", metavar="FILE.png", default=None,
                       help="save the loss and accuracy curves here (needs matplotlib)")
    train.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    train.add_argument("--out", metavar="MODEL", default=None, help="save the trained model here")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--mpi", action="store_true",
                       help="data-parallel over MPI: run under mpiexec; each rank trains on its "
                            "slice of DATA's rows, rank 0 prints and saves (needs fastmlp[mpi])")
    _threads_argument(train, reproducible_help=_REPRODUCIBLE_HELP)

    predict = commands.add_parser("predict", help="predict with a saved model, one line per sample",
                                  description="Predict DATA with MODEL: one prediction per line. "
                                              "A label column in DATA (as used for train) is ignored.")
    predict.add_argument("model", metavar="MODEL")
    _data_arguments(predict)
    predict.add_argument("--proba", action="store_true", help="print probabilities instead of labels")
    predict.add_argument("--out", metavar="FILE", default=None, help="write here instead of stdout")
    _threads_argument(predict, reproducible_help=_REPRODUCIBLE_HELP)

    evaluate = commands.add_parser("evaluate", help="loss and accuracy (or R^2) of a saved model",
                                   description="Evaluate MODEL on the labelled DATA.")
    evaluate.add_argument("model", metavar="MODEL")
    _data_arguments(evaluate)
    _threads_argument(evaluate, reproducible_help=_REPRODUCIBLE_HELP)

    demo = commands.add_parser("demo", help="train on built-in data (spiral, digits) and report accuracy",
                               description="Train on the 3-class spiral and the shipped digits set; "
                                           "prints per-epoch progress and the final accuracy.")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    # One thread by default: the demo's layers are too small for a second to help, but its
    # validation pass would split a product over it, and compiling the kernels' parallel
    # build for that took 7 of a cold demo's 17 s (2 cores).
    _threads_argument(demo, default=1, default_help="1; the data are too small for more to help")

    bench = commands.add_parser("bench", help="fastmlp's training and prediction throughput",
                                description="Samples/s of fit and predict on the standard shapes "
                                            "(random data). benchmarks/compare.py in the source "
                                            "tree compares with PyTorch, JAX and scikit-learn.")
    bench.add_argument("--quick", action="store_true", help="less work per shape (noisier)")
    _threads_argument(bench)

    from fastmlp.precompile import BUILDS, DTYPES, FEATURES

    compile_ = commands.add_parser(
        "compile", help="compile the kernels ahead of time into numba's on-disk cache",
        description="Fill the kernel cache so that the first fit or predict of a new process "
                    "loads machine code instead of compiling it: for a Docker image's build "
                    "step, a CI cache keyed on the numba version and the CPU, or a cluster's "
                    "shared software stack. By default every dtype, layer kind and build.")
    compile_.add_argument("--dtype", nargs="+", choices=DTYPES, default=list(DTYPES),
                          help="float dtypes of the models to compile for (default: all)")
    compile_.add_argument("--features", nargs="+", choices=FEATURES, default=list(FEATURES),
                          help="dense: networks of Dense layers only; maxout, dropout, "
                               "layer_norm: with such a layer (default: all)")
    compile_.add_argument("--builds", nargs="+", choices=BUILDS, default=list(BUILDS),
                          help="serial: small layers or one thread; parallel: layers large "
                               "enough to split over threads (default: both)")
    _threads_argument(compile_, reproducible_help="with one thread, also compile the parallel "
                                                  "build, which one thread runs only in "
                                                  "reproducible mode")
    _info_and_export_parsers(commands)
    return parser


def _info_and_export_parsers(commands):
    from fastmlp.exporters import EXPORT_FORMATS

    info = commands.add_parser("info", help="a model file's metadata and layer summary",
                               description="Print MODEL's format, dtype, loss, optimizer and step "
                                           "count, training progress (checkpoints) and its layer "
                                           "table. MODEL is a fastmlp file or a safetensors "
                                           "file with fastmlp's metadata.")
    info.add_argument("model", metavar="MODEL")
    export = commands.add_parser("export", help="write a saved model in another format",
                                 description="Load MODEL (a file written by train --out or "
                                             "model.save) and write it to FILE in --format, as "
                                             "Sequential.export does: onnx, a standard ONNX "
                                             "graph (needs fastmlp[onnx]); safetensors, the "
                                             "weights with fastmlp's metadata.")
    export.add_argument("model", metavar="MODEL")
    export.add_argument("--format", required=True, choices=list(EXPORT_FORMATS),
                        help="the format to write")
    export.add_argument("--out", metavar="FILE", required=True, help="the file to write")
    for parser in (info, export):  # they run no kernel: no --threads
        parser.set_defaults(threads=None)


def _info(args):
    from fastmlp.fileinfo import describe

    try:
        lines = describe(args.model)
    except (OSError, ValueError) as exc:
        raise CommandError(f"{args.model}: {exc}") from None
    sys.stdout.write("\n".join(lines) + "\n")


def _version():
    from fastmlp import __version__

    return f"fastmlp {__version__}"


def _set_threads(n):
    if n is not None:
        from fastmlp.threads import set_num_threads

        try:
            set_num_threads(n)
        except ValueError as exc:
            raise CommandError(str(exc)) from None


def _load(path, label, n_features=None, need_labels=True):
    from fastmlp.datafiles import DataFileError, load_data

    try:
        X, y = load_data(path, label=label, n_features=n_features)
    except DataFileError as exc:
        raise CommandError(str(exc)) from None
    if need_labels and y is None:
        raise CommandError(f"{path}: no labels found (use --label, or X.npy:y.npy)")
    return X, y


def _mpi_world():
    try:
        from mpi4py import MPI
    except ImportError:
        raise CommandError("--mpi needs mpi4py: pip install 'fastmlp[mpi]'") from None
    return MPI.COMM_WORLD


def _loss(args):
    """The loss object ``--loss`` and its parameter flags describe."""
    from fastmlp import losses

    if args.label_smoothing is not None and args.loss != "softmax_cross_entropy":
        raise CommandError(f"--label-smoothing goes with --loss softmax_cross_entropy, not {args.loss}")
    if args.huber_delta is not None and args.loss != "huber":
        raise CommandError(f"--huber-delta goes with --loss huber, not {args.loss}")
    params = {}
    if args.label_smoothing is not None:
        params["label_smoothing"] = args.label_smoothing
    if args.huber_delta is not None:
        params["delta"] = args.huber_delta
    try:
        return losses.get(args.loss, params)
    except ValueError as exc:
        flag = "--label-smoothing" if "label_smoothing" in params else "--huber-delta"
        raise CommandError(f"{flag}: {exc}") from None


def _train(args):
    import numpy as np

    from fastmlp import SGD, Adam, AdamW, Dense, Dropout, LayerNorm, Maxout, Sequential

    try:
        Dropout(args.dropout)  # refused before any data is read
    except ValueError as exc:
        raise CommandError(f"--dropout: {exc}") from None
    loss = _loss(args)  # the flags are checked before the data is read
    X, y = _load(args.data, args.label)
    comm = _mpi_world() if args.mpi else None
    rank = comm.Get_rank() if comm is not None else 0
    try:
        hidden = [int(w) for w in args.hidden.split(",") if w.strip()]
    except ValueError:
        raise CommandError(f"--hidden must be comma-separated integers, got {args.hidden!r}") from None
    if args.loss in ("softmax_cross_entropy", "multiclass_hinge"):
        if (y < 0).any() or (y != np.round(y)).any():
            raise CommandError(f"{args.data}: labels must be class indices 0, 1, 2, ... for {args.loss}")
        n_out = int(y.max()) + 1
    else:
        n_out = 1 if y.ndim == 1 else y.shape[1]
    if not 0.0 <= args.val_split < 1.0:
        raise CommandError(f"--val-split must be in [0, 1), got {args.val_split}")
    widths = [X.shape[1]] + hidden
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers.append(Maxout(a, b) if args.activation == "maxout" else Dense(a, b, activation=args.activation))
        # Normalise, then drop: dropping before the layer norm would let it rescale the
        # survivors, and the next layer would see masks it cannot tell apart from the data.
        if args.layer_norm:
            layers.append(LayerNorm())
        if args.dropout > 0:
            layers.append(Dropout(args.dropout))
    layers.append(Dense(widths[-1], n_out))
    try:
        if args.optimizer == "sgd":
            optimizer = SGD(lr=0.01 if args.lr is None else args.lr, momentum=args.momentum,
                            clip_norm=args.clip_norm)
        else:
            optimizer = (Adam if args.optimizer == "adam" else AdamW)(
                lr=0.001 if args.lr is None else args.lr, clip_norm=args.clip_norm)
    except ValueError as exc:
        raise CommandError(f"--clip-norm: {exc}" if args.clip_norm is not None
                           and "clip_norm" in str(exc) else str(exc)) from None
    model = Sequential(layers, loss=loss, optimizer=optimizer, seed=args.seed,
                       dtype=getattr(np, args.dtype))
    validation = None
    if args.val_split > 0 and isinstance(X, np.memmap):
        # A memory-mapped .npy: the last rows as given are held out (views, no copy), as
        # fit's validation_split does; a random hold-out would copy the whole file.
        n_val = max(1, int(round(len(X) * args.val_split)))
        if n_val >= len(X):
            raise CommandError("--val-split leaves no training data")
        validation = (X[len(X) - n_val:], y[len(X) - n_val:])
        X, y = X[:len(X) - n_val], y[:len(X) - n_val]
    elif args.val_split > 0:
        order = np.random.default_rng(args.seed).permutation(len(X))
        n_val = max(1, int(round(len(X) * args.val_split)))
        if n_val >= len(X):
            raise CommandError("--val-split leaves no training data")
        val, keep = order[:n_val], order[n_val:]
        validation = (X[val], y[val])
        X, y = X[keep], y[keep]
    n_total = len(X)
    if comm is not None:
        # Every rank read the whole file (a .npy is only mapped: each rank then reads just
        # its slice); each keeps a contiguous slice of the rows (and of the validation
        # rows).  fit_distributed weighs the ranks' losses by their rows.
        size = comm.Get_size()
        rows = slice(rank * len(X) // size, (rank + 1) * len(X) // size)
        X, y = X[rows], y[rows]
        if validation is not None:
            v = slice(rank * len(validation[0]) // size, (rank + 1) * len(validation[0]) // size)
            validation = (validation[0][v], validation[1][v])
    callbacks = _callbacks(args, validation is not None)
    if args.plot:
        _check_plot_target(args.plot)
    start = time.perf_counter()
    history = model.fit(X, y, epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=validation, callbacks=callbacks,
                        verbose=0 if args.quiet else 1, comm=comm)
    seconds = time.perf_counter() - start
    if rank != 0:
        return
    ranks = f" on {comm.Get_size()} ranks" if comm is not None else ""
    result = model.evaluate(X, y)
    summary = " ".join(f"{k} {v:.4f}" for k, v in result.items())
    print(f"trained {n_total} samples x {len(history.epoch)} epochs{ranks} in {seconds:.1f} s; "
          f"training {summary}{' (rank 0 slice)' if ranks else ''}")
    for callback in callbacks:
        if getattr(callback, "restored_epoch", None) is not None:
            print(f"kept the weights of epoch {callback.restored_epoch} (best val_loss "
                  f"{callback.best:.4f})")
    if args.plot:
        history.plot(args.plot)
        print(f"curves saved to {args.plot}")
    if args.out:
        model.save(args.out)
        print(f"saved to {args.out}")


def _callbacks(args, has_validation):
    from fastmlp.callbacks import CosineAnnealing, EarlyStopping, ReduceLROnPlateau

    callbacks = []
    if args.early_stopping is not None:
        if not has_validation:
            raise CommandError("--early-stopping watches the validation loss: add --val-split")
        if args.early_stopping < 0:
            raise CommandError(f"--early-stopping must be >= 0, got {args.early_stopping}")
        callbacks.append(EarlyStopping(patience=args.early_stopping))
    if args.lr_schedule == "cosine":
        callbacks.append(CosineAnnealing(period=max(1, args.epochs)))
    elif args.lr_schedule == "plateau":
        callbacks.append(ReduceLROnPlateau(monitor="val_loss" if has_validation else "loss",
                                           patience=5))
    return callbacks


def _check_plot_target(path):
    import importlib.util
    import os

    if importlib.util.find_spec("matplotlib") is None:
        raise CommandError("--plot needs matplotlib: pip install matplotlib")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CommandError(f"--plot: directory {directory} does not exist")


def _load_model(path):
    import fastmlp

    try:
        return fastmlp.load(path)
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: {exc}") from None


def _predict(args):
    import numpy as np

    model = _load_model(args.model)
    X, _ = _load(args.data, args.label, n_features=model.n_features_in, need_labels=False)
    if args.proba and model.loss not in ("softmax_cross_entropy", "binary_cross_entropy"):
        raise CommandError(f"--proba needs a softmax_cross_entropy or binary_cross_entropy model; "
                           f"{args.model} was trained with {model.loss}, whose scores are not "
                           "probabilities")
    predictions = model.predict_proba(X) if args.proba else model.predict(X)
    lines = [" ".join(f"{v:.6g}" for v in np.atleast_1d(row)) if args.proba or row.ndim else str(row)
             for row in predictions]
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


def _evaluate(args):
    model = _load_model(args.model)
    X, y = _load(args.data, args.label, n_features=None)
    result = model.evaluate(X, y)
    if not model.is_classifier:
        result["r2"] = model.score(X, y)
    for key, value in result.items():
        print(f"{key} {value:.6f}")


def _export(args):
    model = _load_model(args.model)
    try:
        model.export(args.out, format=args.format)
    except (ImportError, OSError) as exc:
        raise CommandError(f"{args.out}: {exc}") from None
    print(f"exported {args.model} as {args.format} to {args.out}")


def _bench(args):
    from fastmlp.bench import run_bench

    run_bench(quick=args.quick)


def _compile(args):
    from fastmlp.precompile import precompile

    precompile(dtypes=args.dtype, features=args.features, builds=args.builds, verbose=True)


def _run(args):
    if args.command == "demo":
        from fastmlp.demo import run_demo

        run_demo(seed=args.seed)
    else:
        {"train": _train, "predict": _predict, "evaluate": _evaluate, "bench": _bench,
         "compile": _compile, "info": _info, "export": _export}[args.command](args)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from fastmlp.jitcache import compile_notices
    from fastmlp.sequential import DivergenceError
    from fastmlp.threads import reproducible

    mode = reproducible() if getattr(args, "reproducible", False) else contextlib.nullcontext()
    try:
        _set_threads(args.threads)
        # Any command may meet kernels not yet compiled on this machine: say so on stderr.
        with compile_notices(), mode:
            _run(args)
    except (CommandError, DivergenceError) as exc:
        print(f"fastmlp: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:  # fastmlp's input checks: clear messages already
        print(f"fastmlp: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (``fastmlp predict ... | head``): stop quietly, as cat does.
        # Point stdout at devnull so that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
