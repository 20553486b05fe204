"""MPI: one model replica per rank, a step at a time, the gradient averaged in between.

Every rank holds a shard of the training data and a full copy of the model.  At the start
rank 0's parameters, optimizer state and step count are broadcast to the others.  Each step
every rank runs ``compute_gradients`` on its own minibatch, the gradients are averaged with
**one** ``Allreduce`` over the model's single contiguous gradient vector (in place), and
every rank applies the same update with ``apply_gradients``.

Every decision that could differ between ranks is agreed with a collective before it is
acted on, so a refusal on one rank raises the same error on every rank instead of leaving
the others waiting.  An error inside the epochs that the ranks did not agree on (a bug, an
interrupted rank) aborts the whole job (``comm.Abort``) rather than hang it.

mpi4py is imported only when an MPI fit runs: the rest of fastmlp never needs it.
"""

import contextlib
import math
import os
import sys
import traceback
import warnings
import zlib

import numba
import numpy as np

from fastmlp import io
from fastmlp.compiled import count_nonfinite
from fastmlp.threads import get_num_threads
from fastmlp.threads import threads as threads_context
from fastmlp.training.history import DivergenceError
from fastmlp.training.loop import Strategy, begin_callbacks, end_callbacks, restore_callbacks
from fastmlp.training.options import check_fit, class_counts, row_weights
from fastmlp.training.protocol import check_trainable


def mpi4py_MPI():
    try:
        from mpi4py import MPI as module
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("fit_distributed needs mpi4py and an MPI library: "
                          "pip install 'fastmlp[mpi]' (see docs/distributed.md)") from exc
    return module


#: Exception classes an agreed error keeps on every rank (others become RuntimeError).
AGREED_KINDS = {cls.__name__: cls for cls in (TypeError, ValueError, io.FormatError, OSError,
                                              PermissionError, FileNotFoundError)}


def agree(comm, error):
    """Collective: raise the same error on every rank if any rank has one.

    ``error`` is this rank's exception or None.  Every rank takes part in exactly one
    allgather, so a refusal on one rank never leaves the others waiting in a later
    collective: they all raise, with the first failing rank's message.
    """
    mine = None if error is None else (type(error).__name__, str(error))
    raise_first(comm, comm.allgather(mine), error)


def raise_first(comm, everyone, error):
    """Raise the first rank's error of ``everyone`` (allgathered ``(name, message)`` or None)."""
    for rank, found in enumerate(everyone):
        if found is not None:
            name, message = found
            kind = AGREED_KINDS.get(name, RuntimeError)
            others = sum(f is not None for f in everyone) - 1
            more = f" (and {others} other rank(s) refused too)" if others else ""
            raise kind(f"fit_distributed: rank {rank} of {len(everyone)}: {message}{more}") from (
                error if error is not None and rank == comm.Get_rank() else None)


class Agreed(Exception):
    """Carries an error that every rank found at the same collective out of the loop, to be
    raised as its own kind there (every other exception in the loop aborts the job)."""

    def __init__(self, errors, error):
        super().__init__()
        self.errors, self.error = errors, error


def abort(comm):
    """Only this rank failed; the others wait in a collective that will never complete.
    Show why, then end the whole job rather than hang it."""
    rank, size = comm.Get_rank(), comm.Get_size()
    sys.stderr.write(f"fit_distributed: rank {rank} of {size} failed; aborting all ranks\n")
    traceback.print_exc()
    sys.stderr.flush()
    sys.stdout.flush()
    comm.Abort(1)


def default_num_threads(comm):
    """Collective: the numba thread count an MPI fit gives each rank by default,
    ``max(1, cores // ranks on this node)`` (capped by ``NUMBA_NUM_THREADS``)."""
    node = comm.Split_type(mpi4py_MPI().COMM_TYPE_SHARED)
    try:
        local_ranks = node.Get_size()
    finally:
        node.Free()
    cores = os.cpu_count() or 1
    try:
        # A launcher that binds each rank to some cores has already divided them.
        cores = min(cores, len(os.sched_getaffinity(0)) * local_ranks)
    except AttributeError:  # pragma: no cover - not on Linux
        pass
    return max(1, min(numba.config.NUMBA_NUM_THREADS, cores // local_ranks))


def user_chose_threads():
    """True when the thread count was chosen: ``NUMBA_NUM_THREADS`` in the environment, or a
    count below numba's maximum set in this thread (``fastmlp.set_num_threads``)."""
    return ("NUMBA_NUM_THREADS" in os.environ
            or numba.get_num_threads() != numba.config.NUMBA_NUM_THREADS)


def _hyperparameters(opt):
    return {name: getattr(opt, name) for name in opt.hyperparameter_names + opt.clip_names}


_SIGNATURE_NAMES = ("dtype", "loss", "parameter count", "architecture", "activation parameters",
                    "optimizer", "optimizer hyperparameters", "optimizer state shape")
_SETTING_NAMES = ("epochs", "batch_size", "shuffle", "checkpoint (given or not)",
                  "checkpoint_every", "resume", "validation_split", "class_weight",
                  "list of stateful callbacks (their classes, in order)")


class MPI(Strategy):
    """:class:`~fastmlp.training.loop.Strategy` for one rank of a data-parallel run."""

    def __init__(self, model, comm):
        self.model, self.comm = model, comm
        self.MPI = mpi4py_MPI()
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.prints = self.rank == 0

    # ------------------------------------------------------------------ agreement
    def prepare(self, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None,
                validation_split=0.0, sample_weight=None, class_weight=None, callbacks=None,
                verbose=0, checkpoint=None, checkpoint_every=None, resume=False,
                fresh_order=False):
        """Every check on this rank, then collectives that agree on them (nothing changed)."""
        comm, model = self.comm, self.model
        error, plan = None, None
        try:
            check_trainable(model)
            # Only rank 0 touches the checkpoint file, so only its file system is asked
            # about the path: the other ranks' nodes need not see rank 0's directory.
            plan = check_fit(model, X, y, epochs, batch_size, shuffle, validation_data,
                             validation_split, sample_weight, class_weight, callbacks, verbose,
                             checkpoint, checkpoint_every, resume, filesystem=self.rank == 0,
                             fresh_order=fresh_order)
            # With "balanced" the rows' weights are this shard's; they are recomputed from
            # the global class counts once every rank has passed its checks.
            balanced = (class_counts(model, plan.unsplit) if isinstance(class_weight, str)
                        else None)
        except (TypeError, ValueError) as exc:
            error = exc
        agree(comm, error)
        if class_weight is None or balanced is not None:
            class_key = class_weight
        else:
            class_key = tuple(sorted((int(k), float(v)) for k, v in class_weight.items()))

        # Each check below is decided from allgathered values, the same on every rank: every
        # rank raises, or none does.
        signatures = comm.allgather(model.signature())
        for other, signature in enumerate(signatures):
            if signature != signatures[0]:
                what = next(n for n, a, b in zip(_SIGNATURE_NAMES, signature, signatures[0])
                            if a != b)
                raise ValueError(f"fit_distributed: rank {other}'s model differs from rank 0's "
                                 f"in its {what}; build the same model on every rank")
        # Settings that shape the schedule and the collectives: a rank that ran another
        # number of epochs or steps, or saved when the others did not, would leave them
        # waiting.
        settings = comm.allgather((plan.epochs, plan.batch_size, plan.shuffle_key,
                                   checkpoint is not None, plan.checkpoint_every, plan.resume,
                                   plan.validation_split, class_key,
                                   [type(c).__name__ for c in plan.stateful]))
        for other, setting in enumerate(settings):
            if setting != settings[0]:
                what = next(n for n, a, b in zip(_SETTING_NAMES, setting, settings[0]) if a != b)
                raise ValueError(f"fit_distributed: rank {other}'s {what} differs from rank "
                                 "0's; pass the same training settings on every rank")
        # Per rank: training rows, validation given, some training weight above 0, callbacks
        # given, and (for "balanced") all rows and the class counts.
        train = plan.train
        facts = comm.allgather((train.n, plan.validation is not None,
                                not train.has_weights or bool(train.weights.any()),
                                bool(plan.callbacks),
                                None if balanced is None else (plan.unsplit.n, balanced)))
        # A rank without callbacks (a logger may be on rank 0 only) still meets the others
        # in the hooks' collectives.
        plan.hooks = any(f[3] for f in facts)
        self.lengths = np.array([f[0] for f in facts], dtype=np.int64)  # training rows per rank
        has_validation = [f[1] for f in facts]
        if any(has_validation) and not all(has_validation):
            missing = [r for r, v in enumerate(has_validation) if not v]
            raise ValueError(f"fit_distributed: validation_data was given on some ranks but not "
                             f"on rank(s) {missing}; give it on every rank or on none")
        if not any(f[2] for f in facts):
            raise ValueError("fit_distributed: sample_weight and class_weight give every "
                             "training row of every rank the weight 0: nothing would be learned")
        if balanced is not None:
            # The global table goes through fit's own path as a {class: weight} dict, so the
            # weights are bit-identical to a single-process fit on the concatenated rows
            # (validation rows counted, as fit counts them).
            counts = np.sum([f[4][1] for f in facts], axis=0)
            n_rows = sum(f[4][0] for f in facts)
            table = n_rows / (counts.shape[0] * np.maximum(counts, 1))
            per_class = {c: float(table[c]) for c in range(counts.shape[0])}
            plan.train = train.with_weights(
                row_weights(model, plan.sample_weight, per_class, plan.unsplit)[:train.n])
        # A batch larger than every shard gives the same one-step schedule as the largest
        # shard's length: that effective size is what a checkpoint records and compares.
        plan.batch_size = min(plan.batch_size, int(self.lengths.max()))
        return plan

    # ------------------------------------------------------------------ start and resume
    def start(self, plan):
        comm, model, rank = self.comm, self.model, self.rank
        self.plan = plan
        # Rank 0 decides (file there or not), reads and checks; all agree.
        resumed, states, found, done = None, [], False, 0
        if plan.resume:
            error = None
            if rank == 0 and os.path.exists(plan.checkpoint):
                try:
                    resumed = io.read_checkpoint(model, plan.checkpoint, plan.epochs,
                                                 plan.batch_size, plan.shuffle_key,
                                                 int(self.lengths.sum()),
                                                 lengths=self.lengths.tolist(),
                                                 callbacks=plan.stateful)
                    states = io.callback_states(resumed[0])
                except (ValueError, OSError) as exc:  # FormatError is a ValueError
                    error = exc
            agree(comm, error)
            found, done = comm.bcast((resumed is not None,
                                      0 if resumed is None else resumed[1]), root=0)
            if found and plan.stateful:
                states = comm.bcast(states, root=0)
        # The callbacks' setup, on every rank; any refusal is every rank's.
        model.stop_training = False
        if plan.hooks:
            error = None
            try:
                begin_callbacks(model, plan, states, done)
            except Exception as exc:
                error = exc
            agree(comm, error)
        self.resumed = None
        if found:
            self.resumed = self._scatter_checkpoint(resumed)
            restore_callbacks(plan, states)
        # Collective on every rank, whatever each rank decides next.
        threads = default_num_threads(comm)
        self.n_threads = get_num_threads() if user_chose_threads() else threads
        return 0 if self.resumed is None else self.resumed[0]

    def _scatter_checkpoint(self, resumed):
        """Collective: put rank 0's parameters, optimizer state and step count into rank 0's
        model (:meth:`begin` broadcasts them), and hand each rank its own row order and
        random streams.  Returns this rank's ``(epochs_done, order, shuffle_rng_state)``."""
        states = None
        if self.rank == 0:
            contents, done = resumed
            io.apply_checkpoint_model(self.model, contents)
            states = [(done, order, shuffle_rng, rng)
                      for order, shuffle_rng, rng in io.rank_states(contents)]
        done, order, shuffle_rng, rng = self.comm.scatter(states, root=0)
        self.model.rng.bit_generator.state = rng
        return done, order, shuffle_rng

    def threads(self):
        return threads_context(self.n_threads)

    @contextlib.contextmanager
    def guard(self):
        try:
            yield
        except DivergenceError:
            raise  # decided from reduced values: the same on every rank
        except Agreed as agreed:
            raise_first(self.comm, agreed.errors, agreed.error)
        except BaseException:
            abort(self.comm)
            raise  # pragma: no cover - Abort does not return

    def begin(self):
        """Identical start: rank 0's parameters, optimizer state and RNG draw; the step
        schedule, the same on every rank, from the shard lengths."""
        comm, model, rank, plan = self.comm, self.model, self.rank, self.plan
        opt = model.optimizer
        comm.Bcast(model.params, root=0)
        if opt.state.size:
            comm.Bcast(opt.state, root=0)
        opt.step_count = comm.bcast(opt.step_count, root=0)
        if model.has_dropout:  # the same architecture on every rank: all take part, or none
            # Rank 0's mask key, and each rank its rank as the stream: every rank's rows get
            # masks of their own, and a resume (rank 0's key is in the checkpoint) draws
            # them again bit for bit.
            model.dropout_seed = comm.bcast(model.dropout_seed, root=0)
            model.dropout_stream = rank
        train = plan.train
        self.order = np.arange(train.n, dtype=np.int64)
        if self.resumed is None:
            # Every rank draws (keeping the replicas' RNGs in step); rank 0's draw is used.
            entropy = comm.bcast(int(model.rng.integers(2 ** 63)), root=0)
            self.rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(rank,)))
        else:
            # The checkpoint's streams are already past that draw: restore, draw nothing.
            _, saved_order, shuffle_rng = self.resumed
            np.copyto(self.order, saved_order)
            self.rng = np.random.default_rng()
            self.rng.bit_generator.state = shuffle_rng
        batch_size, lengths = plan.batch_size, self.lengths
        self.n_steps = int(max(-(-lengths // batch_size)))
        # rows[k, r]: rank r's rows in step k (0 once its shard is used up)
        starts = np.arange(self.n_steps, dtype=np.int64)[:, None] * batch_size
        self.rows = np.clip(lengths[None, :] - starts, 0, batch_size)
        self.step_rows = self.rows.sum(axis=1)
        self.uniform = (self.rows == self.rows[:, :1]).all(axis=1)
        self.total_rows = int(lengths.sum())
        local_batch = min(batch_size, train.n)
        y_source = train.y
        self.x_batch = np.empty((local_batch, train.X.shape[1]), dtype=model.dtype)
        self.y_batch = np.empty((local_batch,) + y_source.shape[1:], dtype=y_source.dtype)
        self.w_batch = np.empty(local_batch if train.has_weights else 0, dtype=model.dtype)
        # loss * rows, rows predicted right, then validation: loss * rows, right, rows
        self.sums = np.zeros(5)
        self.validation_workspace = (None if plan.validation is None else
                                     model.inference_workspace(plan.validation.n))

    # ------------------------------------------------------------------ an epoch
    def hooks(self, name, epoch, logs):
        """Collective: every callback's ``name(epoch, logs)`` on this rank, then one allgather.

        Returns when every rank got through and the optimizer's hyperparameters (what
        schedules change) agree; ``model.stop_training`` is then True on every rank if a
        callback set it on any.  Otherwise raises :class:`Agreed` on every rank: a callback
        raised (on any rank), or the hyperparameters differ (callbacks that are not the same
        on every rank).
        """
        if not self.plan.hooks:
            return
        model = self.model
        error = None
        try:
            for callback in self.plan.callbacks:
                getattr(callback, name)(epoch, dict(logs))
        except Exception as exc:
            error = exc
        mine = None if error is None else (type(error).__name__, f"{name} of epoch {epoch}: {error}")
        everyone = self.comm.allgather((mine, bool(model.stop_training),
                                        _hyperparameters(model.optimizer)))
        errors = [e for e, _, _ in everyone]
        if any(e is not None for e in errors):
            raise Agreed(errors, error)
        first = everyone[0][2]
        for other, (_, _, hyper) in enumerate(everyone):
            if hyper != first:
                what = ", ".join(f"{k}={hyper[k]!r} (rank 0: {first[k]!r})"
                                 for k in first if hyper[k] != first[k])
                errors[other] = ("ValueError", (f"after the callbacks' {name} of epoch {epoch} "
                                                f"the optimizer has {what}; give every rank the "
                                                "same callbacks"))
                raise Agreed(errors, None)
        model.stop_training = any(stop for _, stop, _ in everyone)

    def run_steps(self, epoch, progress):
        """Every step of the epoch: this rank's minibatch, one Allreduce, the same update."""
        comm, model, MPI = self.comm, self.model, self.MPI
        train, order, batch_size = self.plan.train, self.order, self.plan.batch_size
        shuffle, rank, size, n_steps = self.plan.shuffle, self.rank, self.size, self.n_steps
        X, y_source, weights = train.X, train.y, train.weights
        x_batch, y_batch, w_batch = self.x_batch, self.y_batch, self.w_batch
        counts_correct = model.is_classifier
        loss_sum, correct = 0.0, 0
        # The reduced gradient, so its norm, is the same on every rank: no collective.
        self.grad_norm_sum, self.grad_norm_steps = 0.0, 0
        for step in range(n_steps):
            b = int(self.rows[step, rank])
            if b:
                lo = step * batch_size
                if shuffle:
                    idx = order[lo:lo + b]
                    xb, yb = x_batch[:b], y_batch[:b]
                    if X.dtype == xb.dtype:
                        np.take(X, idx, axis=0, out=xb)
                    else:  # a float64 memmap for a float32 model: rounds as astype does
                        xb[...] = X[idx]
                    np.take(y_source, idx, axis=0, out=yb)
                    wb = np.take(weights, idx, out=w_batch[:b]) if w_batch.shape[0] else None
                else:  # contiguous rows: views, no copy
                    xb, yb = X[lo:lo + b], y_source[lo:lo + b]
                    wb = weights[lo:lo + b] if weights.shape[0] else None
                loss = model.compute_gradients(xb, yb, wb)
                loss_sum += loss * b
                if counts_correct:
                    # From the scores this step's forward pass cached, as fit's epoch counts.
                    correct += model.count_correct_last_step(yb)
            grads = model.flat_gradients
            if not b:
                grads.fill(0)
            elif not self.uniform[step]:
                grads *= grads.dtype.type(b / self.step_rows[step])
            # The one collective per step: the whole network's gradient, in place.
            comm.Allreduce(MPI.IN_PLACE, grads, op=MPI.SUM)
            if self.uniform[step] and size > 1:
                grads /= grads.dtype.type(size)
            # The reduced vector is the same on every rank: all raise here, or none.
            if count_nonfinite(grads):
                raise DivergenceError(
                    f"the averaged gradient became NaN or Inf at epoch {epoch}, step "
                    f"{step + 1} of {n_steps}; training stopped on every rank and the "
                    "model keeps the parameters of the last finite step. Try a smaller "
                    "learning rate.")
            try:
                norm = model.apply_gradients()  # clips the reduced gradient, if asked
                if norm is not None:
                    self.grad_norm_sum += norm
                    self.grad_norm_steps += 1
            except DivergenceError:  # the same update on every rank: all raise, or none
                raise DivergenceError(
                    f"the update of epoch {epoch}, step {step + 1} of {n_steps} overflowed to "
                    "NaN or Inf and was undone on every rank: the model keeps the parameters "
                    "of the last finite step. Try a smaller learning rate.") from None
        return loss_sum, correct

    def epoch_logs(self, epoch, trained):
        """The epoch's figures, summed over the ranks in one small collective."""
        sums, validation, model = self.sums, self.plan.validation, self.model
        sums[:2] = trained
        if validation is not None:
            val_loss, val_correct = model.evaluate_rows(validation, self.validation_workspace)
            sums[2:] = (val_loss * validation.n, val_correct, validation.n)
        self.comm.Allreduce(self.MPI.IN_PLACE, sums, op=self.MPI.SUM)
        epoch_loss = sums[0] / self.total_rows
        if not math.isfinite(epoch_loss):
            raise DivergenceError(f"the training loss of epoch {epoch} is {epoch_loss} "
                                  "(averaged over all ranks); try a smaller learning rate.")
        self._check_replicas(epoch)
        logs = {"loss": float(epoch_loss)}
        if model.is_classifier:
            logs["accuracy"] = float(sums[1] / self.total_rows)
        if validation is not None:
            logs["val_loss"] = float(sums[2] / sums[4])
            if model.is_classifier:
                logs["val_accuracy"] = float(sums[3] / sums[4])
        if "grad_norm" in self.plan.metrics:
            logs["grad_norm"] = (self.grad_norm_sum / self.grad_norm_steps if self.grad_norm_steps
                                 else math.nan)
        return logs

    def save_checkpoint(self, epoch):
        """Collective: gather every rank's row order and streams to rank 0, which writes the
        checkpoint (with its stateful callbacks' state, the same on every rank).  Rank 0's
        write error is broadcast and raised as :class:`Agreed` on every rank, so that a full
        disk raises the same ``OSError`` everywhere instead of leaving the other ranks in
        the next step's Allreduce."""
        comm, plan = self.comm, self.plan
        states = comm.gather(io.rank_state(self.model, self.order, self.rng), root=0)
        error = None
        if self.rank == 0:
            try:
                io.save_distributed_checkpoint(self.model, plan.checkpoint, states, epoch,
                                               plan.epochs, plan.batch_size, plan.shuffle_key,
                                               plan.stateful)
            except (OSError, ValueError) as exc:
                error = (type(exc).__name__, f"could not write checkpoint {plan.checkpoint}: {exc}")
        error = comm.bcast(error, root=0)
        if error is not None:
            raise Agreed([error] + [None] * (self.size - 1), None)

    # ------------------------------------------------------------------ the end
    def end(self, error):
        """Collective, however training ended (but by an abort): ``on_train_end`` on every
        rank (which also notes a restore in a ``DivergenceError``), then one allgather: a
        callback's exception there is raised on every rank, and replicas that no longer
        match are resynchronised from rank 0."""
        if not self.plan.hooks:
            return
        comm, model = self.comm, self.model
        hook_error = None
        try:
            end_callbacks(model, self.plan.callbacks, error)
        except Exception as exc:
            hook_error = exc
        except BaseException:
            abort(comm)
            raise  # pragma: no cover - Abort does not return
        mine = None if hook_error is None else (type(hook_error).__name__,
                                                f"on_train_end: {hook_error}")
        everyone = comm.allgather((mine, zlib.crc32(model.params.view(np.uint8))))
        raise_first(comm, [e for e, _ in everyone], hook_error)
        self._resync_if_different([c for _, c in everyone], "as training ended")

    def _check_replicas(self, epoch):
        """Collective: every rank should hold bit-identical parameters (the reduced gradient
        is the same everywhere)."""
        checksums = self.comm.allgather(zlib.crc32(self.model.params.view(np.uint8)))
        self._resync_if_different(checksums, f"after epoch {epoch}")

    def _resync_if_different(self, checksums, when):
        """If an MPI library's Allreduce ever returns results that differ in the last bit
        between ranks (or a callback changed one rank's parameters), resynchronise from
        rank 0 and say so."""
        if len(set(checksums)) > 1:
            model = self.model
            if self.rank == 0:
                warnings.warn(f"fit_distributed: the ranks' parameters differed {when} (the MPI "
                              "library's Allreduce is not bitwise reproducible across ranks, or "
                              "a callback changed them on some ranks only); resynchronised from "
                              "rank 0", RuntimeWarning, stacklevel=5)
            self.comm.Bcast(model.params, root=0)
            if model.optimizer.state.size:
                self.comm.Bcast(model.optimizer.state, root=0)
