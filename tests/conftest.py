import numpy as np
import pytest

# Float tolerances live in tests/tolerances.py: bounds derived from each computation.

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


# --- The BLAS kernel family (tests/test_blas_families.py) -------------------------------
#: Set by tests/test_blas_families.py in the pytest it starts under OPENBLAS_CORETYPE: the
#: kernel family the BLAS that fastmlp calls must report, or the run stops at once.
EXPECT_BLAS_FAMILY = "FASTMLP_TEST_EXPECT_BLAS_FAMILY"


def fastmlp_blas_families():
    """``{path: architecture}`` of the OpenBLAS libraries fastmlp's kernels call (SciPy's,
    as :func:`fastmlp.threads.fastmlp_blas_libraries` selects), from threadpoolctl."""
    from fastmlp.threads import fastmlp_blas_libraries

    return {lib.filepath: getattr(lib, "architecture", None)
            for lib in fastmlp_blas_libraries().lib_controllers}


def pytest_report_header(config):
    return f"fastmlp's BLAS kernel families: {sorted(set(fastmlp_blas_families().values()))}"


def pytest_configure(config):
    import os

    expected = os.environ.get(EXPECT_BLAS_FAMILY)
    if expected:
        families = fastmlp_blas_families()
        if not families or set(families.values()) != {expected}:
            raise pytest.UsageError(
                f"{EXPECT_BLAS_FAMILY}={expected} (OPENBLAS_CORETYPE="
                f"{os.environ.get('OPENBLAS_CORETYPE')!r}), but threadpoolctl reports {families} "
                "for the BLAS fastmlp calls: the forced kernel family did not take effect")
