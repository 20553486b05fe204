#!/usr/bin/env python3
"""Compare fastmlp's training and prediction throughput with other MLP implementations.

Every system trains the same networks on the same random data: plain SGD (lr 0.01, no
momentum, no weight decay), float32, ReLU hidden layers, softmax cross-entropy, batches
visited in order.  Throughput is samples per second over whole epochs, after a warm-up
call, so compilation and first-touch costs are not timed.

Systems (each optional; one that is not installed is skipped with a note):

- ``fastmlp``: ``Sequential(...).fit(X, y, epochs=E, batch_size=B, shuffle=False)``;
  also ``predict``, and the per-call latency of ``predict_proba`` on 1 and 32 rows.
- ``reproducible``: the same calls as ``fastmlp`` in ``fastmlp.reproducible()`` mode
  (results independent of the thread count and, for predictions, of the other rows): its
  cost is the column "reproducible/fastmlp".
- ``jax``: a ``jax.jit``-compiled train step (``value_and_grad`` + SGD update) called once
  per batch from a Python loop, ``block_until_ready`` after each step; batches are
  device arrays split before timing.
- ``torch``: PyTorch eager, ``nn.Sequential`` + ``torch.optim.SGD`` + ``CrossEntropyLoss``,
  the standard ``zero_grad / forward / backward / step`` loop over tensor slices; also
  ``predict`` under ``torch.inference_mode()``, and the per-call latency of a softmax
  prediction on 1 and 32 rows (numpy in, numpy out, as a server takes a request).
- ``sklearn``: ``MLPClassifier(solver="sgd", momentum=0, learning_rate_init=0.01,
  alpha=0, shuffle=False, warm_start=True, max_iter=E).fit(X, y)``: one ``fit`` call
  trains E epochs (early stopping disabled), the standard way to train it; warm_start
  keeps weight initialisation out of the timed calls.
- ``numpy``: a plain numpy forward / backward / update loop written below.
- ``roofline``: only the step's matrix products in numpy (forward ``x @ W`` per layer,
  ``dW = x.T @ dZ`` per layer, ``dX = dZ @ W.T`` for every layer but the first), into
  preallocated outputs; reported as samples/s and GFLOP/s.

Each (system, repeat) runs in a fresh interpreter, with the thread count fixed through
environment variables before any import and checked inside the child; the runs are
interleaved (A, B, C, ..., then again) and the table shows the median of the repeats.

Run it from the repository root with an interpreter that has the peers installed::

    .venv-compare/bin/python benchmarks/compare.py                # threads 1 and 2
    .venv-compare/bin/python benchmarks/compare.py --quick        # smoke run
    .venv-compare/bin/python benchmarks/compare.py --threads 1 --systems fastmlp,numpy,roofline \\
        --markdown results.md

See docs/performance.md, "Comparison harness".
"""

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

# (layer sizes, batch size, rows of random data).  Rows are a multiple of the batch so
# every batch has the same shape (JAX would otherwise compile a second step); they are
# sized so one epoch takes milliseconds to a second, and the number of epochs timed is
# calibrated per system to reach --target-seconds.
SHAPES = [
    ((2, 100, 3), 32, 16384),
    ((64, 128, 10), 32, 16384),
    ((784, 256, 256, 10), 32, 4096),
    ((784, 256, 256, 10), 128, 4096),
    ((1024, 2048, 2048, 10), 512, 1024),
]

SYSTEMS = ["fastmlp", "reproducible", "jax", "torch", "sklearn", "numpy", "roofline"]
ALIASES = {"pytorch": "torch", "scikit-learn": "sklearn", "sk": "sklearn"}
LABELS = {"fastmlp": "fastmlp", "reproducible": "reproducible", "jax": "JAX", "torch": "PyTorch",
          "sklearn": "scikit-learn", "numpy": "numpy", "roofline": "roofline"}
# The module whose presence decides whether a system can run.
REQUIRES = {"fastmlp": "fastmlp", "reproducible": "fastmlp", "jax": "jax", "torch": "torch",
            "sklearn": "sklearn", "numpy": "numpy", "roofline": "numpy"}
# Distributions whose versions go in the header.
DISTRIBUTIONS = ["fastmlp", "numpy", "scipy", "numba", "llvmlite", "threadpoolctl", "jax",
                 "jaxlib", "torch", "scikit-learn"]

LR = 0.01
SEED = 0
#: Rows per call in the per-call latency measurements of ``predict_proba`` (one request at
#: a time, as a trained model is served).
LATENCY_ROWS = (1, 32)
CHILD_MARK = "COMPARE_RESULT "
CHILD_TIMEOUT_S = 900


def shape_name(sizes):
    return "-".join(str(s) for s in sizes)


def train_flops_per_sample(sizes):
    """FLOPs of one sample's matrix products in a training step (the roofline's work):
    forward and dW for every layer, dX for every layer but the first."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    return sum(2 * a * b * (2 if k == 0 else 3) for k, (a, b) in enumerate(pairs))


def predict_flops_per_sample(sizes):
    return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))


# =========================================================================== child side
# Everything below up to the parent section runs inside a fresh interpreter whose thread
# environment the parent set.  Each system imports only what it needs.

def make_data(sizes, n):
    import numpy as np

    rng = np.random.default_rng(SEED)
    X = rng.standard_normal((n, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], size=n, dtype=np.int64)
    return X, y


def init_params(sizes):
    """He-normal weights, zero biases, float32: shared by the numpy, JAX and PyTorch runs."""
    import numpy as np

    rng = np.random.default_rng(SEED + 1)
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        W = (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
        params.append((W, np.zeros(b, dtype=np.float32)))
    return params


def busy_seconds(cpus=None):
    """CPU seconds spent busy (user, nice, system, irq, softirq, steal) since boot, summed
    over ``cpus`` (all CPUs when None), from /proc/stat; None where that is unreadable."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        v = [int(x) for x in fields]
        ticks += v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


class Timer:
    """Wall and process CPU time (all threads) of a block.  ``cpu / wall`` is the number of
    cores the block kept busy, which checks the thread limit from the outside; ``others``
    is how many of this process's CPUs other processes kept busy meanwhile (noise)."""

    def __enter__(self):
        self.cpus = os.sched_getaffinity(0)
        self.busy0 = busy_seconds(self.cpus)
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0
        busy1 = busy_seconds(self.cpus)
        self.others = (None if self.busy0 is None or busy1 is None else
                       max(0.0, (busy1 - self.busy0 - self.cpu) / self.wall))
        return False


def calibrated(run_once, unit_samples, target_s, max_units=100000):
    """Warm up, estimate the time of one unit of work, then time enough units to last
    about ``target_s``.  ``run_once(k)`` does k units (epochs or predict passes).  When
    the estimate was far off (a slow first unit), time again with more units."""
    with Timer() as warm:
        run_once(1)  # compilation, first-touch allocation, caches
    with Timer() as probe:
        run_once(1)
    units = int(max(1, min(max_units, round(target_s / max(probe.wall, 1e-9)))))
    for _ in range(3):
        with Timer() as t:
            run_once(units)
        if t.wall >= 0.5 * target_s or units >= max_units:
            break
        units = int(min(max_units, -(-units * target_s // max(t.wall, 1e-9))))
    return {"samples_per_s": units * unit_samples / t.wall, "seconds": t.wall, "units": units,
            "cpu_util": t.cpu / t.wall, "others": t.others, "warmup_s": warm.wall}


# ---------------------------------------------------------------- the systems
def bench_fastmlp(sizes, batch, n, target_s, threads, do_predict, reproducible=False):
    import numpy as np

    import fastmlp
    from fastmlp import SGD, Dense, Sequential

    fastmlp.set_num_threads(threads)
    fastmlp.set_reproducible(reproducible)
    X, y = make_data(sizes, n)
    layers = [Dense(a, b, activation="relu") for a, b in zip(sizes[:-2], sizes[1:-1])]
    layers.append(Dense(sizes[-2], sizes[-1]))
    model = Sequential(layers, loss="softmax_cross_entropy", optimizer=SGD(lr=LR),
                       dtype=np.float32, seed=SEED)

    def train(epochs):
        model.fit(X, y, epochs=epochs, batch_size=batch, shuffle=False)

    out = {"train": calibrated(train, n, target_s)}
    if do_predict:
        out["predict"] = calibrated(lambda k: [model.predict(X) for _ in range(k)], n, target_s)
        for rows in LATENCY_ROWS:
            x = X[:rows].copy()
            out[f"latency{rows}"] = calibrated(
                lambda k: [model.predict_proba(x) for _ in range(k)], 1, target_s / 4)
    return out


def bench_jax(sizes, batch, n, target_s, threads, do_predict):
    import functools

    import jax
    import jax.numpy as jnp

    X, y = make_data(sizes, n)
    params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in init_params(sizes)]
    batches = [(jax.device_put(X[s:s + batch]), jax.device_put(y[s:s + batch]))
               for s in range(0, n, batch)]

    def forward(params, x):
        for W, b in params[:-1]:
            x = jax.nn.relu(x @ W + b)
        W, b = params[-1]
        return x @ W + b

    def loss_fn(params, x, labels):
        logp = jax.nn.log_softmax(forward(params, x))
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

    @functools.partial(jax.jit, donate_argnums=0)
    def step(params, x, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, labels)
        return jax.tree.map(lambda p, g: p - LR * g, params, grads), loss

    state = {"params": params}

    def train(epochs):
        p = state["params"]
        for _ in range(epochs):
            for xb, yb in batches:
                p, loss = step(p, xb, yb)
                jax.block_until_ready((p, loss))
        state["params"] = p

    return {"train": calibrated(train, n, target_s)}


def bench_torch(sizes, batch, n, target_s, threads, do_predict):
    import torch

    torch.set_num_threads(threads)
    X, y = make_data(sizes, n)
    modules = []
    for k, (W, b) in enumerate(init_params(sizes)):
        linear = torch.nn.Linear(W.shape[0], W.shape[1])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W.T.copy()))
            linear.bias.copy_(torch.from_numpy(b))
        modules.append(linear)
        if k < len(sizes) - 2:
            modules.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*modules)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.0)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def train(epochs):
        model.train()
        for _ in range(epochs):
            for s in range(0, n, batch):
                xb, yb = Xt[s:s + batch], yt[s:s + batch]
                optimizer.zero_grad(set_to_none=True)
                loss = criterion(model(xb), yb)
                loss.backward()
                optimizer.step()

    out = {"train": calibrated(train, n, target_s)}
    if do_predict:
        model.eval()

        def predict(k):
            with torch.inference_mode():
                for _ in range(k):
                    model(Xt).argmax(dim=1)

        out["predict"] = calibrated(predict, n, target_s)
        for rows in LATENCY_ROWS:
            xt = Xt[:rows].clone()

            def one_call_each(k):
                for _ in range(k):
                    # One request as a server takes it: numpy in, numpy out.
                    with torch.inference_mode():
                        torch.softmax(model(xt), dim=1).numpy()

            out[f"latency{rows}"] = calibrated(one_call_each, 1, target_s / 4)
    return out


def bench_sklearn(sizes, batch, n, target_s, threads, do_predict):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    X, y = make_data(sizes, n)
    # warm_start: each fit call goes on from the last one's weights for max_iter epochs,
    # so re-initialising the weights is not timed.  No early stopping, no L2 term.
    clf = MLPClassifier(hidden_layer_sizes=tuple(sizes[1:-1]), activation="relu",
                        solver="sgd", learning_rate="constant", learning_rate_init=LR,
                        momentum=0.0, nesterovs_momentum=False, alpha=0.0,
                        batch_size=batch, shuffle=False, tol=0.0, n_iter_no_change=10**9,
                        early_stopping=False, warm_start=True, random_state=SEED)
    problems = []

    def train(epochs):
        clf.set_params(max_iter=epochs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(X, y)
        if clf.n_iter_ != epochs:  # n_iter_ counts the epochs of the last fit call
            problems.append(f"scikit-learn ran {clf.n_iter_} epochs, not {epochs}")

    out = {"train": calibrated(train, n, target_s)}
    dtype = clf.coefs_[0].dtype
    if dtype.name != "float32":
        problems.append(f"scikit-learn trained in {dtype.name}, not float32")
    if problems:
        out["warnings"] = sorted(set(problems))
    return out


def numpy_train_epoch(params, X, y, batch):
    """One epoch of minibatch SGD in plain numpy: forward, softmax cross-entropy,
    backward, update, batch after batch."""
    import numpy as np

    n_layers = len(params)
    rows = np.arange(batch)
    for s in range(0, X.shape[0], batch):
        xb, yb = X[s:s + batch], y[s:s + batch]
        acts = [xb]
        for k, (W, b) in enumerate(params):
            z = acts[-1] @ W
            z += b
            if k < n_layers - 1:
                np.maximum(z, 0, out=z)
            acts.append(z)
        p = acts[-1]
        p -= p.max(axis=1, keepdims=True)
        np.exp(p, out=p)
        p /= p.sum(axis=1, keepdims=True)
        # The loss value, as the other systems compute it (unused here too).
        _ = -np.log(p[rows, yb]).mean()
        p[rows, yb] -= 1
        p /= batch
        delta = p
        for k in range(n_layers - 1, -1, -1):
            W, b = params[k]
            a = acts[k]
            gW = a.T @ delta
            gb = delta.sum(axis=0)
            if k > 0:
                delta = delta @ W.T
                delta *= a > 0
            W -= LR * gW
            b -= LR * gb


def bench_numpy(sizes, batch, n, target_s, threads, do_predict):
    X, y = make_data(sizes, n)
    params = init_params(sizes)

    def train(epochs):
        for _ in range(epochs):
            numpy_train_epoch(params, X, y, batch)

    return {"train": calibrated(train, n, target_s)}


def bench_roofline(sizes, batch, n, target_s, threads, do_predict):
    import numpy as np

    X, _ = make_data(sizes, n)
    rng = np.random.default_rng(SEED + 2)
    Ws = [W for W, _ in init_params(sizes)]
    acts = [None] + [np.empty((batch, s), dtype=np.float32) for s in sizes[1:]]
    deltas = [rng.standard_normal((batch, s), dtype=np.float32) for s in sizes[1:]]
    grads = [np.empty_like(W) for W in Ws]
    dxs = [np.empty((batch, s), dtype=np.float32) for s in sizes[:-1]]

    def train(epochs):
        for _ in range(epochs):
            for s in range(0, n, batch):
                acts[0] = X[s:s + batch]
                for k, W in enumerate(Ws):
                    np.matmul(acts[k], W, out=acts[k + 1])
                for k in range(len(Ws) - 1, -1, -1):
                    np.matmul(acts[k].T, deltas[k], out=grads[k])
                    if k > 0:
                        np.matmul(deltas[k], Ws[k].T, out=dxs[k])

    return {"train": calibrated(train, n, target_s)}


BENCHES = {"fastmlp": bench_fastmlp,
           "reproducible": lambda *args: bench_fastmlp(*args, reproducible=True),
           "jax": bench_jax, "torch": bench_torch, "sklearn": bench_sklearn, "numpy": bench_numpy,
           "roofline": bench_roofline}


def check_threads(system, threads):
    """What the child can see of its thread limits: a list of warnings (empty when every
    pool is within ``threads``) and a short description."""
    warnings, seen = [], []
    try:
        import threadpoolctl

        for pool in threadpoolctl.threadpool_info():
            lib = f"{pool.get('internal_api')}({os.path.basename(pool.get('filepath', '?'))})"
            count = pool.get("num_threads")
            seen.append(f"{lib}={count}" + (f" [{pool['architecture']}]" if pool.get("architecture") else ""))
            # Over the limit is always wrong.  Under it handicaps a peer; fastmlp keeps its
            # BLAS on one thread by design and splits products over numba's threads itself.
            if count > threads or (count < threads and REQUIRES[system] != "fastmlp"):
                warnings.append(f"{system}: {lib} pool has {count} threads, not {threads}")
    except ImportError:
        warnings.append(f"{system}: threadpoolctl missing, BLAS/OpenMP pools not checked")
    if REQUIRES[system] == "fastmlp":
        import numba

        import fastmlp

        seen.append(f"numba={numba.get_num_threads()}/{numba.config.NUMBA_NUM_THREADS} "
                    f"layer={_threading_layer(numba)}")
        if numba.get_num_threads() != threads or fastmlp.get_num_threads() != threads:
            warnings.append(f"{system}: numba uses {numba.get_num_threads()} threads "
                            f"(fastmlp {fastmlp.get_num_threads()}), not {threads}")
    if system == "torch":
        import torch

        seen.append(f"torch={torch.get_num_threads()}")
        if torch.get_num_threads() != threads:
            warnings.append(f"torch: get_num_threads() is {torch.get_num_threads()}, not {threads}")
    if system == "jax":
        seen.append(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    return warnings, seen


def _threading_layer(numba):
    try:
        return numba.threading_layer()
    except ValueError:
        return "not started"


def child_main(args):
    system, threads = args.child, args.threads_child
    if args.cpus:
        # Before any library starts a pool: XLA sizes its pool from the affinity mask.
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    shapes = parse_shapes(args.shapes)
    result = {"system": system, "threads": threads, "loadavg_start": os.getloadavg()[0],
              "shapes": {}, "warnings": []}
    predicted = set()
    for sizes, batch, n in shapes:
        n = rows_for(sizes, batch, n, args.quick)
        do_predict = sizes not in predicted
        predicted.add(sizes)
        key = f"{shape_name(sizes)}/{batch}"
        try:
            r = BENCHES[system](sizes, batch, n, args.target_seconds, threads, do_predict)
        except Exception as exc:  # report, and go on with the next shape
            r = {"error": f"{type(exc).__name__}: {exc}"}
        result["warnings"] += r.pop("warnings", [])
        r["n"] = n
        result["shapes"][key] = r
    warnings, seen = check_threads(system, threads)
    seen.append("cpus=" + ",".join(map(str, sorted(os.sched_getaffinity(0)))))
    result["warnings"] += warnings
    result["pools"] = seen
    result["loadavg_end"] = os.getloadavg()[0]
    print(CHILD_MARK + json.dumps(result), flush=True)


def rows_for(sizes, batch, n, quick):
    if quick:  # at most 8 batches, at least 2
        n = min(n, max(2 * batch, min(8 * batch, n // 4 // batch * batch)))
    return n


# =========================================================================== parent side
def thread_env(threads, system):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(threads)
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if system == "jax" and threads < len(os.sched_getaffinity(0)):
        # XLA:CPU has no thread-count API.  These flags (jax-ml/jax#743, #1539) make its
        # Eigen matrix products single-threaded and cap the intra-op pool, but jaxlib 0.10
        # still kept 2 cores busy with them: the affinity mask (pinned_cpus) is what holds,
        # and the cores-busy figure measured in the child shows whether it did.
        flags = ["--xla_cpu_multi_thread_eigen=false", f"intra_op_parallelism_threads={threads}"]
        env["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", "")] + flags))
    return env


def pinned_cpus(threads, args):
    """The CPUs a child is pinned to: the first ``threads`` usable ones when that is fewer
    than all of them (and --no-pin is not given), else None (no pinning)."""
    usable = sorted(os.sched_getaffinity(0))
    if args.no_pin or threads >= len(usable):
        return None
    return usable[:threads]


def wait_until_idle(cpus, max_wait_s, threshold=0.25, sample_s=0.5):
    """Wait (at most ``max_wait_s``) until other processes keep fewer than ``threshold``
    cores of ``cpus`` busy; return the last load seen (None where /proc/stat is unreadable)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        b0 = busy_seconds(cpus)
        time.sleep(sample_s)
        b1 = busy_seconds(cpus)
        if b0 is None or b1 is None:
            return None
        load = (b1 - b0) / sample_s
        if load < threshold or time.monotonic() >= deadline:
            return load


def run_child(system, threads, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", system,
           "--threads-child", str(threads), "--target-seconds", str(args.target_seconds),
           "--shapes", args.shapes]
    cpus = pinned_cpus(threads, args)
    if cpus:
        cmd += ["--cpus", ",".join(map(str, cpus))]
    if args.quick:
        cmd.append("--quick")
    idle_load = None
    if args.wait_idle > 0:
        idle_load = wait_until_idle(set(cpus) if cpus else None, args.wait_idle)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=thread_env(threads, system), capture_output=True,
                              text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT_S} s"}
    except OSError as exc:  # the interpreter or this file vanished
        return {"error": f"could not start: {exc}"}
    for line in proc.stdout.splitlines():
        if line.startswith(CHILD_MARK):
            result = json.loads(line[len(CHILD_MARK):])
            result["child_s"] = time.perf_counter() - t0
            result["idle_load"] = idle_load
            return result
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"error": f"exit {proc.returncode}: {tail}"}


def parse_shapes(text):
    """``all`` or a comma list of ``SIZES:BATCH`` (e.g. ``784-256-256-10:32``); rows come
    from SHAPES when the shape is listed there, else 64 batches."""
    if text == "all":
        return SHAPES
    known = {(s, b): n for s, b, n in SHAPES}
    shapes = []
    for item in text.split(","):
        sizes_text, _, batch_text = item.strip().partition(":")
        sizes = tuple(int(s) for s in sizes_text.split("-"))
        batch = int(batch_text or 32)
        if len(sizes) < 2 or min(sizes) < 1 or batch < 1:
            raise ValueError(f"bad shape {item!r}")
        shapes.append((sizes, batch, known.get((sizes, batch), 64 * batch)))
    return shapes


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_description():
    """BLAS libraries numpy and SciPy load (numba's np.dot calls SciPy's)."""
    try:
        import numpy  # noqa: F401
        import scipy.linalg.cython_blas  # noqa: F401
        import threadpoolctl
    except ImportError:
        return "unknown"
    parts = []
    for pool in threadpoolctl.threadpool_info():
        if pool.get("user_api") == "blas":
            path = pool["filepath"]
            owner = "numpy" if "numpy" in path else "scipy" if "scipy" in path else "?"
            parts.append(f"{owner}: {pool.get('internal_api')} {pool.get('version')} "
                         f"({pool.get('architecture', '?')}, {pool.get('threading_layer', '?')})")
    return "; ".join(parts) or "none found"


def git_revision():
    """The commit of the fastmlp that the children import (``src/`` of its checkout)."""
    spec = importlib.util.find_spec("fastmlp")
    here = os.path.dirname(spec.origin if spec and spec.origin else os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", ":/src"],
                               cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + (" + uncommitted changes in src/" if dirty else "") if rev else "unknown"


def version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def fmt_rate(x):
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def fmt_latency(calls_per_s):
    return f"{1e6 / calls_per_s:.1f}" if calls_per_s else "-"


def fmt_ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


def measurements(runs, system, key, kind):
    """The ``kind`` ("train" or "predict") results of ``system`` on shape ``key``, one per
    repeat that produced one."""
    return [r["shapes"][key][kind] for r in runs.get(system, [])
            if kind in r.get("shapes", {}).get(key, {})]


def median_rate(runs, system, key, kind):
    values = [m["samples_per_s"] for m in measurements(runs, system, key, kind)]
    return statistics.median(values) if values else None


def table(cols, rows):
    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + \
           ["| " + " | ".join(row) + " |" for row in rows]


def report(threads, systems, runs, notes, args):
    """The Markdown section for one thread count."""
    shapes = [(sizes, batch, f"{shape_name(sizes)}/{batch}") for sizes, batch, _ in parse_shapes(args.shapes)]
    present = [s for s in systems if runs.get(s)]
    warnings, flagged = [], set()

    def warn(system, text):
        flagged.add(system)
        if text not in warnings:
            warnings.append(text)

    for system in present:
        for r in runs[system]:
            for w in r.get("warnings", []):
                warn(system, w)
        busiest, noisy = 0.0, []
        for sizes, batch, key in shapes:
            for kind in ("train", "predict") + tuple(f"latency{r}" for r in LATENCY_ROWS):
                ms = measurements(runs, system, key, kind)
                util = max((m["cpu_util"] for m in ms), default=0.0)
                # The outside check of the limit: cores kept busy while timed.
                if util > threads + 0.3:
                    warn(system, f"{system}: {key} {kind} kept {util:.2f} cores busy with a "
                                 f"limit of {threads}")
                others = max((m["others"] or 0.0 for m in ms), default=0.0)
                if others > 0.25:
                    noisy.append(f"{key} {kind}")
                    busiest = max(busiest, others)
        if noisy:
            warn(system, f"{system}: other processes kept up to {busiest:.2f} of its "
                         f"{min(threads, len(os.sched_getaffinity(0)))} CPU(s) busy while timing "
                         f"{len(noisy)} measurement(s) ({', '.join(noisy[:3])}"
                         f"{', ...' if len(noisy) > 3 else ''}): those numbers are unreliable")

    def head(system):
        return LABELS[system] + (" (!)" if system in flagged else "")

    lines = [f"### {threads} thread{'s' if threads > 1 else ''}", ""]
    ratio_to = [p for p in ("jax", "torch", "roofline") if p in present and "fastmlp" in present]
    cols = ["layer sizes", "batch"] + [head(s) for s in present]
    if "roofline" in present:
        cols.append("roofline GFLOP/s")
    cols += [f"fastmlp/{LABELS[p]}" for p in ratio_to]
    mode_cost = "fastmlp" in present and "reproducible" in present
    cols += ["reproducible/fastmlp"] if mode_cost else []
    rows = []
    for sizes, batch, key in shapes:
        med = {s: median_rate(runs, s, key, "train") for s in present}
        row = [shape_name(sizes), str(batch)] + [fmt_rate(med[s]) for s in present]
        if "roofline" in present:
            r = med["roofline"]
            row.append(f"{r * train_flops_per_sample(sizes) / 1e9:.1f}" if r else "-")
        row += [fmt_ratio(med["fastmlp"], med[p]) for p in ratio_to]
        rows.append(row + ([fmt_ratio(med["reproducible"], med["fastmlp"])] if mode_cost else []))
    lines += [f"Training, samples/s (median of {args.repeats}; higher is better)", ""]
    lines += table(cols, rows)

    predictors = [s for s in ("fastmlp", "reproducible", "torch") if s in present]
    versus_torch = "fastmlp" in predictors and "torch" in predictors
    if predictors:
        cols = ["layer sizes"] + [head(s) for s in predictors]
        cols += ["fastmlp/PyTorch"] if versus_torch else []
        rows, done = [], set()
        for sizes, batch, key in shapes:
            if sizes in done:  # prediction does not depend on the training batch
                continue
            done.add(sizes)
            med = {s: median_rate(runs, s, key, "predict") for s in predictors}
            row = [shape_name(sizes)] + [fmt_rate(med[s]) for s in predictors]
            rows.append(row + ([fmt_ratio(med["fastmlp"], med["torch"])] if versus_torch else []))
        lines += ["", f"Predict, samples/s (median of {args.repeats}; whole array per call)", ""]
        lines += table(cols, rows)

        cols = ["layer sizes", "rows per call"] + [head(s) for s in predictors]
        cols += ["fastmlp/PyTorch time"] if versus_torch else []
        rows, done = [], set()
        for sizes, batch, key in shapes:
            if sizes in done:
                continue
            done.add(sizes)
            for n_rows in LATENCY_ROWS:
                med = {s: median_rate(runs, s, key, f"latency{n_rows}") for s in predictors}
                row = [shape_name(sizes), str(n_rows)] + [fmt_latency(med[s]) for s in predictors]
                if versus_torch:
                    row.append(fmt_ratio(med["torch"], med["fastmlp"]).rstrip("x"))
                rows.append(row)
        lines += ["", f"Per-call latency of predict_proba (PyTorch: softmax under inference_mode, "
                      f"numpy in and out), microseconds (median of {args.repeats}; lower is "
                      "better)", ""]
        lines += table(cols, rows)

    rows = []
    for sizes, batch, key in shapes:
        for system in present:
            for kind in ("train", "predict"):
                ms = measurements(runs, system, key, kind)
                if not ms:
                    errors = {r["shapes"][key]["error"] for r in runs[system]
                              if "error" in r.get("shapes", {}).get(key, {})}
                    if kind == "train":
                        rows.append([shape_name(sizes), str(batch), LABELS[system], kind,
                                     "failed: " + ("; ".join(errors) or "no result")] + [""] * 5)
                    continue
                values = [m["samples_per_s"] for m in ms]
                med = statistics.median(values)
                flops = train_flops_per_sample(sizes) if kind == "train" else predict_flops_per_sample(sizes)
                n = runs[system][0]["shapes"][key]["n"]
                rows.append([
                    shape_name(sizes), str(batch), LABELS[system], kind,
                    f"{fmt_rate(med)} ({fmt_rate(min(values))}-{fmt_rate(max(values))})",
                    f"{med * flops / 1e9:.1f}",
                    f"{max(m['cpu_util'] for m in ms):.2f}",
                    f"{max(m['others'] or 0.0 for m in ms):.2f}",
                    f"{ms[-1]['units']} x {n}",
                    f"{max(m['warmup_s'] for m in ms):.2f}"])
    lines += ["", "<details><summary>Details: spread over repeats, GFLOP/s of the matrix "
              "products, cores busy, other load</summary>", ""]
    lines += table(["layer sizes", "batch", "system", "what", "samples/s (min-max)", "GFLOP/s",
                    "cores busy", "others' load", "passes x rows", "warm-up s"], rows)
    pools = "; ".join(f"{LABELS[s]}: {', '.join(runs[s][-1]['pools'])}" for s in present)
    lines += ["", f"Thread pools seen in each child after its runs: {pools}", "", "</details>"]
    if notes or warnings:
        lines += [""] + [f"- {n}" for n in notes] + [f"- (!) {w}" for w in warnings]
    return "\n".join(lines)


def header(args, thread_counts):
    load = os.getloadavg()
    versions = ", ".join(f"{d} {v}" for d in DISTRIBUTIONS if (v := version(d)))
    env_notes = [f"{v}={os.environ[v]}" for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                 if v in os.environ]
    lines = [
        "## fastmlp comparison",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; fastmlp revision {git_revision()}",
        f"- CPU: {cpu_model()}; {os.cpu_count()} logical cores "
        f"({len(os.sched_getaffinity(0))} usable); load average at start {load[0]:.2f}",
        f"- Python {platform.python_version()}; {versions}",
        f"- BLAS: {blas_description()}",
        f"- threads: {', '.join(map(str, thread_counts))} (OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS set "
        "before import; fastmlp.set_num_threads, torch.set_num_threads; XLA_FLAGS for JAX); "
        + ("children never pinned (--no-pin)" if args.no_pin else
           "with fewer threads than cores every child is pinned to that many CPUs "
           "(sched_setaffinity), the one limit XLA obeys"),
        f"- workload: SGD lr {LR}, float32, ReLU hidden layers, softmax cross-entropy, random "
        f"data (seed {SEED}), batches in order; about {args.target_seconds:g} s timed per "
        f"measurement after a warm-up; {args.repeats} interleaved repeat(s), each system in a "
        "fresh interpreter" + ("; --quick" if args.quick else "")
        + (f"; before each run, waited up to {args.wait_idle:g} s for the machine to be idle"
           if args.wait_idle > 0 else ""),
    ]
    if env_notes:
        lines.append(f"- environment: {' '.join(env_notes)} (these slow a current OpenBLAS; see "
                     "docs/performance.md)")
    cmd = " ".join(os.path.relpath(a) if os.path.isabs(a) and a.startswith(os.getcwd()) else a
                   for a in [sys.executable] + sys.argv)
    lines.append(f"- command: `{cmd}`")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1,2",
                   help="comma-separated thread counts, one table each (default 1,2)")
    p.add_argument("--systems", default=",".join(SYSTEMS),
                   help=f"comma-separated subset of {','.join(SYSTEMS)} (default all)")
    p.add_argument("--shapes", default="all",
                   help="'all' or comma-separated SIZES:BATCH, e.g. 784-256-256-10:32")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3; 1 with --quick)")
    p.add_argument("--target-seconds", type=float, default=None,
                   help="timed seconds per measurement (default 1.0; 0.1 with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 repeat, little work")
    p.add_argument("--markdown", metavar="FILE", help="also write the tables to FILE")
    p.add_argument("--wait-idle", type=float, default=30.0, metavar="S",
                   help="before each child, wait up to S seconds for other processes to leave "
                        "its CPUs (default 30; 0 disables)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin children to CPUs when fewer threads than cores are asked "
                        "for (JAX then ignores the limit: see the cores-busy column)")
    p.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--threads-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--cpus", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.target_seconds is None:
        args.target_seconds = 0.1 if args.quick else 1.0
    if args.repeats < 1 or args.target_seconds <= 0:
        p.error("--repeats and --target-seconds must be positive")
    try:
        parse_shapes(args.shapes)
    except ValueError as exc:
        p.error(str(exc))
    return args, p


def main(argv=None):
    args, parser = parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    try:
        thread_counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        parser.error(f"--threads takes comma-separated integers, got {args.threads!r}")
    if min(thread_counts) < 1:
        parser.error("thread counts must be >= 1")
    requested = []
    for name in args.systems.split(","):
        name = ALIASES.get(name.strip().lower(), name.strip().lower())
        if name not in SYSTEMS:
            parser.error(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")
        if name not in requested:
            requested.append(name)
    notes, systems = [], []
    for name in requested:
        if importlib.util.find_spec(REQUIRES[name]) is None:
            notes.append(f"{LABELS[name]} skipped: `{REQUIRES[name]}` is not installed in "
                         f"{sys.executable}")
        else:
            systems.append(name)
    if (os.cpu_count() or 1) < max(thread_counts):
        notes.append(f"more threads requested ({max(thread_counts)}) than cores ({os.cpu_count()})")

    sections = [header(args, thread_counts)]
    print(sections[0] + "\n", flush=True)
    for threads in thread_counts:
        runs = {s: [] for s in systems}
        child_notes = list(notes)
        for rep in range(args.repeats):
            for system in systems:  # interleaved: A, B, C, ..., then again
                print(f"[threads {threads}] repeat {rep + 1}/{args.repeats}: {system} ...",
                      end=" ", file=sys.stderr, flush=True)
                result = run_child(system, threads, args)
                if "error" in result:
                    print(f"failed ({result['error']})", file=sys.stderr, flush=True)
                    note = f"{LABELS[system]}: a run failed: {result['error']}"
                    if note not in child_notes:
                        child_notes.append(note)
                    continue
                print(f"{result['child_s']:.1f} s", file=sys.stderr, flush=True)
                runs[system].append(result)
        for system in systems:
            for r in runs[system]:
                for key, shape in r["shapes"].items():
                    if "error" in shape:
                        note = f"{LABELS[system]} {key}: {shape['error']}"
                        if note not in child_notes:
                            child_notes.append(note)
        idle = [r["idle_load"] for s in systems for r in runs[s] if r.get("idle_load") is not None]
        if args.wait_idle > 0 and idle and max(idle) >= 0.25:
            child_notes.append(f"the machine was not idle before some runs even after waiting "
                               f"{args.wait_idle:g} s (up to {max(idle):.2f} cores busy)")
        section = report(threads, systems, runs, child_notes, args)
        sections.append(section)
        print(section + "\n", flush=True)
    sections.append(f"- load average at end: {os.getloadavg()[0]:.2f}")
    print(sections[-1])
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n\n".join(sections) + "\n")
        print(f"\nwritten to {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
