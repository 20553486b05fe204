import os
import signal

# GNU OpenMP (numba's "omp" threading layer) has a thread that reaches a barrier spin for a
# while before it sleeps.  On 2 cores with anything else runnable (the child pytest that
# test_blas_families runs beside the suite, another job) the spinning thread holds the core
# its partner needs to finish: a deep net's train_step measured 5-12 ms instead of 0.2-0.4 ms
# with "passive" (sleep at once).  The policy changes no result, only who waits how; it is
# read when libgomp loads, so it is set before anything imports numba, and children inherit
# it.  A value already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

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
    expected = os.environ.get(EXPECT_BLAS_FAMILY)
    if expected:
        families = fastmlp_blas_families()
        if not families or set(families.values()) != {expected}:
            raise pytest.UsageError(
                f"{EXPECT_BLAS_FAMILY}={expected} (OPENBLAS_CORETYPE="
                f"{os.environ.get('OPENBLAS_CORETYPE')!r}), but threadpoolctl reports {families} "
                "for the BLAS fastmlp calls: the forced kernel family did not take effect")
    if expected:
        # The session that started this child stops it with SIGTERM (test_blas_families'
        # OtherFamilyRun.stop), as ``timeout`` or a CI runner may: raised as
        # KeyboardInterrupt, pytest unwinds and the running test ends its own processes (an
        # mpiexec session of its own would otherwise outlive it).  SIGINT keeps the
        # disposition both sessions inherited.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


# --- Children started before the first test ----------------------------------------------
# A test whose function has a ``start_early`` attribute does its work in a child process
# that needs nothing from this session: the child starts as soon as the selection is known,
# runs on the other core while the suite goes on, and the test, moved to the end of the
# session, waits for it.  ``start_early()`` returns a handle whose ``stop()`` ends the child
# if it still runs; that happens when the session ends however it ends (Ctrl-C, -x).
#
# Under pytest-xdist (setup.cfg runs a worker per core) the other core has a worker of its
# own, and a worker cannot know at collection which tests it will be given.  There such a
# test goes first instead, so that its file is the first handed out: the worker that gets
# it starts the child at once and waits, and the child runs in the worker's place.

_EARLY_CHILDREN = pytest.StashKey[list]()


def _starts_early(item):
    return getattr(getattr(item, "function", None), "start_early", None)


def _is_xdist_worker(config):
    return hasattr(config, "workerinput")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    # stable sorts: the other tests keep their order
    if _is_xdist_worker(config):
        items.sort(key=lambda item: _starts_early(item) is None)
    else:
        items.sort(key=lambda item: _starts_early(item) is not None)


def pytest_collection_finish(session):
    config = session.config
    config.stash[_EARLY_CHILDREN] = []
    # Inside a child (EXPECT_BLAS_FAMILY set) nothing starts another: no recursion.
    if config.option.collectonly or os.environ.get(EXPECT_BLAS_FAMILY) or \
            _is_xdist_worker(config):
        return
    for item in session.items:
        start = _starts_early(item)
        if start is not None:
            config.stash[_EARLY_CHILDREN].append(start())


def pytest_sessionfinish(session):
    for child in session.config.stash.get(_EARLY_CHILDREN, ()):
        child.stop()
