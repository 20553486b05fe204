"""One class per kernel.  ``setup`` builds fixed-seed data and calls the kernel once, so
compilation is never timed."""

import numpy as np

import fastmlp.losses
from fastmlp.kernels import activations, blas, dense, dropout, layer_norm, losses, optim, schedules

from .common import DTYPES, fastest, use_threads

WIDTHS = {"64x128": (64, 128), "784x256": (784, 256), "1024x2048": (1024, 2048)}


def _dense_arrays(batch, widths, dtype, pieces=1):
    n_in, n_out = WIDTHS[widths]
    rng = np.random.default_rng(0)
    dtype = DTYPES[dtype]
    x = rng.normal(size=(batch, n_in)).astype(dtype)
    W = (rng.normal(size=(n_in, pieces * n_out)) / np.sqrt(n_in)).astype(dtype)
    b = np.zeros(pieces * n_out, dtype)
    return x, W, b, np.empty((batch, n_out), dtype)


class DenseForward:
    """Fused ``f(x @ W + b)`` per activation."""

    # Every parameter grid point costs asv a fresh interpreter (~0.8 s here): the grids
    # cover each axis once rather than their full product.
    params = ([512], ["784x256"],
              [name for name, (code, _, _) in activations.ACTIVATIONS.items()
               if code < activations.FIRST_SMOOTH],  # gelu, silu: SmoothDense
              ["float32", "float64"], [1, 2])
    param_names = ["batch", "widths", "activation", "dtype", "threads"]

    def setup(self, batch, widths, activation, dtype, threads):
        use_threads(threads)
        self.x, self.W, self.b, self.out = _dense_arrays(batch, widths, dtype)
        code, _, default = activations.ACTIVATIONS[activation]
        self.args = (code, self.out.dtype.type(default), self.out, threads)
        self.time_dense_forward(batch, widths, activation, dtype, threads)

    def time_dense_forward(self, *params):
        dense.dense_forward(self.x, self.W, self.b, *self.args)


class SmoothDense:
    """gelu and silu layers: the fused forward that also caches ``z``, and the backward
    (``f'`` from ``z``, then the linear part).  Compare with ``DenseForward`` (relu, same
    shapes) and ``DenseBackward``."""

    params = ([512], ["784x256"], ["gelu", "silu"], ["float32", "float64"], [1, 2])
    param_names = ["batch", "widths", "activation", "dtype", "threads"]

    def setup(self, batch, widths, activation, dtype, threads):
        use_threads(threads)
        self.x, self.W, self.b, self.out = _dense_arrays(batch, widths, dtype)
        self.pre = np.empty_like(self.out)
        self.code = activations.ACTIVATIONS[activation][0]
        self.delta = np.ones_like(self.out)
        self.grads = (np.empty_like(self.W), np.empty_like(self.b), np.empty_like(self.x))
        self.threads = threads
        self.time_forward()
        self.time_backward()

    def time_forward(self, *params):
        dense.dense_smooth_forward(self.x, self.W, self.b, self.code, self.out, self.pre,
                                   self.threads)

    def time_backward(self, *params):
        activations.smooth_activation_grad(self.pre, self.delta, self.code, self.threads)
        dense.dense_backward(self.x, self.W, self.out, activations.IDENTITY, self.out.dtype.type(0),
                             self.delta, *self.grads, True, self.threads)


class DenseBackward:
    """dZ (ReLU derivative fused), dW, db and dX of one dense layer."""

    params = ([32, 512], ["784x256", "1024x2048"], ["float32"], [1, 2])
    param_names = ["batch", "widths", "dtype", "threads"]

    def setup(self, batch, widths, dtype, threads):
        use_threads(threads)
        self.x, self.W, self.b, self.a = _dense_arrays(batch, widths, dtype)
        dense.dense_forward(self.x, self.W, self.b, activations.RELU, self.a.dtype.type(0), self.a, threads)
        self.delta = np.ones_like(self.a)
        self.grads = (np.empty_like(self.W), np.empty_like(self.b), np.empty_like(self.x))
        self.threads = threads
        self.time_dense_backward(batch, widths, dtype, threads)

    def time_dense_backward(self, *params):
        dense.dense_backward(self.x, self.W, self.a, activations.RELU, self.a.dtype.type(0), self.delta,
                             *self.grads, True, self.threads)


class Maxout:
    """Maxout forward and backward (3 pieces)."""

    params = ([512], ["784x256"], ["float32", "float64"], [1, 2])
    param_names = ["batch", "widths", "dtype", "threads"]

    def setup(self, batch, widths, dtype, threads):
        use_threads(threads)
        self.x, self.W, self.b, self.out = _dense_arrays(batch, widths, dtype, pieces=3)
        self.z = np.empty((batch, self.W.shape[1]), self.out.dtype)
        self.winner = np.empty(self.out.shape, np.int32)
        self.delta = np.ones_like(self.out)
        self.grads = (np.empty_like(self.W), np.empty_like(self.b), np.empty_like(self.x))
        self.threads = threads
        self.time_maxout_forward()
        self.time_maxout_backward()

    def time_maxout_forward(self, *params):
        dense.maxout_forward(self.x, self.W, self.b, 3, self.z, self.out, self.winner, self.threads)

    def time_maxout_backward(self, *params):
        dense.maxout_backward(self.x, self.W, self.winner, 3, self.delta, self.z, *self.grads, True,
                              self.threads)


class Dropout:
    """Dropout: the mask hashed and applied in one pass, and its backward multiplication.
    Compare with ``DenseForward`` on the same shape (the layer it follows)."""

    params = ([512], ["784x256"], ["float32", "float64"], [1, 2])
    param_names = ["batch", "widths", "dtype", "threads"]

    def setup(self, batch, widths, dtype, threads):
        use_threads(threads)
        _, _, _, self.out = _dense_arrays(batch, widths, dtype)
        self.x = np.random.default_rng(1).normal(size=self.out.shape).astype(self.out.dtype)
        self.mask = np.empty_like(self.x)
        self.grad_x = np.empty_like(self.x)
        self.args = (int(np.ceil(0.5 * 2.0 ** 53)), self.x.dtype.type(2.0), 0, 1, 0, 1)
        self.threads = threads
        self.time_dropout_forward()
        self.time_dropout_backward()

    def time_dropout_forward(self, *params):
        dropout.dropout_forward(self.x, *self.args, self.mask, self.out, self.threads)

    def time_dropout_backward(self, *params):
        dropout.dropout_backward(self.mask, self.x, self.grad_x)


class LayerNorm:
    """Layer normalisation forward (statistics, xhat, affine) and backward (gain, bias and
    input gradients)."""

    params = ([512], ["784x256"], ["float32", "float64"], [1, 2])
    param_names = ["batch", "widths", "dtype", "threads"]

    def setup(self, batch, widths, dtype, threads):
        use_threads(threads)
        _, _, _, self.out = _dense_arrays(batch, widths, dtype)
        rng = np.random.default_rng(1)
        dt = self.out.dtype
        self.x = rng.normal(size=self.out.shape).astype(dt)
        n = self.x.shape[1]
        self.gain, self.bias = np.ones(n, dt), np.zeros(n, dt)
        self.xhat, self.rstd = np.empty_like(self.x), np.empty(self.x.shape[0], dt)
        self.delta = rng.normal(size=self.x.shape).astype(dt)
        self.grads = (np.empty(n, dt), np.empty(n, dt), np.empty_like(self.x))
        self.eps = dt.type(1e-5)
        self.threads = threads
        self.time_layer_norm_forward()
        self.time_layer_norm_backward()

    def time_layer_norm_forward(self, *params):
        layer_norm.layer_norm_forward(self.x, self.gain, self.bias, self.eps, self.xhat, self.rstd,
                                      self.out, self.threads)

    def time_layer_norm_backward(self, *params):
        layer_norm.layer_norm_backward(self.xhat, self.rstd, self.gain, self.delta, *self.grads,
                                       True, self.threads)


class Loss:
    """Loss value and gradient with respect to the scores, in one pass."""

    params = (list(losses.LOSSES) + ["softmax_cross_entropy(label_smoothing=0.1)"], [4096],
              [10, 1000], ["float32"])
    param_names = ["loss", "batch", "n_outputs", "dtype"]

    def setup(self, loss, batch, n_outputs, dtype):
        rng = np.random.default_rng(0)
        dtype = DTYPES[dtype]
        self.scores = rng.normal(size=(batch, n_outputs)).astype(dtype)
        self.labels = rng.integers(0, n_outputs, size=batch).astype(np.int64)
        self.targets = rng.integers(0, 2, size=(batch, n_outputs)).astype(dtype)
        self.grad = np.empty_like(self.scores)
        self.row_loss = np.empty(batch)
        loss_object = (fastmlp.losses.SoftmaxCrossEntropy(label_smoothing=0.1) if "(" in loss
                       else fastmlp.losses.get(loss))
        self.code = loss_object.code
        self.loss_params = loss_object.kernel_params()
        self.time_loss_and_grad()

    def time_loss_and_grad(self, *params):
        losses.loss_and_grad(self.code, self.scores, self.labels, self.targets, self.grad, self.row_loss, 1,
                             self.loss_params)


class WeightedLoss:
    """Sample weights applied after the loss: each row's gradient scaled, the loss re-summed."""

    params = ([4096], [10, 1000], ["float32"])
    param_names = ["batch", "n_outputs", "dtype"]

    def setup(self, batch, n_outputs, dtype):
        rng = np.random.default_rng(0)
        dtype = DTYPES[dtype]
        self.grad = rng.normal(size=(batch, n_outputs)).astype(dtype)
        self.weights = rng.uniform(0, 2, size=batch).astype(dtype)
        self.row_loss = rng.uniform(0, 3, size=batch)
        self.time_weight_rows()

    def time_weight_rows(self, *params):
        losses.weight_rows(losses.SOFTMAX_CROSS_ENTROPY, self.weights, self.grad, self.row_loss)


class Schedule:
    """One learning rate per call: what a schedule costs at each epoch boundary."""

    params = (["step", "exponential", "cosine", "plateau"],)
    param_names = ["schedule"]

    def setup(self, schedule):
        calls = {
            "step": lambda: schedules.step_decay_lr(0.1, 17, 5, 0.5),
            "exponential": lambda: schedules.exponential_decay_lr(0.1, 17, 0.95),
            "cosine": lambda: schedules.cosine_annealing_lr(0.1, 0.0, 17, 100),
            "plateau": lambda: schedules.plateau_update(0.5, 0.1, 0.4, 2, 0, True, 0.1, 5, 1e-4, 0.0, 0),
        }
        self.call = calls[schedule]
        self.call()

    def time_rate(self, schedule):
        self.call()


class SGDUpdate:
    """In-place SGD step over the flat parameter vector."""

    params = ([10_000, 6_300_000], ["plain", "momentum", "nesterov"], ["float32"], [1, 2])
    param_names = ["n_params", "variant", "dtype", "threads"]

    def setup(self, n_params, variant, dtype, threads):
        use_threads(threads)
        dtype = DTYPES[dtype]
        rng = np.random.default_rng(0)
        self.params_ = rng.normal(size=n_params).astype(dtype)
        self.grads = rng.normal(size=n_params).astype(dtype) * 1e-6
        self.velocity = np.zeros(n_params, dtype)
        momentum = 0.0 if variant == "plain" else 0.9
        self.args = (n_params // 2, dtype(1e-6), dtype(momentum), variant == "nesterov", dtype(1e-4), threads)
        self.time_sgd_update()

    def time_sgd_update(self, *params):
        optim.sgd_update(self.params_, self.grads, self.velocity, *self.args)


class ClipGradients:
    """Gradient clipping over the flat gradient vector (the norm summed in float64, then the
    scaling and/or the clamp).  Compare with ``SGDUpdate`` at the same size."""

    params = ([10_000, 6_300_000], ["norm", "value", "norm+value"], ["float32"])
    param_names = ["n_params", "variant", "dtype"]

    def setup(self, n_params, variant, dtype):
        rng = np.random.default_rng(0)
        self.grads = rng.normal(size=n_params).astype(DTYPES[dtype])
        # Thresholds that scale / clamp at every call (the worst case).
        self.max_norm = 1e-3 if "norm" in variant else 0.0
        self.max_value = 1e-4 if "value" in variant else 0.0
        self.time_clip_gradients()

    def time_clip_gradients(self, *params):
        optim.clip_gradients(self.grads, self.max_norm, self.max_value)


class MatMul:
    """The product kernel alone, against numpy's ``@`` (both single-threaded BLAS at 1 thread)."""

    params = (["32x784x256", "512x1024x2048"], ["float32"], [1, 2])
    param_names = ["mkn", "dtype", "threads"]

    def setup(self, mkn, dtype, threads):
        use_threads(threads)
        m, k, n = map(int, mkn.split("x"))
        rng = np.random.default_rng(0)
        self.a = rng.normal(size=(m, k)).astype(dtype)
        self.b = rng.normal(size=(k, n)).astype(dtype)
        self.c = np.empty((m, n), dtype)
        self.threads = threads
        self.time_matmul()

    def time_matmul(self, *params):
        blas.matmul(self.a, False, self.b, False, self.c, self.threads)

    def track_gflops(self, mkn, dtype, threads):
        m, k, n = map(int, mkn.split("x"))
        seconds = fastest(self.time_matmul, number=5)
        return 2 * m * k * n / seconds / 1e9

    track_gflops.unit = "GFLOP/s"
