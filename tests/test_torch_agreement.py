"""gelu, silu, the loss objects and gradient clipping against PyTorch, in float64.

Each test builds the same network in fastmlp and in torch (``W`` is ``(n_in, n_out)`` here,
``Linear.weight`` its transpose) and compares forward scores, the loss, every gradient and
the parameters after several optimizer steps.

Tolerance: both sides run the same float64 formulas on networks of a few units; they
differ in the order of their sums (BLAS blocks, torch's per-tensor norms) and in libm's
``exp``/``erf`` (within 1 ulp).  Every value is then within ~gamma(50) ~ 6e-15 of the other,
relative to the size of its terms (order 1 here), and a few optimizer steps grow that by a
small factor: RTOL = 1e-10, the issue's bound, holds with ~1e4 to spare, while a wrong
formula (a missing 1/n, the tanh approximation of gelu, a clipping coefficient off by the
1e-6) moves the results by 1e-7 or more.
"""

import numpy as np
import pytest
import torch

from fastmlp import (MSE, SGD, L1, Adam, AdamW, BinaryCrossEntropy, Dense, Huber, Sequential,
                     SoftmaxCrossEntropy)

RTOL = 1e-10
ATOL = 1e-13  # for entries that are 0 up to rounding (terms of order 1, see RTOL)

torch.set_num_threads(1)


def _close(got, want, what):
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=what)


def _pair(activation, n_out, loss, optimizer=None, seed=0):
    model = Sequential([Dense(5, 7, activation=activation), Dense(7, 6, activation=activation),
                        Dense(6, n_out)], loss=loss, optimizer=optimizer or SGD(lr=0.1), seed=seed,
                       dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    model.set_weights([w if i % 2 == 0 else rng.normal(scale=0.5, size=w.shape)
                       for i, w in enumerate(model.get_weights())])
    act = {"gelu": torch.nn.GELU(), "silu": torch.nn.SiLU(), "tanh": torch.nn.Tanh()}[activation]
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), act, torch.nn.Linear(7, 6), act,
                              torch.nn.Linear(6, n_out)).double()
    with torch.no_grad():
        for layer, (W, b) in zip(net[::2], zip(model.get_weights()[::2], model.get_weights()[1::2])):
            layer.weight.copy_(torch.from_numpy(W.T.copy()))
            layer.bias.copy_(torch.from_numpy(b))
    return model, net


def _torch_grads(net):
    grads = []
    for layer in net[::2]:
        grads += [layer.weight.grad.numpy().T, layer.bias.grad.numpy()]
    return grads


def _data(rng, kind, n=11, n_out=3):
    X = rng.normal(size=(n, 5)) * 1.5
    if kind == "labels":
        return X, rng.integers(0, n_out, size=n)
    if kind == "binary":
        return X, rng.integers(0, 2, size=(n, n_out)).astype(float)
    return X, rng.normal(size=(n, n_out)) * 2


def _torch_loss(loss, scores, y, weights):
    """The fastmlp loss's definition in torch: the mean over rows (labels) or elements, each
    row's terms times its weight (Keras's convention: not divided by the sum of weights)."""
    if isinstance(loss, SoftmaxCrossEntropy):
        fn = torch.nn.CrossEntropyLoss(label_smoothing=loss.label_smoothing, reduction="none")
        per = fn(scores, torch.from_numpy(y))
    elif isinstance(loss, Huber):
        per = torch.nn.HuberLoss(delta=loss.delta, reduction="none")(scores, torch.from_numpy(y))
    elif isinstance(loss, L1):
        per = torch.nn.L1Loss(reduction="none")(scores, torch.from_numpy(y))
    elif isinstance(loss, MSE):
        per = torch.nn.MSELoss(reduction="none")(scores, torch.from_numpy(y))
    else:
        per = torch.nn.BCEWithLogitsLoss(reduction="none")(scores, torch.from_numpy(y))
    if weights is not None:
        w = torch.from_numpy(weights)
        per = per * (w if per.dim() == 1 else w[:, None])
    return per.mean()


LOSS_CASES = [
    (SoftmaxCrossEntropy(), "labels"),
    (SoftmaxCrossEntropy(label_smoothing=0.1), "labels"),
    (SoftmaxCrossEntropy(label_smoothing=0.35), "labels"),
    (Huber(), "targets"),
    (Huber(delta=0.4), "targets"),
    (Huber(delta=3.0), "targets"),
    (L1(), "targets"),
    (MSE(), "targets"),
    (BinaryCrossEntropy(), "binary"),
]


@pytest.mark.parametrize("activation", ["gelu", "silu"])
@pytest.mark.parametrize("loss,kind", LOSS_CASES, ids=repr)
@pytest.mark.parametrize("weighted", [False, True])
def test_forward_loss_and_gradients_match_torch(activation, loss, kind, weighted):
    rng = np.random.default_rng(3)
    model, net = _pair(activation, 3, loss)
    X, y = _data(rng, kind)
    weights = rng.uniform(0, 2, size=len(X)) if weighted else None
    fast_loss = model.compute_gradients(X, y, sample_weight=weights)
    scores = net(torch.from_numpy(X))
    reference = _torch_loss(loss, scores, y, weights)
    reference.backward()
    _close(model.decision_function(X), scores.detach().numpy(), "forward")
    _close(fast_loss, reference.item(), "loss")
    for k, (got, want) in enumerate(zip(model.get_gradients(), _torch_grads(net))):
        _close(got, want, f"gradient {k}")


def _clip_torch(params, clip_norm, clip_value):
    norm = None
    if clip_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, clip_norm).item()
    if clip_value is not None:
        if norm is None:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params]).item()
        torch.nn.utils.clip_grad_value_(params, clip_value)
    return norm


OPTIMIZER_CASES = [
    (SGD, dict(lr=0.05, momentum=0.9), torch.optim.SGD, dict(lr=0.05, momentum=0.9),
     dict(clip_norm=0.3)),
    (SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), torch.optim.SGD,
     dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), dict(clip_value=0.02)),
    (Adam, dict(lr=0.01), torch.optim.Adam, dict(lr=0.01), dict(clip_norm=0.2)),
    (Adam, dict(lr=0.01, weight_decay=0.1), torch.optim.Adam, dict(lr=0.01, weight_decay=0.1),
     dict(clip_value=0.01)),
    (AdamW, dict(lr=0.01, weight_decay=0.05), torch.optim.AdamW, dict(lr=0.01, weight_decay=0.05),
     dict(clip_norm=0.25, clip_value=0.03)),
    (AdamW, dict(lr=0.01), torch.optim.AdamW, dict(lr=0.01), dict(clip_norm=1e3)),  # no-op clip
]


@pytest.mark.parametrize("fast_cls,fast_kw,torch_cls,torch_kw,clip", OPTIMIZER_CASES,
                         ids=lambda v: getattr(v, "__name__", None) or repr(v))
def test_clipped_optimizer_steps_match_torch(fast_cls, fast_kw, torch_cls, torch_kw, clip):
    torch_kw = dict(torch_kw)
    rng = np.random.default_rng(5)
    loss = Huber(delta=0.5)
    model, net = _pair("gelu", 3, loss, optimizer=fast_cls(**fast_kw, **clip))
    # fastmlp decays the weight matrices only, never the biases: two groups in torch.
    decay = torch_kw.pop("weight_decay", 0.0 if torch_cls is not torch.optim.AdamW else 0.01)
    opt = torch_cls([{"params": [layer.weight for layer in net[::2]], "weight_decay": decay},
                     {"params": [layer.bias for layer in net[::2]], "weight_decay": 0.0}],
                    **torch_kw)
    params = list(net.parameters())
    clipped_any = False
    for step in range(6):
        X, y = _data(rng, "targets", n=9)
        fast_loss = model.compute_gradients(X, y)
        fast_norm = model.apply_gradients()
        opt.zero_grad()
        reference = _torch_loss(loss, net(torch.from_numpy(X)), y, None)
        reference.backward()
        torch_norm = _clip_torch(params, clip.get("clip_norm"), clip.get("clip_value"))
        clipped_any |= torch_norm > clip.get("clip_norm", np.inf)
        opt.step()
        _close(fast_loss, reference.item(), f"loss at step {step}")
        _close(fast_norm, torch_norm, f"gradient norm at step {step}")
        # The gradient the update saw: fastmlp clips in place, as torch does.
        for k, (got, want) in enumerate(zip(model.get_gradients(), _torch_grads(net))):
            _close(got, want, f"clipped gradient {k} at step {step}")
        want_weights = []
        for layer in net[::2]:
            want_weights += [layer.weight.detach().numpy().T, layer.bias.detach().numpy()]
        for k, (got, want) in enumerate(zip(model.get_weights(), want_weights)):
            _close(got, want, f"parameter {k} after step {step}")
    if "clip_norm" in clip and clip["clip_norm"] < 1:
        assert clipped_any, "the test should exercise the scaling"


def test_fit_records_the_mean_gradient_norm_of_torch_steps():
    """History's grad_norm is the mean over an epoch's steps of clip_grad_norm_'s value."""
    rng = np.random.default_rng(8)
    X, y = _data(rng, "labels", n=24)
    model, net = _pair("silu", 3, SoftmaxCrossEntropy(label_smoothing=0.2),
                       optimizer=SGD(lr=0.1, clip_norm=0.5))
    history = model.fit(X, y, epochs=2, batch_size=8, shuffle=False)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    fn = torch.nn.CrossEntropyLoss(label_smoothing=0.2)
    for epoch in range(2):
        norms = []
        for start in range(0, 24, 8):
            opt.zero_grad()
            fn(net(torch.from_numpy(X[start:start + 8])), torch.from_numpy(y[start:start + 8])).backward()
            norms.append(torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5).item())
            opt.step()
        _close(history.history["grad_norm"][epoch], np.mean(norms), f"grad_norm of epoch {epoch + 1}")
    _close(model.get_weights()[0], net[0].weight.detach().numpy().T, "weights after fit")
