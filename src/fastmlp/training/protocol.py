"""What the training loop needs from a model: the whole contract, in one place.

The loop (:mod:`fastmlp.training.loop`) and its two ways of running an epoch
(:mod:`~fastmlp.training.local`, :mod:`~fastmlp.training.mpi`) touch a model only through
the members listed in :class:`Trainable`; :class:`~fastmlp.Sequential` implements them.
Keeping the list short is the point: a new fit option that needs more from the model adds
it here first.
"""

from typing import Protocol, runtime_checkable


@runtime_checkable
class Trainable(Protocol):
    """A model the training loop can fit.

    State
    -----
    params : ndarray of shape (n_params,)
        Every parameter in one vector (replicas are compared and broadcast through it).
    optimizer : fastmlp.Optimizer
        Its ``lr``, ``state`` ``(n_slots, n_params)``, ``step_count`` and hyperparameters.
    rng : numpy.random.Generator
        The model's shuffle stream.
    dtype, loss, n_outputs, is_classifier, uses_labels
        What the rows and the metrics look like.
    stop_training : bool
        Set by a callback to end the fit after the current epoch.
    history : History or None
        The loop stores its History here.
    layers, seed
        Read by :mod:`fastmlp.io` to write checkpoints.
    has_dropout, dropout_seed, dropout_stream
        Whether dropout masks are drawn, and their key's seed and stream: the MPI strategy
        gives every rank rank 0's seed and its own rank as the stream.
    """

    params: object
    optimizer: object
    rng: object
    dtype: object
    loss: str
    stop_training: bool
    history: object

    def rows(self, X, y):
        """Validated :class:`~fastmlp.training.rows.Rows` (no weights) from user input."""

    def signature(self):
        """A tuple that replicas of the same model on other ranks must match."""

    # ---- evaluation
    def inference_workspace(self, rows):
        """Buffers for evaluating ``rows`` rows (one per validation set, reused)."""

    def evaluate_rows(self, rows, workspace):
        """``(mean loss, rows predicted right)`` of ``rows`` with the current parameters."""

    # ---- one process: an epoch's steps in one compiled call
    def train_steps(self, rows, order, batch_size, first, stop, batch_losses, batch_correct,
                    step_count, batch_grad_norms=None):
        """Run steps ``first .. stop - 1`` of an epoch compiled; return the first not run
        (each step's gradient norm into ``batch_grad_norms`` when the optimizer clips)."""

    def save_finite_state(self):
        """Remember parameters and optimizer state; return the step count."""

    def restore_finite_state(self, step_count):
        """Put back what :meth:`save_finite_state` remembered."""

    # ---- MPI: a step at a time, the gradient reduced in between
    def compute_gradients(self, X, y, sample_weight=None):
        """Forward and backward pass of one batch; returns its mean loss."""

    @property
    def flat_gradients(self):
        """The live gradient vector ``(n_params,)`` that :meth:`apply_gradients` reads."""

    def apply_gradients(self):
        """One optimizer update from :attr:`flat_gradients` (clipped first when the optimizer
        clips); returns the norm before clipping, or None without clipping."""

    def count_correct_last_step(self, y):
        """Rows of the last :meth:`compute_gradients` batch predicted right (``y``: its
        prepared labels or targets)."""


_MEMBERS = ("params", "optimizer", "rng", "dtype", "loss", "n_outputs", "is_classifier",
            "uses_labels", "rows", "signature", "inference_workspace", "evaluate_rows",
            "train_steps", "save_finite_state", "restore_finite_state", "compute_gradients",
            "flat_gradients", "apply_gradients", "count_correct_last_step", "has_dropout")


def check_trainable(model):
    """Raise ``TypeError`` unless ``model`` has every member of :class:`Trainable`.

    Looked up statically: reading ``flat_gradients`` before any step would raise.
    """
    import inspect

    missing = object()
    if any(inspect.getattr_static(model, name, missing) is missing for name in _MEMBERS):
        raise TypeError(f"model must be a fastmlp Sequential, got {type(model).__name__}")
