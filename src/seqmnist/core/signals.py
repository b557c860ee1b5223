"""Signals, handled one way everywhere: ``handling(signals, handler)`` installs a handler for the
block and puts the previous ones back after. Only the main thread can install handlers; in any
other thread the block runs with the process's handlers as they are (the main thread's own block
sees the signal and tells the others: the trainer's flag, for instance)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def handling(signals: tuple[int, ...], handler: Callable) -> Iterator[bool]:
    """Within the block, ``handler(signum, frame)`` handles ``signals``. Yields whether it was
    installed (False outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield True
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt like Ctrl-C does, so that the code
    around it can remove what it had half written before the process ends (main thread only)."""
    with handling((signal.SIGTERM,), _interrupt):
        yield
