"""Plain-numpy twins of every kernel: obviously correct, slow, used as the oracle.

They are written independently of the kernels: derivatives come from the pre-activation
``z`` (the kernels read them off the output), losses from textbook formulas, and
everything is computed in float64.
"""

import numpy as np


def activation(z, name, param=None):
    if name == "identity":
        return z.copy()
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, z, param * z)
    if name == "elu":
        return np.where(z > 0, z, param * (np.exp(z) - 1.0))
    if name == "gelu":
        return z * normal_cdf(z)
    if name == "silu":
        return z / (1.0 + np.exp(-z))
    raise ValueError(name)


def normal_cdf(z):
    from scipy.special import ndtr
    return ndtr(z)


def activation_derivative(z, name, param=None):
    if name == "identity":
        return np.ones_like(z)
    if name == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        return s * (1.0 - s)
    if name == "tanh":
        return 1.0 / np.cosh(z) ** 2
    if name == "relu":
        return (z > 0).astype(float)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, param)
    if name == "elu":
        return np.where(z > 0, 1.0, param * np.exp(z))
    if name == "gelu":
        return normal_cdf(z) + z * np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    if name == "silu":
        s = 1.0 / (1.0 + np.exp(-z))
        return s * (1.0 + z * (1.0 - s))
    raise ValueError(name)


def dense_forward(x, W, b, name, param=None):
    """``a = f(x W + b)``."""
    return activation(x.astype(float) @ W.astype(float) + b, name, param)


def dense_backward(x, W, b, name, param, upstream):
    """Gradients ``(dW, db, dx)`` of ``sum(upstream * dense_forward(x, W, b))``."""
    x, W = x.astype(float), W.astype(float)
    z = x @ W + b
    dz = upstream * activation_derivative(z, name, param)
    return x.T @ dz, dz.sum(axis=0), dz @ W.T


def maxout_forward(x, W, b, pieces):
    """``(out, winner)``; piece k owns columns ``k*n_out:(k+1)*n_out``."""
    n_out = W.shape[1] // pieces
    z = (x.astype(float) @ W.astype(float) + b).reshape(len(x), pieces, n_out)
    return z.max(axis=1), z.argmax(axis=1)


def maxout_backward(x, W, b, pieces, upstream):
    x, W = x.astype(float), W.astype(float)
    n_out = W.shape[1] // pieces
    _, winner = maxout_forward(x, W, b, pieces)
    dz = np.zeros((len(x), pieces, n_out))
    rows, cols = np.meshgrid(np.arange(len(x)), np.arange(n_out), indexing="ij")
    dz[rows, winner, cols] = upstream
    dz = dz.reshape(len(x), pieces * n_out)
    return x.T @ dz, dz.sum(axis=0), dz @ W.T


def softmax_cross_entropy(s, y):
    s = s.astype(float)
    shifted = s - s.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(s)
    loss = -log_p[np.arange(n), y].mean()
    grad = np.exp(log_p)
    grad[np.arange(n), y] -= 1.0
    return loss, grad / n


def multiclass_hinge(s, y):
    s = s.astype(float)
    n = len(s)
    margins = s - s[np.arange(n), y][:, None] + 1.0
    margins[np.arange(n), y] = 0.0
    loss = np.maximum(margins, 0.0).sum() / n
    active = (margins > 0).astype(float)
    active[np.arange(n), y] = -active.sum(axis=1)
    return loss, active / n


def binary_cross_entropy(s, t):
    s, t = s.astype(float), t.astype(float)
    p = 0.5 * (1.0 + np.tanh(0.5 * s))  # the logistic function, without exp overflow
    # -t log p - (1-t) log(1-p), with log p = -log(1+exp(-s)) written via logaddexp
    loss = (t * np.logaddexp(0.0, -s) + (1.0 - t) * np.logaddexp(0.0, s)).mean()
    return loss, (p - t) / s.size


def mse(s, t):
    d = s.astype(float) - t.astype(float)
    return (d ** 2).mean(), 2.0 * d / d.size


def smoothed_cross_entropy(s, y, smoothing):
    """PyTorch's CrossEntropyLoss(label_smoothing=): cross-entropy against the target
    distribution ``(1 - e) one_hot(y) + e / C``."""
    s = s.astype(float)
    n, c = s.shape
    shifted = s - s.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    target = np.full((n, c), smoothing / c)
    target[np.arange(n), y] += 1.0 - smoothing
    loss = -(target * log_p).sum() / n
    return loss, (np.exp(log_p) - target) / n


def huber(s, t, delta=1.0):
    d = s.astype(float) - t.astype(float)
    quadratic = np.abs(d) <= delta
    loss = np.where(quadratic, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta))
    return loss.mean(), np.clip(d, -delta, delta) / d.size


def l1(s, t):
    d = s.astype(float) - t.astype(float)
    return np.abs(d).mean(), np.sign(d) / d.size


LOSSES = {
    "softmax_cross_entropy": softmax_cross_entropy,
    "multiclass_hinge": multiclass_hinge,
    "binary_cross_entropy": binary_cross_entropy,
    "mse": mse,
    "huber": huber,
    "l1": l1,
}


def sgd_update(params, grads, velocity, n_weights, lr, momentum, nesterov, weight_decay):
    """PyTorch's torch.optim.SGD rule (dampening 0), written out; returns new arrays."""
    g = grads.astype(float).copy()
    g[:n_weights] += weight_decay * params[:n_weights]
    if momentum:
        v = momentum * velocity + g
        step = g + momentum * v if nesterov else v
    else:
        v = velocity.copy()
        step = g
    return params - lr * step, v


def network_forward(layers, x):
    """``layers``: list of dicts with W, b, activation, param, pieces (or ``kind``
    ``"dropout"`` with ``keep`` and ``rate``, ``"layer_norm"`` with ``gain``, ``bias`` and
    ``eps``); returns all outputs."""
    outputs = []
    for layer in layers:
        kind = layer.get("kind", "dense")
        if kind == "dropout":
            x = dropout_forward(x, layer["keep"], layer["rate"])
        elif kind == "layer_norm":
            x = layer_norm_forward(x, layer["gain"], layer["bias"], layer["eps"])[0]
        elif layer["pieces"] > 1:
            x, _ = maxout_forward(x, layer["W"], layer["b"], layer["pieces"])
        else:
            x = dense_forward(x, layer["W"], layer["b"], layer["activation"], layer["param"])
        outputs.append(x)
    return outputs


def network_loss(layers, x, y, loss):
    return LOSSES[loss](network_forward(layers, x)[-1], y)[0]


def adam_update(params, grads, m, v, n_weights, lr, beta1, beta2, eps, weight_decay, decoupled, step):
    """torch.optim.Adam / AdamW (amsgrad=False, maximize=False) for one step; new arrays."""
    p = params.astype(float).copy()
    g = grads.astype(float).copy()
    if decoupled:
        p[:n_weights] *= 1 - lr * weight_decay
    else:
        g[:n_weights] += weight_decay * p[:n_weights]
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1 ** step)
    v_hat = v / (1 - beta2 ** step)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def weighted_loss(loss, s, y, w):
    """Sample-weighted loss ``sum_i w_i loss_i / n`` (``loss_i`` the loss of row ``i`` alone)
    and its gradient: row ``i`` of the unweighted mean's gradient times ``w_i``."""
    n = len(s)
    value = sum(w[i] * LOSSES[loss](s[i:i + 1], y[i:i + 1])[0] for i in range(n)) / n
    return value, LOSSES[loss](s, y)[1] * np.asarray(w, dtype=float)[:, None]


def step_decay_lr(base_lr, epochs_done, step_size, gamma):
    return base_lr * gamma ** (epochs_done // step_size)


def exponential_decay_lr(base_lr, epochs_done, gamma):
    return base_lr * gamma ** epochs_done


def cosine_annealing_lr(base_lr, min_lr, epochs_done, period):
    t = min(epochs_done, period)
    return min_lr + (base_lr - min_lr) * (1 + np.cos(np.pi * t / period)) / 2


class ReduceLROnPlateau:
    """torch.optim.lr_scheduler.ReduceLROnPlateau(threshold_mode="rel") for one learning rate,
    step for step as PyTorch 2.13 writes it."""

    def __init__(self, lr, mode="min", factor=0.1, patience=10, threshold=1e-4, cooldown=0, min_lr=0.0):
        self.lr, self.mode, self.factor, self.patience = lr, mode, factor, patience
        self.threshold, self.cooldown, self.min_lr, self.eps = threshold, cooldown, min_lr, 1e-8
        self.best = np.inf if mode == "min" else -np.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def _is_better(self, a, best):
        if self.mode == "min":
            return a < best * (1.0 - self.threshold)
        return a > best * (self.threshold + 1.0)

    def step(self, current):
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return self.lr


# ----------------------------------------------------------------------------- dropout
_U64 = (1 << 64) - 1


def splitmix64(x):
    """splitmix64 on Python integers (exact, arbitrary precision, masked to 64 bits)."""
    z = (x + 0x9E3779B97F4A7C15) & _U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)


def dropout_mask(seed, step, stream, layer, n_rows, n, rate):
    """The 0/1 keep mask of ``kernels/dropout.py``'s key, unit by unit in Python integers:
    a unit is kept when its 53-bit draw ``u * 2**53`` is at least ``rate * 2**53``."""
    keep = np.zeros((n_rows, n), dtype=bool)
    for i in range(n_rows):
        h = splitmix64(seed & _U64)
        h = splitmix64(h ^ step)
        h = splitmix64(h ^ (((stream << 32) & _U64) ^ layer))
        h = splitmix64(h ^ i)
        for j in range(n):
            draw = splitmix64(h ^ j) >> 11
            # draw >= ceil(rate * 2**53)  <=>  draw >= rate * 2**53 for an integer draw
            keep[i, j] = draw >= rate * 2.0 ** 53
    return keep


def dropout_forward(x, keep, rate):
    """Inverted dropout with a given keep mask: ``x * keep / (1 - rate)``."""
    return np.where(keep, x.astype(float) / (1.0 - rate), 0.0)


# ----------------------------------------------------------------------------- layer norm
def layer_norm_forward(x, gain, bias, eps):
    """``(y, xhat, rstd)`` with the biased variance, as torch.nn.LayerNorm."""
    x = x.astype(float)
    mean = x.mean(axis=1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * rstd
    return xhat * gain + bias, xhat, rstd[:, 0]


def layer_norm_backward(x, gain, bias, eps, upstream):
    """Gradients ``(dgain, dbias, dx)`` of ``sum(upstream * layer_norm_forward(x)[0])``,
    with ``dx`` through each row's full Jacobian ``dy/dx`` built explicitly."""
    _, xhat, rstd = layer_norm_forward(x, gain, bias, eps)
    n = x.shape[1]
    dx = np.empty(x.shape)
    for i in range(x.shape[0]):
        # d xhat_j / d x_k = rstd (delta_jk - 1/n - xhat_j xhat_k / n)
        jac = rstd[i] * (np.eye(n) - 1.0 / n - np.outer(xhat[i], xhat[i]) / n)
        dx[i] = (upstream[i] * gain) @ jac
    return (upstream * xhat).sum(axis=0), upstream.sum(axis=0), dx
def clip_gradients(grads, max_norm=None, max_value=None):
    """torch.nn.utils.clip_grad_norm_ then clip_grad_value_ on one flat vector; returns the
    clipped copy and the norm before clipping."""
    g = grads.astype(float).copy()
    norm = float(np.sqrt((g * g).sum()))
    if max_norm is not None:
        coef = max_norm / (norm + 1e-6)
        if coef < 1:
            g *= coef
    if max_value is not None:
        g = np.clip(g, -max_value, max_value)
    return g, norm
