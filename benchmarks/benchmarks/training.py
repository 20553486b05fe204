"""Whole-network benchmarks on the comparison harness's shapes: one step, one epoch,
prediction, and derived figures (samples/s, fraction of the matrix-product roofline,
workspace bytes)."""

import numpy as np

import fastmlp
from fastmlp import SGD, Sequential

from .common import NETWORKS, fastest, network, step_flops, use_threads

NAMES = list(NETWORKS)


class TrainStep:
    """``Sequential.train_step`` on one batch (validation and the Python call included)."""

    params = (NAMES, [1, 2])
    param_names = ["network", "threads"]

    def setup(self, name, threads):
        use_threads(threads)
        self.model, X, y, batch = network(name, n_batches=1)
        self.xb, self.yb = X[:batch], y[:batch]
        self.time_train_step(name, threads)

    def time_train_step(self, *params):
        self.model.train_step(self.xb, self.yb)


class TrainEpoch:
    """``fit`` for one epoch: the minibatch loop compiled whole."""

    params = (NAMES, [1, 2])
    param_names = ["network", "threads"]
    timeout = 300

    def setup(self, name, threads):
        use_threads(threads)
        self.model, self.X, self.y, self.batch = network(name, n_batches=8)
        self.time_epoch(name, threads)

    def time_epoch(self, *params):
        self.model.fit(self.X, self.y, epochs=1, batch_size=self.batch, shuffle=False)

    def track_samples_per_second(self, name, threads):
        seconds = fastest(self.time_epoch)
        return len(self.X) / seconds

    track_samples_per_second.unit = "samples/s"

    def track_roofline_fraction(self, name, threads):
        """Time of the epoch's matrix products alone (numpy, same thread count) over the
        time of the whole epoch: 1.0 would mean nothing but the products costs time."""
        import threadpoolctl

        sizes, batch = NETWORKS[name]
        Ws = [np.ones((a, b), self.X.dtype) * 0.01 for a, b in zip(sizes[:-1], sizes[1:])]
        acts = [np.ones((batch, s), self.X.dtype) for s in sizes]
        grads_W = [np.empty_like(W) for W in Ws]

        def products():
            for _ in range(len(self.X) // batch):
                for k, W in enumerate(Ws):
                    np.matmul(acts[k], W, out=acts[k + 1])
                for k in range(len(Ws) - 1, -1, -1):
                    np.matmul(acts[k].T, acts[k + 1], out=grads_W[k])
                    if k:
                        np.matmul(acts[k + 1], Ws[k].T, out=acts[k])

        with threadpoolctl.threadpool_limits(threads, user_api="blas"):
            products()
            roof = fastest(products)
        return roof / fastest(self.time_epoch)

    track_roofline_fraction.unit = "fraction"

    def track_gflops(self, name, threads):
        sizes, batch = NETWORKS[name]
        seconds = fastest(self.time_epoch)
        return step_flops(sizes, batch) * (len(self.X) // batch) / seconds / 1e9

    track_gflops.unit = "GFLOP/s"

    def track_workspace_bytes(self, name, threads):
        return self.model._train_workspace.nbytes

    track_workspace_bytes.unit = "bytes"


class Regularized:
    """One epoch of ``fit`` with a ``Dropout(0.5)``, a ``LayerNorm()`` or both after each
    hidden layer: their speed cost against ``plain`` (the same network without them)."""

    params = (["784-256-256-10/b128"], ["plain", "dropout", "layer_norm", "both"], [1])
    param_names = ["network", "layers", "threads"]

    def setup(self, name, kind, threads):
        from fastmlp import Dropout, LayerNorm

        use_threads(threads)
        plain, self.X, self.y, self.batch = network(name, n_batches=8)
        layers = []
        for layer in plain.layers:
            layers.append(layer.unbuilt_copy())
            if layer is not plain.layers[-1]:
                if kind in ("layer_norm", "both"):
                    layers.append(LayerNorm())
                if kind in ("dropout", "both"):
                    layers.append(Dropout(0.5))
        self.model = Sequential(layers, optimizer=SGD(lr=0.01), seed=0)
        self.time_epoch(name, kind, threads)

    def time_epoch(self, *params):
        self.model.fit(self.X, self.y, epochs=1, batch_size=self.batch, shuffle=False)


class FitOptions:
    """One epoch of ``fit`` with what the training loop adds on top of the steps: the
    progress bar (the epoch runs in slices between redraws), sample weights, a schedule
    and early stopping with validation.  Compare with ``TrainEpoch`` on the same network."""

    params = (["64-128-10/b32"], ["plain", "progress bar", "sample weights", "callbacks"], [1])
    param_names = ["network", "option", "threads"]

    def setup(self, name, option, threads):
        import io
        from contextlib import redirect_stdout

        from fastmlp.callbacks import CosineAnnealing, EarlyStopping

        use_threads(threads)
        self.model, self.X, self.y, self.batch = network(name, n_batches=64)
        self.kwargs = {"progress bar": {"verbose": 1},
                       "sample weights": {"sample_weight": np.linspace(0.5, 1.5, len(self.X))},
                       "callbacks": {"validation_data": (self.X[:256], self.y[:256]),
                                     "callbacks": [CosineAnnealing(10), EarlyStopping(patience=5)]},
                       }.get(option, {})
        self.sink = io.StringIO()
        self.redirect = redirect_stdout
        self.time_epoch(name, option, threads)

    def time_epoch(self, *params):
        with self.redirect(self.sink):
            self.model.fit(self.X, self.y, epochs=1, batch_size=self.batch, shuffle=False,
                           **self.kwargs)
        self.sink.seek(0)
        self.sink.truncate()


class TrainOptions:
    """One epoch of ``fit`` with gelu or silu hidden layers, a loss with parameters, or
    gradient clipping, against the same network plain (relu, softmax cross-entropy, SGD):
    what each costs per step."""

    params = (["64-128-10/b32"], ["plain", "gelu", "silu", "label smoothing", "clip_norm"], [1])
    param_names = ["network", "option", "threads"]

    def setup(self, name, option, threads):
        from fastmlp import SGD, Dense, Sequential, SoftmaxCrossEntropy

        use_threads(threads)
        base, self.X, self.y, self.batch = network(name, n_batches=64)
        widths = [(layer.n_in, layer.n_out) for layer in base.layers]
        activation = option if option in ("gelu", "silu") else "relu"
        layers = [Dense(a, b, activation=activation) for a, b in widths[:-1]]
        layers.append(Dense(*widths[-1]))
        loss = SoftmaxCrossEntropy(label_smoothing=0.1 if option == "label smoothing" else 0.0)
        optimizer = SGD(lr=0.01, clip_norm=1.0 if option == "clip_norm" else None)
        self.model = Sequential(layers, loss=loss, optimizer=optimizer, seed=0, dtype=base.dtype)
        self.time_epoch(name, option, threads)

    def time_epoch(self, *params):
        self.model.fit(self.X, self.y, epochs=1, batch_size=self.batch, shuffle=False, verbose=0)


class Predict:
    """``predict`` (class labels) on 4096 rows."""

    params = (NAMES, [1, 2])
    param_names = ["network", "threads"]

    def setup(self, name, threads):
        use_threads(threads)
        self.model, X, _, _ = network(name, n_batches=1)
        self.X = np.random.default_rng(1).normal(size=(4096, X.shape[1])).astype(X.dtype)
        self.time_predict(name, threads)

    def time_predict(self, *params):
        self.model.predict(self.X)

    def track_samples_per_second(self, name, threads):
        return len(self.X) / fastest(self.time_predict)

    track_samples_per_second.unit = "samples/s"


class Reproducible:
    """``TrainEpoch`` and ``Predict`` in reproducible mode (``fastmlp.reproducible()``), on
    the two shapes where it costs most: set beside those two, the mode's price.  An epoch
    is 4 batches here (``TrainEpoch``: 8) and predict takes 256 rows (``Predict``: 4096),
    since the mode predicts one row at a time: compare per sample
    (``track_predict_samples_per_second``)."""

    params = (["784-256-256-10/b128", "1024-2048-2048-10/b512"], [1, 2])
    param_names = ["network", "threads"]
    timeout = 300

    def setup(self, name, threads):
        use_threads(threads)
        self.model, self.X, self.y, self.batch = network(name, n_batches=4)
        self.rows = np.random.default_rng(1).normal(size=(256, self.X.shape[1])).astype(self.X.dtype)
        self.time_epoch(name, threads)
        self.time_predict(name, threads)

    def time_epoch(self, *params):
        with fastmlp.reproducible():
            self.model.fit(self.X, self.y, epochs=1, batch_size=self.batch, shuffle=False)

    def time_predict(self, *params):
        with fastmlp.reproducible():
            self.model.predict(self.rows)

    def track_predict_samples_per_second(self, name, threads):
        return len(self.rows) / fastest(self.time_predict)

    track_predict_samples_per_second.unit = "samples/s"


class PredictLatency:
    """One ``predict_proba``/``predict``/``decision_function`` call on 1 or 32 rows, input
    checks included: a model serving one request at a time.  The harness
    (benchmarks/compare.py) sets the same calls beside PyTorch's."""

    params = ([name for name in NAMES if not name.endswith("/b128")], [1, 32],
              ["predict_proba", "predict", "decision_function"])
    param_names = ["network", "rows", "method"]

    def setup(self, name, rows, method):
        use_threads(1)
        model, X, _, _ = network(name, n_batches=1)
        self.call = getattr(model, method)
        self.x = np.random.default_rng(2).normal(size=(rows, X.shape[1])).astype(X.dtype)
        self.time_call(name, rows, method)

    def time_call(self, *params):
        self.call(self.x)
