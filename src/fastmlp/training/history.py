"""What a fit returns (:class:`History`) and how it fails when the loss diverges."""


class DivergenceError(FloatingPointError):
    """Training produced a NaN or infinite loss; the model keeps finite weights."""


class History:
    """What :meth:`Sequential.fit` returns: per-epoch metrics.

    Attributes
    ----------
    history : dict of str -> list of float
        One value per epoch of each metric: ``"loss"`` (mean training loss of the epoch,
        measured during it), ``"accuracy"`` (classifiers: training rows predicted right
        just before their step), ``"lr"`` (learning rate used) and, with validation data,
        ``"val_loss"`` and ``"val_accuracy"`` (classifiers); when the optimizer clips
        gradients (``clip_norm``/``clip_value``), ``"grad_norm"``: the mean over the epoch's
        steps of the gradient's global L2 norm before clipping.
    epoch : list of int
        The 1-based epoch numbers of this ``fit`` call.
    """

    def __init__(self):
        self.history = {"loss": []}
        self.epoch = []

    def __getitem__(self, key):
        return self.history[key]

    def __repr__(self):
        last = {k: round(v[-1], 6) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"

    def plot(self, path=None, metrics=None):
        """Draw the training and validation curves (needs matplotlib).

        One panel per metric family: ``loss`` with ``val_loss``, ``accuracy`` with
        ``val_accuracy``, over the epoch numbers.

        Parameters
        ----------
        path : str or os.PathLike, optional
            Save the figure there (format from the extension: ``.png``, ``.pdf``, ``.svg``).
        metrics : list of str, optional
            Training metrics to draw, each with its ``val_`` twin when present; default
            ``loss`` and, for classifiers, ``accuracy``.

        Returns
        -------
        matplotlib.figure.Figure
            Made without pyplot, so no window opens and no GUI backend is needed.
        """
        try:
            from matplotlib.figure import Figure
            from matplotlib.ticker import MaxNLocator
        except ImportError:
            raise ImportError("History.plot needs matplotlib: pip install matplotlib "
                              "(or fastmlp[plot])") from None
        if not self.epoch:
            raise ValueError("this History has no epochs to plot")
        if metrics is None:
            metrics = [m for m in ("loss", "accuracy") if m in self.history]
        for name in metrics:
            if name not in self.history:
                raise ValueError(f"no metric {name!r} in this History; it has "
                                 f"{', '.join(self.history)}")
        figure = Figure(figsize=(5.5 * len(metrics), 4), layout="constrained")
        for axes, name in zip(figure.subplots(1, len(metrics), squeeze=False)[0], metrics):
            axes.plot(self.epoch, self.history[name], marker=".", label=f"training {name}")
            if f"val_{name}" in self.history:
                axes.plot(self.epoch, self.history[f"val_{name}"], marker=".",
                          label=f"validation {name}")
            axes.set_xlabel("epoch")
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.set_ylabel(name)
            axes.grid(alpha=0.3)
            axes.legend()
        if path is not None:
            figure.savefig(path, dpi=100)
        return figure
