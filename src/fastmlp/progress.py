"""What ``fit`` prints: a progress bar per epoch (``verbose=1``) or a line per epoch (``verbose=2``).

The bar is tqdm's when tqdm is installed (``pip install fastmlp[progress]``), otherwise a
plain-text one: redrawn in place on a terminal, written once per epoch, finished, when the
output is a file or a pipe (so logs hold one line per epoch, not hundreds of redraws).
"""

import sys
import time

#: Seconds between redraws of the plain-text bar.
REDRAW_SECONDS = 0.1
BAR_WIDTH = 24


def format_metrics(metrics):
    """``"loss 0.1234  accuracy 0.9500"`` from a name -> value mapping (``lr`` in ``%.4g``)."""
    return "  ".join(f"{name} {value:.4g}" if name == "lr" else f"{name} {value:.4f}"
                     for name, value in metrics.items())


def epoch_line(epoch, epochs, metrics, seconds):
    """The one line ``verbose=2`` prints per epoch."""
    return f"epoch {epoch}/{epochs}  {format_metrics(metrics)}  {seconds:.2f}s"


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


class EpochProgress:
    """A progress bar over one epoch's batches.

    Parameters
    ----------
    epoch, epochs : int
        This epoch's number and the last one's, for the label.
    n_batches : int
    stream : file-like, optional
        Defaults to ``sys.stdout``.
    use_tqdm : bool, optional
        Defaults to whether tqdm can be imported.
    """

    def __init__(self, epoch, epochs, n_batches, stream=None, use_tqdm=None):
        self.stream = sys.stdout if stream is None else stream
        self.label = f"epoch {epoch}/{epochs}"
        self.n_batches = n_batches
        self.done = 0
        self.started = time.perf_counter()
        self._last_draw = 0.0
        tqdm = _tqdm() if use_tqdm is None or use_tqdm else None
        self._bar = None
        if tqdm is not None:
            self._bar = tqdm(total=n_batches, desc=self.label, unit="batch", file=self.stream,
                             leave=True, dynamic_ncols=True)
        is_tty = getattr(self.stream, "isatty", None)
        self._redraw = self._bar is None and callable(is_tty) and is_tty()

    def update(self, batches_done, metrics):
        """``batches_done`` of the epoch's batches are finished; ``metrics`` are running values."""
        advance, self.done = batches_done - self.done, batches_done
        if self._bar is not None:
            self._bar.set_postfix_str(format_metrics(metrics), refresh=False)
            self._bar.update(advance)
            return
        now = time.perf_counter()
        if self._redraw and now - self._last_draw >= REDRAW_SECONDS:
            self._last_draw = now
            self.stream.write("\r" + self._text(metrics))
            self.stream.flush()

    def close(self, metrics, finished=True):
        """End the bar with the epoch's final ``metrics`` (validation ones included).

        ``finished=False`` (training stopped partway) leaves it at the batches done.
        """
        advance = self.n_batches - self.done if finished else 0
        self.done += advance
        if self._bar is not None:
            self._bar.set_postfix_str(format_metrics(metrics), refresh=False)
            self._bar.update(advance)
            self._bar.close()
            return
        self.stream.write(("\r" if self._redraw else "") + self._text(metrics) + "\n")
        self.stream.flush()

    def _text(self, metrics):
        filled = BAR_WIDTH * self.done // self.n_batches
        bar = "=" * filled + (">" if filled < BAR_WIDTH else "") + "." * (BAR_WIDTH - filled - 1)
        seconds = time.perf_counter() - self.started
        return (f"{self.label} [{bar[:BAR_WIDTH]}] {self.done}/{self.n_batches}  "
                f"{format_metrics(metrics)}  {seconds:.2f}s")
