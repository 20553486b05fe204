"""scikit-learn estimators backed by fastmlp: :class:`MLPClassifier` and :class:`MLPRegressor`.

They wrap a :class:`~fastmlp.Sequential` model (``model_`` once fitted) behind the
estimator API, so they work in ``Pipeline``, ``GridSearchCV``, ``cross_val_score`` and pass
``sklearn.utils.estimator_checks.check_estimator``.  This is the only fastmlp module that
imports scikit-learn (>= 1.6); ``import fastmlp`` does not load it.

>>> from fastmlp.sklearn import MLPClassifier
>>> from fastmlp.datasets import make_spiral
>>> X, y = make_spiral(n_per_class=50)
>>> clf = MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.01, max_iter=300,
...                     random_state=0).fit(X, y)
>>> clf.score(X, y) > 0.9
True
"""

import numbers
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import (_check_sample_weight, check_is_fitted, column_or_1d,
                                      validate_data)

from fastmlp import losses
from fastmlp.callbacks import Callback, ToleranceStopping
from fastmlp.kernels.activations import ACTIVATIONS
from fastmlp.layers import Dense, Dropout, Maxout
from fastmlp.optimizers import SGD, Adam, AdamW
from fastmlp.sequential import DivergenceError, Sequential
from fastmlp.threads import get_reproducible

__all__ = ["MLPClassifier", "MLPRegressor"]

#: scikit-learn's name for the logistic sigmoid, accepted as an alias.
_ACTIVATION_ALIASES = {"logistic": "sigmoid"}
_HIDDEN_ACTIVATIONS = tuple(ACTIVATIONS) + ("maxout",) + tuple(_ACTIVATION_ALIASES)
_OPTIMIZERS = ("sgd", "adam", "adamw")
#: Rows per forward pass when predicting; see ``_BaseMLP._raw``.  The same as
#: ``fastmlp.kernels.blas.BLOCK_ALIGN``, the smallest product that is split over threads.
_PREDICT_BLOCK = 64


def _check_int(value, name, low):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_nonnegative_real(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _unit_mean(sample_weight, rows):
    """``sample_weight`` rescaled to mean 1: ``w * n / sum(w)`` (a new float64 array).

    ``Sequential.fit`` divides a batch's weighted loss by its row count (Keras's
    convention); with mean-1 weights that is ``sum(w_i l_i) / sum(w_i)`` over a full batch,
    scikit-learn's weighted mean, and its unbiased estimate over a minibatch.  Weights of
    all ones come back unchanged, bit for bit (``n / n == 1.0``).
    """
    total = sample_weight.sum()
    if not total > 0:
        raise ValueError(f"sample_weight is zero on every row of {rows}: nothing would be "
                         "learned")
    return sample_weight * (sample_weight.shape[0] / total)


def _writable(array):
    """``array``, or a copy of it when it is read-only."""
    return array if array.flags.writeable else array.copy()


class _Record(Callback):
    """Each epoch's training loss into the estimator's ``loss_curve_`` and ``n_iter_`` (and
    printed with ``verbose``), as the epoch ends."""

    def __init__(self, estimator):
        self.estimator = estimator

    def on_epoch_end(self, epoch, logs):
        estimator = self.estimator
        estimator.loss_curve_.append(logs["loss"])
        estimator.n_iter_ += 1
        if estimator.verbose:
            print(f"Iteration {estimator.n_iter_}, loss = {logs['loss']:.8f}", flush=True)


class _BaseMLP(BaseEstimator):
    """Shared parameters, validation and the epoch loop of the two estimators."""

    _losses = ()

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, loss, optimizer="adam",
                 learning_rate_init=0.001, momentum=0.9, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 weight_decay=None, clip_norm=None, batch_size="auto", max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, n_iter_no_change=10, early_stopping=False,
                 validation_fraction=0.1, dtype=None, verbose=0, warm_start=False,
                 dropout=0.0):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.loss = loss
        self.optimizer = optimizer
        self.learning_rate_init = learning_rate_init
        self.momentum = momentum
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.weight_decay = weight_decay
        self.clip_norm = clip_norm
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.dtype = dtype
        self.verbose = verbose
        self.warm_start = warm_start
        self.dropout = dropout

    # ----------------------------------------------------------------- validation
    def _np_dtype(self):
        """The network's precision asked for: ``np.float32``, ``np.float64``, or None to
        follow ``X`` (see :meth:`_input_dtype`)."""
        if self.dtype is None:
            return None
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            dtype = None
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be None, 'float32' or 'float64', got {self.dtype!r}")
        return dtype

    def _input_dtype(self, first_call):
        """What ``validate_data`` converts ``X`` to: the fitted network's dtype once there is
        one; else ``dtype``; else, with ``dtype=None``, ``X``'s own when it is float32 or
        float64 and float64 for anything else (scikit-learn's MLP:
        ``dtype=(np.float64, np.float32)``)."""
        if not first_call:
            return self.model_.dtype
        dtype = self._np_dtype()
        return (np.float64, np.float32) if dtype is None else dtype

    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral) and not isinstance(sizes, (bool, np.bool_)):
            sizes = (sizes,)
        try:
            sizes = list(sizes)
        except TypeError:
            raise ValueError("hidden_layer_sizes must be an integer or a sequence of integers, "
                             f"got {self.hidden_layer_sizes!r}") from None
        return [_check_int(s, "each entry of hidden_layer_sizes", 1) for s in sizes]

    def _check_params(self, incremental):
        """Every hyperparameter checked before anything is built or changed."""
        if self.activation not in _HIDDEN_ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(_HIDDEN_ACTIVATIONS)}; "
                             f"got {self.activation!r}")
        self._loss_object()
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(_OPTIMIZERS)}; "
                             f"got {self.optimizer!r}")
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            _check_int(self.batch_size, "batch_size ('auto' or an integer)", 1)
        _check_int(self.max_iter, "max_iter", 1)
        _check_int(self.n_iter_no_change, "n_iter_no_change", 1)
        _check_nonnegative_real(self.tol, "tol")
        if not isinstance(self.shuffle, (bool, np.bool_)):
            raise ValueError(f"shuffle must be True or False, got {self.shuffle!r}")
        if not isinstance(self.early_stopping, (bool, np.bool_)):
            raise ValueError(f"early_stopping must be True or False, got {self.early_stopping!r}")
        fraction = self.validation_fraction
        if (isinstance(fraction, (bool, np.bool_)) or not isinstance(fraction, numbers.Real)
                or not 0 < fraction < 1):
            raise ValueError(f"validation_fraction must be a number in (0, 1), got {fraction!r}")
        if incremental and self.early_stopping:
            # scikit-learn's message: one epoch has nothing to stop early.
            raise ValueError("partial_fit does not support early_stopping=True")
        if isinstance(self.verbose, bool) or not isinstance(self.verbose, numbers.Integral):
            raise ValueError(f"verbose must be an integer, got {self.verbose!r}")
        if not isinstance(self.warm_start, (bool, np.bool_)):
            raise ValueError(f"warm_start must be True or False, got {self.warm_start!r}")
        rate = self.dropout
        if (isinstance(rate, (bool, np.bool_)) or not isinstance(rate, numbers.Real)
                or not 0 <= rate < 1):  # NaN fails too
            raise ValueError(f"dropout must be a number in [0, 1), got {rate!r}")
        self._hidden_sizes()
        self._np_dtype()
        try:
            self._make_optimizer()  # the optimizers check their own hyperparameters
        except ValueError as exc:
            raise ValueError(f"{exc} (the {self.optimizer!r} optimizer's lr is learning_rate_init, "
                             "its betas are (beta_1, beta_2), its eps is epsilon)") from None

    def _loss_object(self):
        """``loss`` (a name or a :mod:`fastmlp.losses` object) as a checked loss object."""
        loss = self.loss
        name = loss.name if isinstance(loss, losses.Loss) else loss
        if not isinstance(name, str) or name not in self._losses:
            raise ValueError(f"loss must be one of {', '.join(self._losses)} or one of their "
                             f"fastmlp.losses objects; got {loss!r}")
        return losses.get(loss)

    def _loss_name(self):
        return self.loss.name if isinstance(self.loss, losses.Loss) else self.loss

    def _make_optimizer(self):
        decay = {} if self.weight_decay is None else {"weight_decay": self.weight_decay}
        if self.optimizer == "sgd":
            return SGD(lr=self.learning_rate_init, momentum=self.momentum,
                       clip_norm=self.clip_norm, **decay)
        cls = Adam if self.optimizer == "adam" else AdamW
        return cls(lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon,
                   clip_norm=self.clip_norm, **decay)

    # ----------------------------------------------------------------- model
    def _layers(self, n_features, n_outputs):
        activation = _ACTIVATION_ALIASES.get(self.activation, self.activation)
        widths = [n_features] + self._hidden_sizes()
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers.append(Maxout(a, b) if activation == "maxout" else Dense(a, b, activation=activation))
            if self.dropout > 0:
                layers.append(Dropout(float(self.dropout)))
        layers.append(Dense(widths[-1], n_outputs))
        return layers

    def _build_model(self, n_features, n_outputs, seed, dtype):
        return Sequential(self._layers(n_features, n_outputs), loss=self._loss_object(),
                          optimizer=self._make_optimizer(), seed=seed, dtype=dtype)

    def _first_call(self, incremental):
        """Whether this call builds a new network (``fit`` without ``warm_start``, or no
        network yet).  When it continues the fitted one (``partial_fit``, or ``fit`` with
        ``warm_start``), the parameters that the network was built from must not have
        changed: checked here, before anything changes."""
        if not hasattr(self, "model_") or not (incremental or self.warm_start):
            return True
        model = self.model_
        restart = ("call fit to start afresh" if incremental
                   else "set warm_start=False to start afresh")
        if self._loss_object() != model.loss_object:
            raise ValueError(f"loss is {self.loss!r} but the network was built for "
                             f"{model.loss_object!r}; {restart}")
        if incremental:
            return False
        # warm_start: the same network and optimizer, so that its weights and state carry over.
        wanted = [repr(layer) for layer in self._layers(model.layers[0].n_in, model.n_outputs)]
        built = [repr(layer) for layer in model.layers]
        if wanted != built:
            raise ValueError(f"warm_start=True, but hidden_layer_sizes={self.hidden_layer_sizes!r} "
                             f"and activation={self.activation!r} give the layers {wanted}, and "
                             f"the fitted network has {built}; {restart}")
        dtype = self._np_dtype()
        if dtype is not None and dtype != model.dtype:
            raise ValueError(f"warm_start=True, but dtype={self.dtype!r} differs from the fitted "
                             f"network's {model.dtype.name}; {restart}")
        if type(self._make_optimizer()) is not type(model.optimizer):
            raise ValueError(f"warm_start=True keeps the optimizer's state, but optimizer="
                             f"{self.optimizer!r} differs from the fitted network's "
                             f"{type(model.optimizer).__name__}; {restart}")
        return False

    def _update_optimizer(self):
        """``warm_start``: the current hyperparameters (``learning_rate_init``, ...) on the
        kept optimizer, whose state (moments, step count) carries over."""
        fresh, kept = self._make_optimizer(), self.model_.optimizer
        for name in fresh.hyperparameter_names:
            setattr(kept, name, getattr(fresh, name))

    def _check_weights(self, sample_weight, X):
        """``sample_weight`` as float64 ``(n_samples,)``, finite, >= 0, not all 0; or None."""
        if sample_weight is None:
            return None
        # Never written to: _unit_mean returns a new array (check_sample_weights_not_overwritten).
        return _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)

    def _hold_out(self, X, y, targets, sample_weight, rng):
        """Split off ``validation_fraction`` of the rows, as scikit-learn's MLP does:
        ``train_test_split`` with the estimator's random state (after the weights were
        drawn from it), stratified by class except for multilabel and regression targets.

        Returns ``(X, targets, sample_weight)`` of the training part and the validation
        part ``(X_val, y_val, sample_weight_val)``.
        """
        stratify = y if self._stratify_by(y) else None
        arrays = [X, targets, y] + ([] if sample_weight is None else [sample_weight])
        try:
            parts = train_test_split(*arrays, test_size=self.validation_fraction,
                                     random_state=rng, stratify=stratify)
        except ValueError as exc:
            how = "a stratified " if stratify is not None else "a "
            raise ValueError(f"early_stopping: cannot hold out {how}validation_fraction="
                             f"{self.validation_fraction} of {X.shape[0]} samples: {exc}") from None
        X_train, X_val, targets_train, _, _, y_val = parts[:6]
        if X_val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                             "or the size of your dataset.")
        if sample_weight is None:
            return X_train, targets_train, None, (X_val, y_val, None)
        weight_train, weight_val = parts[6:]
        if not weight_val.any():
            raise ValueError("sample_weight is zero on every row of the validation set "
                             "(early_stopping): its score is undefined; use another "
                             "random_state or a larger validation_fraction")
        return X_train, targets_train, weight_train, (X_val, y_val, weight_val)

    def _validation_score(self, X_val, y_val, weight_val):
        """``score`` on the validation part (already validated: no second ``validate_data``,
        which would also warn about feature names); NaN when an output is not finite, as
        in scikit-learn."""
        raw = self._forward(X_val)
        if not np.isfinite(raw).all():
            return np.nan
        return float(self._score_raw(raw, y_val, weight_val))

    def _fit_network(self, X, y, targets, sample_weight, first_call, incremental):
        """Train ``model_`` (built on ``first_call`` with ``n_outputs_`` outputs) for one
        epoch (incremental) or up to ``max_iter`` epochs with scikit-learn's stopping rule:
        on the training loss, or with ``early_stopping`` on the validation score, whose best
        epoch's parameters are kept.  ``y`` is the validated target (labels, for the score
        and the stratified split), ``targets`` what the network trains on.

        One ``Sequential.fit`` call runs the epochs (the training loop's, with
        ``fresh_order``: each epoch's order is that of a fit of its own); the rule is a
        :class:`~fastmlp.callbacks.ToleranceStopping` started from this estimator's
        ``best_*`` and count, which it hands back however the epochs end."""
        rng = check_random_state(self.random_state)
        # Sequential wants a non-negative int seed; an int random_state maps to a fixed one.
        # Drawn before the split, as scikit-learn draws its initial weights first, and drawn
        # on a warm start too, so that an int random_state holds out the same rows.
        seed = int(rng.randint(np.iinfo(np.int32).max)) if first_call or not incremental else None
        validation = None
        if self.early_stopping:  # fit only: _check_params refuses it for partial_fit
            X, targets, sample_weight, validation = self._hold_out(X, y, targets, sample_weight,
                                                                   rng)
        # A read-only X or y (a memory map) would make numba compile the training kernels a
        # second time, for read-only array types: one copy costs less.
        X, targets = _writable(X), _writable(targets)
        if sample_weight is not None:
            sample_weight = _unit_mean(sample_weight, "the training part left by "
                                       "early_stopping" if validation else "X")
        if first_call:  # built only once the split and the weights are accepted
            self.model_ = self._build_model(X.shape[1], self.n_outputs_, seed, X.dtype)
            self.loss_curve_ = []
            self.n_iter_ = 0
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None
        else:
            if not incremental:  # warm_start
                self._update_optimizer()
                if self.early_stopping:
                    # The best epoch is looked for among this fit's epochs: the parameters
                    # of an earlier fit's best epoch are not kept.
                    if self.validation_scores_ is None:
                        self.validation_scores_ = []
                    self.best_validation_score_ = -np.inf
                    self._no_improvement_count = 0
            if validation is None and self.best_loss_ is None:
                # after a fit with early stopping
                self.best_loss_ = np.inf
        if validation is None:
            rule = ToleranceStopping("loss", self.tol, self.n_iter_no_change, mode="min",
                                     best=self.best_loss_,
                                     no_improvement_count=self._no_improvement_count)
        else:
            rule = ToleranceStopping(lambda: self._record_validation_score(validation), self.tol,
                                     self.n_iter_no_change, mode="max", restore_best_weights=True,
                                     best=self.best_validation_score_,
                                     no_improvement_count=self._no_improvement_count)
        n = X.shape[0]
        batch_size = min(200, n) if isinstance(self.batch_size, str) else min(self.batch_size, n)
        try:
            self.model_.fit(X, targets, epochs=1 if incremental else self.max_iter,
                            batch_size=batch_size, shuffle=bool(self.shuffle),
                            sample_weight=sample_weight, callbacks=[_Record(self), rule],
                            fresh_order=True)
        except DivergenceError as exc:
            # Parameters only, as scikit-learn restores coefs_ and intercepts_: the
            # optimizer's state stays that of the last epoch, for a later partial_fit.
            kept = ("" if rule.restored_epoch is None else
                    f" The estimator keeps the parameters of epoch {rule.restored_epoch}, the "
                    "best validation score.")
            raise DivergenceError(
                f"epoch {self.n_iter_ + 1} of {type(self).__name__}: {exc}{kept}") from None
        finally:
            self._no_improvement_count = rule.no_improvement_count
            if validation is None:
                self.best_loss_ = rule.best
            else:
                self.best_validation_score_ = rule.best
        if not incremental:
            if rule.stopped_epoch is None:
                warnings.warn(f"{type(self).__name__}: reached max_iter={self.max_iter} epochs and "
                              "the optimization has not converged yet.", ConvergenceWarning,
                              stacklevel=4)
            elif self.verbose:
                what = "Validation score" if validation else "Training loss"
                print(f"{what} did not improve more than tol={self.tol} for "
                      f"{self.n_iter_no_change} consecutive epochs. Stopping.", flush=True)
        return self

    def _record_validation_score(self, validation):
        """The early-stopping score after an epoch, kept in ``validation_scores_``."""
        score = self._validation_score(*validation)
        self.validation_scores_.append(score)
        if self.verbose:
            print(f"Validation score: {score:.6f}", flush=True)
        return score

    def _raw(self, X):
        """The output layer's scores for ``X`` (validated here) as float64
        ``(n_samples, n_outputs_)``; see :meth:`_forward`."""
        check_is_fitted(self)
        return self._forward(validate_data(self, X, reset=False, dtype=self.model_.dtype,
                                           order="C"))

    def _forward(self, X):
        """The output layer's scores for validated, C-contiguous ``X`` of the model's dtype,
        as float64 ``(n_samples, n_outputs_)``.

        The rows go through the network in blocks of exactly ``_PREDICT_BLOCK`` rows (the
        last one zero-padded).  OpenBLAS picks its inner kernels, and with them the order
        of the sums, by matrix size, so in float32 a row's scores would otherwise depend on
        how many rows came with it (by ~1 ulp: enough to fail scikit-learn's
        ``check_methods_subset_invariance``, and to make cross-validation folds disagree).
        Same-shaped calls make each row's result independent of the batch on OpenBLAS's
        SkylakeX kernels.  Its Haswell kernels also round a row by its place in the block
        (docs/architecture.md, "Threads"), and on 2 threads a wide layer's 64-row product
        is split into column blocks: there a row can still move by about an ulp, within
        what scikit-learn's checks allow.  ``fastmlp.reproducible()`` makes each row exact
        everywhere, on any thread count; its rows go through the network one at a time,
        so the padding would only add rows to compute, and is left out.
        """
        if get_reproducible():
            return self.model_.decision_function(X).astype(np.float64)
        n, block = X.shape[0], _PREDICT_BLOCK
        out = np.empty((n, self.model_.n_outputs), dtype=np.float64)
        # Every block is copied into this buffer, so that the kernels always see a writable
        # array: a read-only X (a memory map) would compile them again.
        rows = np.zeros((block, X.shape[1]), dtype=X.dtype)
        for start in range(0, n, block):
            m = min(block, n - start)
            rows[:m] = X[start:start + m]
            if m < block:
                rows[m:] = 0
            out[start:start + m] = self.model_.decision_function(rows)[:m]
        return out


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multilayer perceptron classifier trained by fastmlp, with scikit-learn's estimator API.

    The network is ``len(hidden_layer_sizes)`` hidden layers of the chosen activation and a
    linear output layer with one unit per class (one unit in total for two classes with
    ``binary_cross_entropy``); the loss applies the softmax or sigmoid.

    Parameters
    ----------
    hidden_layer_sizes : int or sequence of int, default (100,)
        Width of each hidden layer; ``()`` gives a linear model (softmax regression).
    activation : str, default "relu"
        Hidden activation: ``identity``, ``sigmoid`` (alias ``logistic``), ``tanh``, ``relu``,
        ``leaky_relu`` (slope 0.01), ``elu`` (alpha 1.0), ``gelu``, ``silu`` or ``maxout``
        (2 pieces).
    loss : str or fastmlp.losses.Loss, default "softmax_cross_entropy"
        ``softmax_cross_entropy``; ``multiclass_hinge`` (a multiclass SVM loss: no
        ``predict_proba``); or ``binary_cross_entropy``, one sigmoid per class, which also
        accepts multilabel targets (a 0/1 indicator matrix).  Or one of their objects, e.g.
        ``SoftmaxCrossEntropy(label_smoothing=0.1)``.
    optimizer : {"adam", "sgd", "adamw"}, default "adam"
        fastmlp's :class:`~fastmlp.Adam`, :class:`~fastmlp.SGD` or :class:`~fastmlp.AdamW`.
    learning_rate_init : float, default 0.001
        The (constant) learning rate; named as in scikit-learn's MLP.
    momentum : float, default 0.9
        SGD only.
    beta_1, beta_2, epsilon : float, default 0.9, 0.999, 1e-8
        Adam and AdamW only.
    weight_decay : float or None, default None
        L2 penalty on the weight matrices as the optimizer defines it (added to the gradient
        for SGD and Adam, decoupled for AdamW); None keeps the optimizer's default (0 for SGD
        and Adam, 0.01 for AdamW).  Not scikit-learn's ``alpha``, which is also scaled by
        the batch size.
    clip_norm : float or None, default None
        Clip the gradient's global L2 norm to ``clip_norm`` before each update (the
        optimizer's ``clip_norm``, as ``torch.nn.utils.clip_grad_norm_``); > 0.
    batch_size : int or "auto", default "auto"
        ``"auto"`` is ``min(200, n_samples)``, as in scikit-learn.
    max_iter : int, default 200
        Maximum number of epochs (``fit``); ``partial_fit`` always runs one.
    shuffle : bool, default True
        Shuffle the rows every epoch.
    random_state : int, RandomState or None, default None
        Seeds the weight initialisation, the shuffling and the ``early_stopping`` split.
        A fixed int and the same thread count give the same model.
    tol : float, default 1e-4
        ``fit`` stops when the training loss has not improved by ``tol`` for more than
        ``n_iter_no_change`` consecutive epochs (with ``early_stopping``: the validation
        score has not improved by ``tol``).  ``tol=0`` effectively trains ``max_iter``
        epochs.
    n_iter_no_change : int, default 10
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the training data (scikit-learn's
        ``train_test_split`` with ``random_state``; stratified by class except for
        multilabel targets), compute ``score`` on it after every epoch, stop on it as
        ``tol`` says, and keep the parameters of the epoch with the best score.  Only
        ``fit``: ``partial_fit`` refuses it, as scikit-learn's does.
    validation_fraction : float, default 0.1
        In (0, 1): the share of the rows held out by ``early_stopping``; at least 2 rows
        (and, stratified, one per class) must come out.
    dtype : {None, "float32", "float64"}, default None
        Precision of the network.  None follows ``X`` in ``fit``, as scikit-learn's MLP
        does: float32 data trains a float32 network, float64 data a float64 one, and any
        other data (integers, ...) is converted to float64.  Later calls (``predict``,
        ``partial_fit``, a warm start) convert ``X`` to the fitted network's dtype.
        Probabilities and scores are returned as float64.
    verbose : int, default 0
        Print the loss (and validation score) after each epoch.
    warm_start : bool, default False
        ``fit`` continues from the fitted network instead of building a new one, as in
        scikit-learn: ``max_iter`` more epochs, with ``n_iter_`` and ``loss_curve_``
        carrying on and the stopping rule starting from the previous ``best_loss_`` and
        its count.  Unlike scikit-learn's MLP, which starts a new optimizer, the
        optimizer's state (momentum or Adam's moments, and its step count) carries over
        too (and the random generator that shuffles the rows), so that ``fit`` twice with
        ``max_iter=k`` trains bit for bit as ``fit`` once with ``2k`` epochs would, unless
        the stopping rule ends either earlier.
        Hyperparameters changed with ``set_params`` (``learning_rate_init``, ``tol``,
        ...) apply; ``hidden_layer_sizes``, ``activation``, ``loss``, ``optimizer``, an
        explicit ``dtype``, the number of features and (classifier) the set of classes
        must stay the same, else ``ValueError``.  With ``early_stopping`` the best epoch
        is looked for among this ``fit``'s epochs.
    dropout : float, default 0.0
        In ``[0, 1)``: a :class:`~fastmlp.Dropout` of this rate after each hidden layer's
        activation (none for 0).  Active while training only; ``predict`` and ``score``
        use the whole network.

    Notes
    -----
    ``sample_weight`` (``fit``, ``partial_fit``) is rescaled to mean 1 over the rows trained
    on, ``w * n / sum(w)``, and given to :meth:`Sequential.fit <fastmlp.Sequential.fit>`,
    whose batch loss is ``sum(w_i * loss_i) / batch_rows``.  Over a full batch
    (``n_samples <= batch_size``, as with ``"auto"`` up to 200 rows) that is
    ``sum(w_i * loss_i) / sum(w_i)``, scikit-learn's weighted mean: integer weights act as
    repeated rows and zero weights as dropped rows, to rounding.  Over minibatches each
    batch is divided by its row count times the mean weight of all rows (scikit-learn
    divides by the batch's own weight sum).  Only relative weights matter; weights of all
    ones train bit for bit the model no weights do.  See docs/sklearn.md.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The labels seen in ``fit`` (any sortable labels: ints, strings, ...).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` was a dataframe with string column names.
    n_outputs_ : int
        Units of the output layer.
    loss_curve_ : list of float
        Mean training loss of every epoch (weighted: ``sum(w * loss) / sum(w)``).
    best_loss_ : float or None
        The lowest of ``loss_curve_``; None after a ``fit`` with ``early_stopping``.
    validation_scores_ : list of float or None
        With ``early_stopping``: ``score`` on the validation rows after every epoch
        (``n_iter_`` of them; weighted by their ``sample_weight``); else None.
    best_validation_score_ : float or None
        The best of ``validation_scores_``, whose epoch's parameters the model has; None
        without ``early_stopping``.
    n_iter_ : int
        Epochs trained (with ``early_stopping``, including those after the best one).
    model_ : fastmlp.Sequential
        The trained network (``get_weights()`` and friends).
    """

    _losses = ("softmax_cross_entropy", "multiclass_hinge", "binary_cross_entropy")

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, loss="softmax_cross_entropy",
                 optimizer="adam", learning_rate_init=0.001, momentum=0.9, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, weight_decay=None, clip_norm=None, batch_size="auto", max_iter=200,
                 shuffle=True,
                 random_state=None, tol=1e-4, n_iter_no_change=10, early_stopping=False,
                 validation_fraction=0.1, dtype=None, verbose=0, warm_start=False,
                 dropout=0.0):
        super().__init__(hidden_layer_sizes, activation, loss=loss, optimizer=optimizer,
                         learning_rate_init=learning_rate_init, momentum=momentum, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, weight_decay=weight_decay,
                         clip_norm=clip_norm, batch_size=batch_size, max_iter=max_iter, shuffle=shuffle,
                         random_state=random_state, tol=tol, n_iter_no_change=n_iter_no_change,
                         early_stopping=early_stopping,
                         validation_fraction=validation_fraction, dtype=dtype,
                         verbose=verbose, warm_start=warm_start, dropout=dropout)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = self._loss_name() == "binary_cross_entropy"
        return tags

    @property
    def _sigmoid_outputs(self):
        return self._loss_name() == "binary_cross_entropy"

    def _validate_Xy(self, X, y, reset):
        X, y = validate_data(self, X, y, reset=reset, dtype=self._input_dtype(reset), order="C",
                             multi_output=True)
        if not self._sigmoid_outputs and y.ndim == 2 and y.shape[1] > 1:
            raise ValueError(f"y has shape {y.shape}: multilabel targets (a 0/1 indicator matrix) "
                             "need loss='binary_cross_entropy'")
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        return X, y

    def _encode(self, y, classes, first_call):
        """Targets for the network: class indices (softmax, hinge) or a 0/1 matrix (sigmoid).
        On the first call, fix ``classes_`` from ``classes`` (partial_fit) or ``y``."""
        if self._sigmoid_outputs:
            if first_call:
                binarizer = LabelBinarizer()
                multilabel = type_of_target(y).startswith("multilabel")
                binarizer.fit(y if classes is None or multilabel else classes)
                if not multilabel and len(binarizer.classes_) < 2:
                    raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; "
                                     f"got 1 class ({binarizer.classes_[0]!r})")
                self._binarizer = binarizer
                self.classes_ = binarizer.classes_
            self._check_labels_known(y)
            return self._binarizer.transform(y)
        if first_call:
            self.classes_ = np.unique(y if classes is None else classes)
            if len(self.classes_) < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; "
                                 f"got 1 class ({self.classes_[0]!r})")
        self._check_labels_known(y)
        return np.searchsorted(self.classes_, y).astype(np.int64)

    def _check_labels_known(self, y):
        if type_of_target(y).startswith("multilabel"):
            if self._binarizer.y_type_ != "multilabel-indicator" or y.shape[1] != len(self.classes_):
                raise ValueError(f"y is a multilabel indicator matrix with {y.shape[1]} columns, "
                                 f"but the classifier was set up for classes {self.classes_!r}")
            return
        unknown = np.setdiff1d(y, self.classes_)
        if unknown.size:
            raise ValueError(f"y contains labels {unknown!r} that are not in classes_ "
                             f"{self.classes_!r}")

    def _fit(self, X, y, sample_weight, classes, incremental):
        self._check_params(incremental)
        first_call = self._first_call(incremental)
        if (not first_call and classes is not None
                and not np.array_equal(np.unique(classes), self.classes_)):
            raise ValueError(f"classes={classes!r} differs from classes_={self.classes_!r} set by "
                             "the first call to partial_fit")
        X, y = self._validate_Xy(X, y, reset=first_call)
        if (incremental and first_call and classes is None
                and not type_of_target(y).startswith("multilabel")):
            raise ValueError("classes must be passed on the first call to partial_fit")
        if not (first_call or incremental or type_of_target(y).startswith("multilabel")):
            seen = np.unique(y)
            if not np.array_equal(seen, self.classes_):  # scikit-learn's rule and message
                raise ValueError("warm_start can only be used where `y` has the same classes as "
                                 f"in the previous call to fit. Previously got {self.classes_}, "
                                 f"`y` has {seen}")
        sample_weight = self._check_weights(sample_weight, X)
        targets = self._encode(y, classes, first_call)
        if first_call:
            self.n_outputs_ = targets.shape[1] if targets.ndim == 2 else len(self.classes_)
        return self._fit_network(X, y, targets, sample_weight, first_call, incremental)

    def _stratify_by(self, y):
        # Every single-label target, binary or multiclass; see docs/sklearn.md for how
        # this differs from scikit-learn's MLP, which stratifies binary targets only.
        return y.ndim == 1

    def _score_raw(self, raw, y, sample_weight):
        return accuracy_score(y, self._labels(raw), sample_weight=sample_weight)

    def fit(self, X, y, sample_weight=None):
        """Train a fresh network on ``(X, y)`` for up to ``max_iter`` epochs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), or (n_samples, n_classes) 0/1 indicator
            matrix (multilabel, ``binary_cross_entropy`` only)
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative weight of each row, not all zero; rescaled to mean 1 before
            training (see the class docstring).  With ``early_stopping`` the validation
            score is weighted too.

        Returns
        -------
        self
        """
        return self._fit(X, y, sample_weight, classes=None, incremental=False)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over ``(X, y)``, continuing from the current weights.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_classes)
        sample_weight : array-like of shape (n_samples,), optional
            As for :meth:`fit`, rescaled to mean 1 over this call's rows.
        classes : array-like of shape (n_classes,), optional
            Every label the classifier will ever see; required on the first call (not for
            multilabel targets), then optional and must not change.  It comes after
            ``sample_weight``, as in scikit-learn's ``MLPClassifier.partial_fit``.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            With ``early_stopping=True``, as scikit-learn's does.
        """
        return self._fit(X, y, sample_weight, classes=classes, incremental=True)

    def decision_function(self, X):
        """Raw output scores (float64): ``(n_samples,)`` for two classes (positive means
        ``classes_[1]``), else ``(n_samples, n_classes)``."""
        raw = self._raw(X)
        if len(self.classes_) == 2 and not self._is_multilabel():
            return raw[:, 0] if raw.shape[1] == 1 else raw[:, 1] - raw[:, 0]
        return raw

    def _fitted_sigmoid(self):
        # The fitted network decides, not a loss changed by set_params since.
        return self.model_.loss == "binary_cross_entropy"

    def _is_multilabel(self):
        return self._fitted_sigmoid() and self._binarizer.y_type_.startswith("multilabel")

    def predict(self, X):
        """Predicted labels from ``classes_``: ``(n_samples,)``, or a 0/1 indicator matrix
        ``(n_samples, n_classes)`` for multilabel targets."""
        return self._labels(self._raw(X))

    def _labels(self, raw):
        if self._fitted_sigmoid():
            return self._binarizer.inverse_transform(raw, threshold=0.0)
        return self.classes_[np.argmax(raw, axis=1)]

    def _has_proba(self):
        if self._loss_name() == "multiclass_hinge":
            raise AttributeError("predict_proba is not available for loss='multiclass_hinge': "
                                 "its scores are not probabilities (use decision_function)")
        return True

    @available_if(_has_proba)
    def predict_proba(self, X):
        """Class probabilities, float64 of shape ``(n_samples, n_classes)``: a softmax, or
        per-class sigmoids (binary: ``[1 - p, p]``; multiclass: normalised to sum to 1;
        multilabel: each label's own probability)."""
        raw = self._raw(X)
        if self._fitted_sigmoid():
            p = 0.5 * (1.0 + np.tanh(0.5 * raw))  # the logistic sigmoid without overflow
            if raw.shape[1] == 1:
                return np.hstack([1.0 - p, p])
            if self._is_multilabel():
                return p
            return p / p.sum(axis=1, keepdims=True)
        raw -= raw.max(axis=1, keepdims=True)
        p = np.exp(raw)
        return p / p.sum(axis=1, keepdims=True)

    @available_if(_has_proba)
    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multilayer perceptron regressor trained by fastmlp (mean squared error by default),
    with scikit-learn's estimator API.

    Parameters are those of :class:`MLPClassifier`, except ``loss``: ``"mse"`` (the
    default), ``"huber"`` or ``"l1"`` (robust to outliers), or one of their
    :mod:`fastmlp.losses` objects such as ``Huber(delta=0.5)``.  ``y`` may have several columns (multi-output regression);
    predictions are float64 of shape ``(n_samples,)`` for one output, else
    ``(n_samples, n_outputs)``.  ``score`` is R^2, and so is the ``early_stopping``
    validation score (the split is not stratified).  ``sample_weight`` as for
    :class:`MLPClassifier`.

    Attributes
    ----------
    n_features_in_, feature_names_in_, loss_curve_, best_loss_, n_iter_, model_
        As for :class:`MLPClassifier`.
    validation_scores_, best_validation_score_
        As for :class:`MLPClassifier` (R^2).
    n_outputs_ : int
        Number of target columns.
    """

    _losses = ("mse", "huber", "l1")

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, loss="mse", optimizer="adam",
                 learning_rate_init=0.001, momentum=0.9, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 weight_decay=None, clip_norm=None, batch_size="auto", max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, n_iter_no_change=10, early_stopping=False,
                 validation_fraction=0.1, dtype=None, verbose=0, warm_start=False,
                 dropout=0.0):
        super().__init__(hidden_layer_sizes, activation, loss=loss, optimizer=optimizer,
                         learning_rate_init=learning_rate_init, momentum=momentum, beta_1=beta_1,
                         beta_2=beta_2, epsilon=epsilon, weight_decay=weight_decay,
                         clip_norm=clip_norm, batch_size=batch_size, max_iter=max_iter, shuffle=shuffle,
                         random_state=random_state, tol=tol, n_iter_no_change=n_iter_no_change,
                         early_stopping=early_stopping,
                         validation_fraction=validation_fraction, dtype=dtype,
                         verbose=verbose, warm_start=warm_start, dropout=dropout)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _fit(self, X, y, sample_weight, incremental):
        self._check_params(incremental)
        first_call = self._first_call(incremental)
        X, y = validate_data(self, X, y, reset=first_call, dtype=self._input_dtype(first_call),
                             order="C", multi_output=True, y_numeric=True)
        targets = y.reshape(-1, 1) if y.ndim == 1 else y
        if first_call:
            self.n_outputs_ = targets.shape[1]
        elif targets.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {targets.shape[1]} target columns, but the model was fitted "
                             f"with {self.n_outputs_}")
        sample_weight = self._check_weights(sample_weight, X)
        return self._fit_network(X, y, targets, sample_weight, first_call, incremental)

    def _stratify_by(self, y):
        return False

    def _score_raw(self, raw, y, sample_weight):
        return r2_score(y, self._outputs(raw), sample_weight=sample_weight)

    def fit(self, X, y, sample_weight=None):
        """Train a fresh network on ``X`` ``(n_samples, n_features)`` and ``y``
        ``(n_samples,)`` or ``(n_samples, n_outputs)`` for up to ``max_iter`` epochs;
        ``sample_weight`` ``(n_samples,)`` as for :meth:`MLPClassifier.fit`.  Returns
        ``self``."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over ``(X, y)``, continuing from the current weights; ``sample_weight``
        as for :meth:`MLPClassifier.partial_fit`.  Returns ``self``; refuses
        ``early_stopping=True`` (ValueError), as scikit-learn does."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X):
        """Predictions, float64 of shape ``(n_samples,)`` (one output) or
        ``(n_samples, n_outputs)``."""
        return self._outputs(self._raw(X))

    def _outputs(self, raw):
        return raw[:, 0] if self.n_outputs_ == 1 else raw
