"""Progress on anything long, wherever its output goes: a bar on a terminal (tqdm), a bar in a
notebook (tqdm's widget, with the notebook extra's ipywidgets), and where output is neither (a
file, a pipe, CI's log) a plain line at most every ``INTERVAL`` seconds, so a log shows the run
moving instead of nothing for minutes.

``bar()`` returns an object with the part of tqdm's interface the commands use: ``update``,
``set_postfix``, ``close``, ``n``, ``total``, and use as a context manager.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

INTERVAL = 5.0  # seconds between two progress lines when output is not a terminal


def in_notebook() -> bool:
    """Whether this runs inside a Jupyter kernel (where tqdm draws a widget)."""
    shell = sys.modules.get("IPython")
    try:
        return shell is not None and type(shell.get_ipython()).__name__ == "ZMQInteractiveShell"
    except Exception:  # noqa: BLE001 - any odd IPython: not a notebook
        return False


def on_terminal(stream=None) -> bool:
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Lines:
    """A progress line every ``interval`` seconds of work: "desc: 120/235 batch (51%), 12 s,
    loss=0.23". The first comes after ``interval`` seconds (a step shorter than that prints
    nothing), and the last when it closes, if any came before."""

    def __init__(self, total: float | None, desc: str = "", unit: str = "it",
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic,
                 write: Callable[[str], None] | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.interval = INTERVAL if interval is None else interval
        self.clock = clock
        self.write = write or (lambda text: print(text, file=sys.stderr, flush=True))
        self.n = 0
        self.postfix = ""
        self.started = self.last = clock()
        self.printed = 0
        self.closed = False

    def line(self) -> str:
        done = f"{self.n:,.0f}" + (f"/{self.total:,.0f}" if self.total else "") + f" {self.unit}"
        if self.total:
            done += f" ({100 * self.n / self.total:.0f}%)"
        text = f"{self.desc}: {done}, {self.clock() - self.started:.0f} s"
        return text + (f", {self.postfix}" if self.postfix else "")

    def _tick(self) -> None:
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self.printed += 1
            self.write(self.line())

    def update(self, n: float = 1) -> None:
        self.n += n
        self._tick()

    def refresh(self) -> None:
        """Time has passed without an update: a line if one is due."""
        self._tick()

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed and self.printed:
            self.write(self.line())
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def bar(total: float | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
        **tqdm_options):
    """A progress bar for ``total`` units of work: tqdm's on a terminal or in a notebook, a
    ``Lines`` elsewhere; with ``enabled`` False, a silent one. ``tqdm_options`` (leave,
    bar_format, unit_scale, ...) go to tqdm only."""
    if enabled and not in_notebook() and not on_terminal():
        return Lines(total, desc, unit)
    if enabled and in_notebook():
        try:
            import ipywidgets  # noqa: F401 - tqdm's notebook bar draws with it
            from tqdm.notebook import tqdm
        except ImportError:  # no widgets: lines, not tqdm's "IProgress not found" warning
            return Lines(total, desc, unit)
        return tqdm(total=total, desc=desc, unit=unit, **tqdm_options)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, **tqdm_options)


@contextmanager
def beside(bar):
    """Around output written while ``bar`` is shown, by any writer (print, a logger): a tqdm bar
    is cleared first and drawn again after (tqdm's own ``write`` does the same); ``Lines``
    need nothing."""
    if isinstance(bar, Lines):
        yield
    else:
        with type(bar).external_write_mode():
            yield


def print_beside(bar, text: str) -> None:
    """Print a line to standard output without breaking a bar drawn on the terminal."""
    with beside(bar):
        print(text, flush=True)
