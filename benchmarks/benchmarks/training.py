"""Whole-network benchmarks on the comparison harness's shapes: one step, one epoch,
prediction, and derived figures (samples/s, fraction of the matrix-product roofline,
workspace bytes)."""

import timeit

import numpy as np

from .common import NETWORKS, network, step_flops, use_threads

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
        seconds = min(timeit.repeat(self.time_epoch, number=1, repeat=3))
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
            roof = min(timeit.repeat(products, number=1, repeat=3))
        return roof / min(timeit.repeat(self.time_epoch, number=1, repeat=3))

    track_roofline_fraction.unit = "fraction"

    def track_gflops(self, name, threads):
        sizes, batch = NETWORKS[name]
        seconds = min(timeit.repeat(self.time_epoch, number=1, repeat=3))
        return step_flops(sizes, batch) * (len(self.X) // batch) / seconds / 1e9

    track_gflops.unit = "GFLOP/s"

    def track_workspace_bytes(self, name, threads):
        return self.model._train_workspace.nbytes

    track_workspace_bytes.unit = "bytes"


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
        return len(self.X) / min(timeit.repeat(self.time_predict, number=1, repeat=3))

    track_samples_per_second.unit = "samples/s"


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
