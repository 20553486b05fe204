"""The training loop: one epoch loop for one process and for MPI (see :mod:`.loop`).

Modules, lowest first: :mod:`.history` (what a fit returns), :mod:`.rows` (the rows a fit
trains on), :mod:`.protocol` (what the loop needs from a model), :mod:`.options` (a fit's
arguments, checked), :mod:`.loop` (the ten steps of an epoch and the strategy interface),
:mod:`.local` and :mod:`.mpi` (the two strategies, side by side).  Nothing here imports
:mod:`fastmlp.sequential`: the model comes in through :class:`.protocol.Trainable`.
"""

import contextlib

from fastmlp.jitcache import compile_notices
from fastmlp.training.chunked import ChunkSource, Chunked, evaluate_source, is_chunk_source
from fastmlp.training.history import DivergenceError, History
from fastmlp.training.local import Local
from fastmlp.training.loop import run_epochs
from fastmlp.training.mpi import MPI
from fastmlp.training.rows import Rows

__all__ = ["DivergenceError", "History", "Rows", "evaluate_chunks", "fit"]


def fit(model, X, y, comm=None, **arguments):
    """Train ``model`` (a :class:`~fastmlp.training.protocol.Trainable`) on ``(X, y)``.

    The keyword arguments are :meth:`Sequential.fit <fastmlp.Sequential.fit>`'s; with
    ``comm`` (an mpi4py communicator) this call is one rank of a data-parallel run and
    every rank of ``comm`` must make it.  Returns the :class:`History`.
    """
    if is_chunk_source(X, y):
        if comm is not None:
            raise ValueError("fit with comm= takes arrays (each rank's shard), not a source of "
                             "chunks")
        strategy = Chunked(model)
    else:
        strategy = Local(model) if comm is None else MPI(model, comm)
    plan = strategy.prepare(X, y, **arguments)
    epochs_done = strategy.start(plan)
    # A first fit compiles the kernels for this model: say so on stderr when verbose.  A
    # quiet fit leaves the caller's choice alone (the CLI and the demo ask for notices).
    notices = compile_notices() if plan.verbose and strategy.prints else contextlib.nullcontext()
    with strategy.threads(), notices:
        history = run_epochs(model, plan, strategy, epochs_done)
    model.history = history
    return history


def evaluate_chunks(model, X):
    """``(mean loss, rows predicted right, rows)`` over a chunk source ``X``, or None when
    ``X`` is not one (see :mod:`.chunked`)."""
    if not is_chunk_source(X):
        return None
    return evaluate_source(model, ChunkSource(X), "the source")
