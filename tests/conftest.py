import numpy as np
import pytest

#: One place for per-dtype tolerances (kernels vs the float64 numpy reference).  float32
#: products carry ~1e-7 relative error per term; fastmath's reassociation reorders sums.
TOLERANCES = {
    np.float32: dict(rtol=2e-4, atol=2e-5),
    np.float64: dict(rtol=1e-10, atol=1e-12),
}

DTYPES = [np.float32, np.float64]

#: (batch, n_in, n_out): batch 1, odd widths, widths that are not multiples of 8 or 16.
SHAPES = [(1, 1, 1), (1, 7, 3), (5, 9, 13), (17, 33, 10), (64, 3, 65)]

ACTIVATIONS = [
    ("identity", None),
    ("sigmoid", None),
    ("tanh", None),
    ("relu", None),
    ("leaky_relu", 0.1),
    ("elu", 0.7),
]


def tolerance(dtype):
    return TOLERANCES[np.dtype(dtype).type]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def away_from_kinks(z, margin=1e-2):
    """Push values out of (-margin, margin): ReLU-family derivatives jump at 0."""
    return np.where(np.abs(z) < margin, np.sign(z + 1e-300) * margin + z, z)


#: Output width used with each loss by the API tests.
LOSS_OUTPUTS = {"softmax_cross_entropy": 3, "multiclass_hinge": 3, "binary_cross_entropy": 2, "mse": 2}


def random_targets(rng, loss, n, n_out):
    """``y`` for ``n`` rows: class labels, 0/1 targets or real targets, as ``loss`` takes."""
    if loss in ("softmax_cross_entropy", "multiclass_hinge"):
        return rng.integers(0, n_out, size=n)
    if loss == "binary_cross_entropy":
        return rng.integers(0, 2, size=(n, n_out))
    return rng.normal(size=(n, n_out))


def three_class_data(n=40, seed=11):
    """``n`` rows of 4 features and 3 classes (quadrant counts): small, learnable, fixed."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)


def training_state(model):
    """What training depends on, as comparable values: parameters, optimizer state, step
    count and RNG state."""
    return (model.params.tobytes(), model.optimizer.state.tobytes(), model.optimizer.step_count,
            model._rng.bit_generator.state)
