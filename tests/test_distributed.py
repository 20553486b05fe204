"""Data-parallel training over MPI (fastmlp.distributed), run for real under mpiexec.

Each test launches ``mpiexec -n 2`` or ``-n 3`` (more ranks than this machine's 2 cores, on
purpose) from the virtual environment's own ``bin/`` on tests/mpi_train.py, on loopback
only, with a hard timeout that kills the whole process group, so a hanging rank fails the
test instead of the suite.  Skipped when mpi4py or its mpiexec is not installed
(``pip install '.[test]'`` installs both).
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tolerances import FLOAT64_TRAJECTORY_RTOL as TOL  # float64 runs, order-1 values

HERE = Path(__file__).parent
SCRIPT = HERE / "mpi_train.py"
MPIEXEC = Path(sys.executable).parent / "mpiexec"
#: Generous: the first run may compile the float64 kernels (cached afterwards).
TIMEOUT_S = 240

needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or not MPIEXEC.exists(),
    reason=f"needs mpi4py and {MPIEXEC} (pip install 'fastmlp[mpi]')")


class Run:
    """One mpiexec job: its return code, and what each rank wrote, read separately.

    Every rank's stdout and stderr go to files of its own, so the tests assert on each
    rank's text: on one merged stream, several ranks' tracebacks interleave (a count of one
    message over all ranks then came out short under load).  hydra's ``-outfile-pattern``
    and ``-errfile-pattern`` (``%r``: the rank) catch what any program prints;
    tests/mpi_train.py also points its own stdout and stderr at ``rank-R.log``, written
    directly, so that what a rank wrote just before an MPI_Abort is never lost in a pipe."""

    def __init__(self, returncode, launcher, ranks):
        self.returncode = returncode
        self.launcher = launcher  # what mpiexec itself printed
        self.ranks = ranks  # per rank: its stdout, then its stderr

    def count(self, text):
        """How many times each rank wrote ``text``, as a list indexed by rank."""
        return [out.count(text) for out in self.ranks]

    def __repr__(self):  # for assertion messages
        parts = [f"--- mpiexec ---\n{self.launcher}"]
        parts += [f"--- rank {r} ---\n{out}" for r, out in enumerate(self.ranks)]
        return "\n".join(parts)


def mpiexec(n, program, log_dir):
    """Run ``program`` (argv) under ``mpiexec -n N`` on loopback, each rank's output in
    ``log_dir``; a :class:`Run`."""
    log_dir = Path(log_dir)
    env = dict(os.environ, UCX_NET_DEVICES="lo", HYDRA_IFACE="lo", PYTHONUNBUFFERED="1",
               FASTMLP_TEST_LOG_DIR=str(log_dir))
    env.pop("NUMBA_NUM_THREADS", None)  # the threads test needs numba's default
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("rank-*"):  # a previous job's, in the same directory
        old.unlink()
    cmd = [str(MPIEXEC), "-launcher", "fork", "-n", str(n),
           "-outfile-pattern", str(log_dir / "rank-%r.stdout"),
           "-errfile-pattern", str(log_dir / "rank-%r.stderr"), *program]
    # A session of its own, so a timeout can kill every rank (and hydra's proxy) at once.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=HERE, start_new_session=True)
    timed_out = False
    try:
        launcher, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        launcher, _ = proc.communicate()
        timed_out = True
    except BaseException:
        # Ctrl-C, or the session that started this pytest stopping it (test_blas_families):
        # the ranks are in a session of their own, which nothing else would end.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise

    def read(path):
        return path.read_text(errors="replace") if path.exists() else ""

    run = Run(proc.returncode, launcher,
              [read(log_dir / f"rank-{r}.stdout") + read(log_dir / f"rank-{r}.stderr")
               + read(log_dir / f"rank-{r}.log") for r in range(n)])
    if timed_out:
        pytest.fail(f"mpiexec -n {n} {program} hung for {TIMEOUT_S} s and was killed:\n{run!r}")
    return run


def mpirun(mode, n, tmp_path):
    """Run tests/mpi_train.py MODE under ``mpiexec -n N``; (:class:`Run`, rank 0's JSON)."""
    out = tmp_path / f"{mode}-{n}.json"
    run = mpiexec(n, [sys.executable, str(SCRIPT), mode, str(n), str(out)], tmp_path / f"{mode}-{n}")
    result = json.loads(out.read_text()) if out.exists() else None
    return run, result


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_equal_shards_match_single_process(n, tmp_path):
    run, result = mpirun("equal", n, tmp_path)
    assert run.returncode == 0, run
    assert result["size"] == n
    for key in ("equal", "adam"):
        eq = result[key]
        # Bit-identical replicas (rank 0's parameters are broadcast and every rank applies
        # the same reduced gradient with the same kernels); the same steps as one process
        # on the concatenated batches, float64, so only summation order separates them
        # (tolerances.FLOAT64_TRAJECTORY_RTOL; weights and losses are of order 1).
        assert eq["identical"], (key, eq)
        assert eq["steps"] == [eq["ref_steps"]] * n, (key, eq)
        assert eq["max_abs_diff"] <= TOL, (key, eq)
        assert eq["loss_diff"] <= TOL, (key, eq)
        # Rows predicted right before their step, counted on each rank and summed: the
        # same counts as one process predicting each concatenated batch before its step.
        accuracy, expected = eq["accuracy"]
        assert accuracy == expected and len(set(accuracy)) == 2, (key, eq)
    assert result["equal"]["lr"] == [0.2, 0.2] and result["adam"]["lr"] == [0.05, 0.05]
    shuffled = result["shuffled"]
    assert shuffled["identical"] and shuffled["same_history"], shuffled
    assert shuffled["keys"] == ["accuracy", "loss", "lr", "val_accuracy", "val_loss"]


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_uneven_shards_weight_rows(n, tmp_path):
    # Shards of 9, 5 (, 2) rows with batch 3: uneven last batches, and with 3 ranks one rank
    # runs out after its first step and joins the later ones with weight 0.
    run, result = mpirun("uneven", n, tmp_path)
    assert run.returncode == 0, run
    un = result["uneven"]
    assert un["identical"], un
    assert un["steps"] == [un["ref_steps"]] * n
    assert un["max_abs_diff"] <= TOL, un
    assert un["loss_diff"] <= TOL, un
    assert un["accuracy"][0] is None  # mse: no accuracy in the History
    clipped = result["clipped"]
    assert clipped["identical"], clipped
    assert clipped["max_abs_diff"] <= TOL and clipped["loss_diff"] <= TOL, clipped
    got, want = clipped["grad_norm"]
    # Means of norms of order 1 of the same float64 gradients summed in other orders.
    assert len(got) == 2 and max(abs(a - b) for a, b in zip(got, want)) <= TOL * max(want), clipped
    assert max(want) > 0.05  # the norms exceed clip_norm: the clipping acted


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_weights_validation_split_and_callbacks_match_single_process(n, tmp_path):
    run, result = mpirun("options", n, tmp_path)
    assert run.returncode == 0, run

    # A. Shards of 10, 7 (, 4) rows, 30% held out on each rank, batch 3, sample weights
    # (the last rank's all 0), class_weight="balanced" with each rank's labels leaning to
    # its own class: every step equals one process's weighted step on the concatenated
    # batch, with the weights from the global class counts.
    st = result["steps"]
    assert st["identical"] and st["same_grads"], st
    assert st["steps"] == [st["ref_steps"]] * n
    # The last step's reduced gradient against compute_gradients(..., sample_weight=...) on
    # the concatenated batch, float64: summation order only.
    # One step: the ranks' partial sums and the Allreduce against one product's sum.
    assert st["grad_diff"] <= TOL * st["grad_scale"] and st["grad_scale"] > 1e-3, st
    assert st["max_abs_diff"] <= TOL, st
    # Per-rank "balanced" weights would differ by this much: the comparison can fail.
    assert st["local_differs"] > 0.1, st
    history, expected = st["history"], st["expected"]
    assert sorted(history) == ["accuracy", "loss", "lr", "val_accuracy", "val_loss"]
    for key in ("loss", "val_loss"):
        assert max(abs(a - b) for a, b in zip(history[key], expected[key])) <= TOL, key
    # Counts of right answers: the same unless two scores tie to float64 rounding (TOL).
    for key in ("accuracy", "val_accuracy"):
        assert history[key] == expected[key], key
    assert history["lr"] == [0.2, 0.2]
    # verbose=1 under MPI: one line per epoch, from rank 0 only (no lr column: no schedule).
    quiet = [0] * (n - 1)
    assert run.count("epoch 1/2  loss ") == [1] + quiet, run
    assert run.count("epoch 2/2  loss ") == [1] + quiet, run
    assert " lr " not in next(line for line in run.ranks[0].splitlines() if line.startswith("epoch 1/2"))

    # B. StepDecay + EarlyStopping, validation_split, weights: the whole fit on n ranks
    # equals a single-process fit of the same rows (laid out so that its batches and its
    # held-out tail are the ranks' ones).
    fit = result["fit"]
    assert fit["identical"] and fit["same_history"], fit
    stopped, restored, epochs = fit["single_stop"]
    # A real case: the rate decays, EarlyStopping stops after its best epoch, early.
    assert 2 < restored < stopped < 30 and len(set(fit["single"]["lr"])) > 2
    assert fit["stops"] == [[stopped, restored, epochs]] * n  # the same decision on every rank
    assert fit["history"]["lr"] == fit["single"]["lr"]
    for key in ("accuracy", "val_accuracy"):  # counts of right answers, as above (ties only)
        assert fit["history"][key] == fit["single"][key], key
    for key in ("loss", "val_loss"):
        assert max(abs(a - b) for a, b in zip(fit["history"][key], fit["single"][key])) <= TOL
    assert fit["max_abs_diff"] <= TOL, fit  # the restored best weights, on every rank
    # verbose=2: one line per epoch with the lr column (a schedule is there), rank 0 only.
    assert run.count(f"epoch {stopped}/30  loss ") == [1] + quiet, run
    assert "lr 0.2  " in run.ranks[0] and run.count(f"epoch {stopped + 1}/30") == [0] * n, run

    # C. A callback on rank 1 only stops the run: every rank stops after that epoch.  A
    # logger on rank 0 only sees the History's figures.
    assert result["stop"] == {"epochs": [[1, 2]] * n, "logger_matches": True}

    # E. Binary cross-entropy with one output: classes and right answers from the targets.
    binary = result["binary"]
    assert binary["max_abs_diff"] <= TOL and binary["loss_diff"] <= TOL, binary
    assert binary["accuracy"][0] == binary["accuracy"][1], binary

    # D. A divergence in epoch 4: every rank raises it, and EarlyStopping puts back the best
    # epoch's weights on every rank.
    div = result["diverged"]
    assert div["message"] is not None and "epoch 4" in div["message"], div
    assert div["message"].endswith("Then a callback changed the parameters as training ended "
                                   "(EarlyStopping restores those of its best epoch).")
    assert div["restored"] == [3] * n and div["history"] == [1, 2, 3]
    assert div["identical"] and div["is_best"], div


@needs_mpi
def test_threads_per_rank(tmp_path):
    run, result = mpirun("threads", 3, tmp_path)
    assert run.returncode == 0, run
    t = result["threads"]
    cores = os.cpu_count()
    expected = max(1, min(t["max"], cores // 3))
    assert t["default"] == [[expected]] * 3
    assert t["after"] == t["before"]  # restored when fit_distributed returns
    assert t["user_set"] == [[t["max"]]] * 3  # NUMBA_NUM_THREADS set: left alone


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_bad_input_on_one_rank_raises_on_every_rank(n, tmp_path):
    run, _ = mpirun("bad", n, tmp_path)
    assert run.returncode != 0
    message = f"fit_distributed: rank 1 of {n}: X contains 1 NaN or Inf value(s)"
    assert run.count(message) == [1] * n, run  # the same error on every rank, none hangs
    for r in range(n):
        output = run.ranks[r]  # what rank r wrote, and only that
        assert (f"rank {r} refused: fit_distributed: rank 1's model differs from rank 0's in "
                "its optimizer;") in output
        assert (f"rank {r} refused: fit_distributed: validation_data was given on some ranks "
                f"but not on rank(s) {list(range(1, n))}") in output
        # Checkpoint arguments: checked on every rank, and the same on every rank.
        assert (f"rank {r} refused: fit_distributed: rank 1 of {n}: checkpoint_every must be a "
                "positive integer, got 0") in output
        assert (f"rank {r} refused: fit_distributed: rank 1's checkpoint (given or not) differs "
                "from rank 0's") in output
        assert f"rank {r} refused: fit_distributed: rank 1's resume differs from rank 0's" in output
        assert (f"rank {r} refused: fit_distributed: rank 0 of {n}: could not write checkpoint "
                f"{tmp_path / f'bad-{n}.json.ck'}: [Errno 28] No space left on device") in output
        # validation_split, sample_weight, class_weight and callbacks, bad on rank 1 only or
        # unequal: refused on every rank before training.
        for refusal in [
            f"TypeError: fit_distributed: rank 1 of {n}: callbacks[0] is <object object at ",
            (f"ValueError: fit_distributed: rank 1 of {n}: validation_split must be a number in "
             "[0, 1), got 1.5"),
            (f"ValueError: fit_distributed: rank 1 of {n}: sample_weight must have shape (6,), "
             "one weight per row of X, got shape (4,)"),
            "ValueError: fit_distributed: rank 1's class_weight differs from rank 0's",
            ("ValueError: fit_distributed: sample_weight and class_weight give every training "
             "row of every rank the weight 0: nothing would be learned"),
            ("ValueError: fit_distributed: rank 1's list of stateful callbacks (their classes, "
             "in order) differs from rank 0's"),
            f"ValueError: fit_distributed: rank 1 of {n}: this callback refuses to start",
            # During training: a callback failing on rank 1, a rate changed on rank 1 only.
            (f"RuntimeError: fit_distributed: rank 1 of {n}: on_epoch_end of epoch 2: "
             "'a callback failed'"),
            (f"ValueError: fit_distributed: rank 1 of {n}: after the callbacks' on_epoch_begin "
             "of epoch 1 the optimizer has lr=0.05 (rank 0: 0.2); give every rank the same "
             "callbacks"),
        ]:
            assert f"rank {r} refused: {refusal}" in output, (r, refusal, run)
        # on_train_end ran on every rank, with the error every rank raises.
        assert f"rank {r} on_train_end: RuntimeError" in output
        assert f"rank {r} on_train_end: ValueError" in output
        assert f"rank {r} trained with rank 1's rows weighing 0: [1]" in output
    assert not (tmp_path / f"bad-{n}.json.ck").exists()


@needs_mpi
def test_failure_inside_the_loop_aborts_the_job(tmp_path):
    run, _ = mpirun("crash", 3, tmp_path)
    assert run.returncode != 0
    assert "injected failure on rank 1" in run.ranks[1], run
    assert "fit_distributed: rank 1 of 3 failed; aborting all ranks" in run.ranks[1], run
    assert run.count("finished, which it must not") == [0] * 3, run


def test_core_does_not_import_mpi4py():
    # fastmlp, fastmlp.distributed included, must import with mpi4py unavailable.
    code = (
        "import sys\n"
        "sys.modules['mpi4py'] = None  # any import of it now fails\n"
        "import fastmlp, fastmlp.distributed\n"
        "assert 'mpi4py.MPI' not in sys.modules\n"
        "try:\n"
        "    fastmlp.distributed.fit_distributed(None, None, None, None)\n"
        "except ImportError as exc:\n"
        "    assert 'fastmlp[mpi]' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no ImportError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@needs_mpi
def test_cli_train_mpi_saves_one_model_from_rank_zero(tmp_path):
    import numpy as np

    import fastmlp
    from fastmlp.datasets import make_spiral

    X, y = make_spiral(n_per_class=40, seed=0)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    model_path = tmp_path / "spiral.fastmlp"
    argv = [sys.executable, "-m", "fastmlp", "train", f"{tmp_path / 'X.npy'}:{tmp_path / 'y.npy'}",
            "--mpi", "--epochs", "3", "--hidden", "16", "--threads", "1", "--out", str(model_path)]
    run = mpiexec(2, argv, tmp_path / "train")
    assert run.returncode == 0, run
    assert run.count("saved to") == [1, 0] and "on 2 ranks" in run.ranks[0], run
    assert run.count("epoch 3/3") == [1, 0], run
    assert fastmlp.load(str(model_path)).predict(X).shape == (120,)
    # The training-loop options work under --mpi too: one summary, one plot, from rank 0.
    plot = tmp_path / "curves.png"
    run = mpiexec(2, argv[:-2] + ["--epochs", "30", "--lr", "0.5", "--val-split", "0.25",
                                  "--early-stopping", "2", "--lr-schedule", "plateau",
                                  "--plot", str(plot)], tmp_path / "train-options")
    assert run.returncode == 0, run
    assert run.count("kept the weights of epoch") == [1, 0], run
    assert run.count("curves saved") == [1, 0], run
    assert plot.read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- checkpoints
def resume_run(n, tmp_path, dtype, checkpoint, lengths="9,7", kill="-1:0", callbacks=()):
    """tests/mpi_train.py resume under ``mpiexec -n N``; (:class:`Run`, rank 0's JSON)."""
    out = tmp_path / "resume.json"
    out.unlink(missing_ok=True)
    run = mpiexec(n, [sys.executable, str(SCRIPT), "resume", str(n), str(out),
                      dtype, str(checkpoint), lengths, kill, *callbacks], tmp_path / "resume")
    return run, json.loads(out.read_text())["resume"] if out.exists() else None


def epochs_in(checkpoint):
    from fastmlp.io import read

    return read(checkpoint).header["training"]["epochs_completed"]


@needs_mpi
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_killed_job_resumes_bit_identical(dtype, tmp_path):
    # Shards of 9 and 7 rows, batch 3: 3 steps per epoch on each rank, 8 epochs, Adam,
    # shuffle=True, a checkpoint after every epoch.
    run, plain = resume_run(2, tmp_path, dtype, "-")
    assert run.returncode == 0, run
    reference_ck = tmp_path / "reference.fmlp"
    run, reference = resume_run(2, tmp_path, dtype, reference_ck)
    assert run.returncode == 0, run
    assert reference == plain  # checkpointing changes nothing, on any rank
    assert reference["epoch"] == list(range(1, 9))
    assert reference["ranks"][0]["step_count"] == 24
    assert len({r["params"] for r in reference["ranks"]}) == 1

    ck = tmp_path / "killed.fmlp"
    # Rank 1 dies in the 2nd step of epoch 3: epoch 3's first update is in memory only.
    run, _ = resume_run(2, tmp_path, dtype, ck, kill="1:8")
    assert run.returncode != 0 and "rank 1 kills itself" in run.ranks[1], run
    assert epochs_in(ck) == 2
    # Resumed, then rank 0 (the writer) dies in the 1st step of its 4th epoch, epoch 6.
    run, _ = resume_run(2, tmp_path, dtype, ck, kill="0:10")
    assert run.returncode != 0 and "rank 0 kills itself" in run.ranks[0], run
    assert epochs_in(ck) == 5
    run, resumed = resume_run(2, tmp_path, dtype, ck)
    assert run.returncode == 0, run
    # Weights, optimizer state, step count and model RNG of every rank, bit for bit.
    assert resumed["ranks"] == reference["ranks"]
    assert resumed["epoch"] == [6, 7, 8]
    for key, values in reference["history"].items():
        assert resumed["history"][key] == values[5:]  # bitwise, as the state
    # The final checkpoints (every rank's row order and streams included) are the same bytes.
    assert ck.read_bytes() == reference_ck.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if ".fastmlp-tmp-" in p.name] == []
    # Rerunning the finished job trains nothing and changes nothing.
    run, again = resume_run(2, tmp_path, dtype, ck)
    assert run.returncode == 0, run
    assert again["epoch"] == [] and again["ranks"] == reference["ranks"]


@needs_mpi
def test_killed_job_with_plateau_and_early_stopping_resumes_bit_identical(tmp_path):
    # Shards of 24 and 20 rows, validation_split=0.25 (18 and 15 training rows: 6 and 5
    # steps of 3 rows per epoch), sample and "balanced" class weights, Adam,
    # ReduceLROnPlateau(patience=0) and EarlyStopping(patience=3) on val_loss.
    plateau = ("plateau",)
    reference_ck = tmp_path / "reference.fmlp"
    run, reference = resume_run(2, tmp_path, "float64", reference_ck, "24,20",
                                       callbacks=plateau)
    assert run.returncode == 0, run
    states = reference["callbacks"]
    assert states[0] == states[1]  # the callbacks agree on every rank
    # The case is real: the rate dropped twice, and EarlyStopping stopped at epoch 6 and
    # restored epoch 3, which a resume after epoch 4 knows from the checkpoint only.
    assert states[0]["stopped"] == 6 and states[0]["restored"] == 3, states
    assert reference["epoch"] == list(range(1, 7))
    assert reference["history"]["lr"] == [0.05] * 4 + [0.025, 0.0125]
    assert len({r["params"] for r in reference["ranks"]}) == 1

    ck = tmp_path / "killed.fmlp"
    # Rank 0 (the writer) dies in the 3rd step of epoch 2, before the best epoch ...
    run, _ = resume_run(2, tmp_path, "float64", ck, "24,20", "0:9", plateau)
    assert run.returncode != 0 and "rank 0 kills itself" in run.ranks[0], run
    assert epochs_in(ck) == 1
    # ... then, resumed, rank 1 dies in the 2nd step of epoch 5, after it.
    run, _ = resume_run(2, tmp_path, "float64", ck, "24,20", "1:17", plateau)
    assert run.returncode != 0 and "rank 1 kills itself" in run.ranks[1], run
    assert epochs_in(ck) == 4
    run, resumed = resume_run(2, tmp_path, "float64", ck, "24,20", callbacks=plateau)
    assert run.returncode == 0, run
    # The same rates, the same stop, the same restored weights, on every rank, bit for bit.
    assert resumed["callbacks"] == reference["callbacks"]
    assert resumed["ranks"] == reference["ranks"]
    assert resumed["epoch"] == [5, 6]
    for key, values in reference["history"].items():
        assert resumed["history"][key] == values[4:], key  # bitwise, as the state
    # The same bytes: the resumed run's state is bit for bit the reference's (above).
    assert ck.read_bytes() == reference_ck.read_bytes()
    # The last checkpoint holds rank 0's callbacks' state.
    from fastmlp.io import read

    entries = read(ck).header["training"]["callbacks"]
    assert [e["class"] for e in entries] == ["ReduceLROnPlateau", "EarlyStopping"]
    assert entries[0]["state"]["lr"] == 0.00625 and entries[1]["state"]["best_epoch"] == 3
    # Without EarlyStopping its state would be lost: refused on every rank, nothing written.
    run, result = resume_run(2, tmp_path, "float64", ck, "24,20", callbacks=["plateau-only"])
    assert run.returncode != 0 and result is None, run
    assert run.count(f"ValueError: fit_distributed: rank 0 of 2: checkpoint {ck} was written "
                     "by fit with the stateful callbacks ['ReduceLROnPlateau', "
                     "'EarlyStopping'], this call has ['ReduceLROnPlateau']") == [1] * 2, run
    # Refused: the file untouched.
    assert ck.read_bytes() == reference_ck.read_bytes()


@needs_mpi
def test_checkpoint_of_another_job_is_refused_on_every_rank(tmp_path):
    import numpy as np

    import fastmlp
    from fastmlp import Adam, Dense, Sequential

    ck = tmp_path / "two-ranks.fmlp"
    run, _ = resume_run(2, tmp_path, "float64", ck)
    assert run.returncode == 0, run
    before = ck.read_bytes()
    # Another world size: every rank raises the same error, the job ends non-zero, no hang.
    run, result = resume_run(3, tmp_path, "float64", ck, lengths="9,7,5")
    assert run.returncode != 0 and result is None, run
    message = (f"ValueError: fit_distributed: rank 0 of 3: checkpoint {ck} was written by 2 "
               "rank(s), this job has 3; resuming would not continue that run")
    assert run.count(message) == [1] * 3, run
    # The same world size with other shard lengths.
    run, result = resume_run(2, tmp_path, "float64", ck, lengths="8,8")
    assert run.returncode != 0 and result is None, run
    message = (f"ValueError: fit_distributed: rank 0 of 2: checkpoint {ck} was written with "
               "shards of [9, 7] rows (rank 0, 1, ...), this job's shards have [8, 8]")
    assert run.count(message) == [1] * 2, run
    assert ck.read_bytes() == before  # refused, never overwritten
    # A damaged checkpoint: the FormatError, on every rank.
    damaged = tmp_path / "damaged.fmlp"
    data = bytearray(before)
    data[len(data) // 2] ^= 0x10
    damaged.write_bytes(data)
    run, result = resume_run(2, tmp_path, "float64", damaged)
    assert run.returncode != 0 and result is None, run
    assert run.count(f"fastmlp.io.FormatError: fit_distributed: rank 0 of 2: {damaged}: "
                     "checksum mismatch") == [1] * 2, run
    # Refused: the file untouched.
    assert damaged.read_bytes() == data

    # A distributed checkpoint is a model file, but no single-process run resumes it ...
    model = fastmlp.load(ck)
    assert model.optimizer.step_count == 24
    X = np.random.default_rng(0).normal(size=(16, 5))
    y = np.arange(16) % 3
    fresh = Sequential([Dense(5, 7, activation="tanh"), Dense(7, 3)], optimizer=Adam(lr=0.05),
                       seed=0, dtype=np.float64)
    with pytest.raises(ValueError, match="written by fit_distributed on 2 rank"):
        fresh.fit(X, y, epochs=8, batch_size=3, checkpoint=ck, resume=True)
    # ... and a single-process checkpoint resumes no distributed run.
    single = tmp_path / "single.fmlp"
    fresh.fit(X, y, epochs=1, batch_size=3, checkpoint=single)
    run, result = resume_run(2, tmp_path, "float64", single, lengths="8,8")
    assert run.returncode != 0 and result is None, run
    assert run.count(f"fit_distributed: rank 0 of 2: checkpoint {single} was written by a "
                     "single-process fit; it cannot resume a run on 2 rank(s)") == [1] * 2, run
