"""Files written so that no reader ever sees half of one, and JSON read back with clear errors.

Every file is written to a temporary name in the same folder, flushed, fsynced and renamed, so a
kill at any moment leaves either the old file or the new one under the final name.
"""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CheckpointError, SeqmnistError


def atomic_write(path: str | Path, data: bytes | str, backup: Path | None = None) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a partial file; with ``backup``,
    the file it replaces is kept under that name (renamed only once the new one is on disk)."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        if backup is not None and path.exists():
            os.replace(path, backup)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_safe(obj):
    """``obj`` with every NaN or infinity replaced by None, so that it is valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj, indent: int | None = 2) -> str:
    """Strict JSON: undefined numbers (NaN, inf) become null instead of invalid tokens."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def write_json(path: str | Path, obj) -> None:
    atomic_write(path, dumps(obj) + "\n")


MAX_JSON = 64 << 20  # no JSON file of a run comes near this


def read_json(path: Path, default=None):
    """A JSON file of a run, or ``default`` when there is none. Only a regular file is read (a
    named pipe in its place is refused, not waited on), at most MAX_JSON bytes of it."""
    path = Path(path)
    if not os.path.lexists(path):
        return default
    data = read_regular_file(path, MAX_JSON, CheckpointError)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: unreadable ({str(exc)[:200]})") from None


def read_regular_file(path: str | Path, max_bytes: int,
                      error: type[SeqmnistError] = SeqmnistError) -> bytes:
    """The bytes of a regular file, at most ``max_bytes`` of them (one more means too large). A
    FIFO or device (a named pipe, a link to /dev/zero) is refused without reading it: the file is
    opened non-blocking and checked with fstat before any byte is read. Failures raise ``error``."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{path}: not a regular file (a pipe, device or folder is never read)")
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise error(f"{path}: larger than the {max_bytes:,} bytes allowed")
    return data


@contextmanager
def terminate_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt like Ctrl-C does, so that the code
    around it can remove what it had half written before the process ends (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum, _frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class LockHeld(SeqmnistError):
    """Another process holds the lock (its PID, when it wrote one, is ``holder``)."""

    def __init__(self, path: Path, holder: int | None):
        self.path, self.holder = path, holder
        super().__init__(f"{path} is locked by process {holder if holder else '(unknown)'}")


@contextmanager
def exclusive(path: str | Path, wait: bool = False,
              waiting: Callable[[int | None], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing; the holder's PID is written in it)
    for the block. Taken by another process: ``LockHeld`` at once, or with ``wait`` the call
    blocks until it is free (``waiting(holder_pid)`` is called first). The operating system
    releases the lock when its holder exits, however it exits, so no lock is ever stale."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: nothing to hold
        yield
        return
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            holder = int(text) if text.isdigit() else None
            if not wait:
                raise LockHeld(path, holder) from None
            if waiting is not None:
                waiting(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
