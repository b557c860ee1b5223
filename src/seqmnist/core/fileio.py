"""Files written so that no reader ever sees half of one, and JSON read back with clear errors.

Every file is written to a temporary name in the same folder, flushed, fsynced and renamed, so a
kill at any moment leaves either the old file or the new one under the final name.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .errors import CheckpointError, SeqmnistError, UsageError


def _umask() -> int:
    """The process's umask, read without changing it where the system shows it (Linux), since
    setting it to read it back would race with threads creating files."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(fd: int) -> None:
    """Give a file made by ``tempfile.mkstemp`` (always 0600) the permissions an ordinary
    ``open`` would: 0666 less the umask, so run files are as shareable as the user's own."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o666 & ~_umask())


def atomic_write(path: str | Path, data: bytes | str, backup: Path | None = None) -> None:
    """Write ``data`` to ``path`` so that no reader ever sees a partial file; with ``backup``,
    the file it replaces is kept under that name (renamed only once the new one is on disk).
    The file gets the permissions the umask allows, as with ``open``."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        follow_umask(fd)
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


def writable_folder(folder: str | Path) -> Path:
    """``folder``, checked (without making anything) to be a folder that can be written into
    or made: its nearest existing ancestor must be a writable folder. UsageError naming the
    problem otherwise, so that a bad --out is found before any work."""
    folder = Path(folder)
    probe = folder
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot make the folder {folder}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"cannot make the folder {folder}: {probe} is not writable")
    return folder


def claim_new_folder(parent: str | Path, base: str) -> Path:
    """Make and return a new folder ``parent/base`` (or ``base-1``, ``base-2``, ...): made with
    one ``mkdir``, so two processes choosing the same name at the same moment never share it.
    ``parent`` is made if missing; OSError when nothing can be made there."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(10_000):
        folder = parent / (base if i == 0 else f"{base}-{i}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}/{base}: 10,000 folders of that name already exist")


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
    except IsADirectoryError:  # a platform that refuses to open a folder for reading
        raise error(f"{path}: not a regular file (a folder)") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    # checked on the descriptor before it becomes a Python file (which raises IsADirectoryError)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "a pipe or device: never read"
        raise error(f"{path}: not a regular file ({kind})")
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(max_bytes + 1)
        except OSError as exc:
            raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise error(f"{path}: larger than the {max_bytes:,} bytes allowed")
    return data


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
    except ImportError:  # a lock that locks nothing would let two writers in: refuse instead
        raise SeqmnistError(f"cannot hold {path}: this system has no file locks (fcntl), so "
                            "seqmnist cannot keep two commands from writing into one folder") \
            from None
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UsageError(f"cannot write into {path.parent}: {exc.strerror or exc} (making "
                         f"its lock file {path.name})") from None
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


def stamp() -> str:
    """The local time to the second, as folder names begin with it."""
    from datetime import datetime

    return datetime.now().strftime("%Y%m%d-%H%M%S")


OUT_LOCK = ".seqmnist.lock"  # in every folder a command writes into: one command at a time


@contextmanager
def output_folder(out: str | Path | None, what: str, default: str | None = None,
                  error: type[SeqmnistError] = SeqmnistError) -> Iterator[Path]:
    """The folder a command writes into, held for the whole command. ``out`` is made if missing
    (and checked to be writable) before any work; without it a new folder ``reports/<time>-
    <default>`` is claimed at once, never shared with another command finishing in the same
    second. Another command already writing into the folder (a comparison, an explanation, a
    sweep) is ``error``, naming its process. A folder this call made and that is still empty
    when the block fails is removed again."""
    made = False
    try:
        if out is None:
            folder = claim_new_folder("reports", f"{stamp()}-{default or what}")
            made = True
        else:
            folder = Path(out)
            made = not os.path.lexists(folder)
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        target = out if out is not None else "reports"
        raise UsageError(f"cannot make the {what}'s folder {target}: {exc.strerror or exc}"
                         ) from None
    try:
        with exclusive(folder / OUT_LOCK):
            yield folder
    except LockHeld as exc:
        raise error(f"another seqmnist command (process {exc.holder or '(unknown)'}) is writing into "
                    f"{folder}; wait for it to finish, or give this {what} another --out"
                    ) from None
    except BaseException:
        if made:
            (folder / OUT_LOCK).unlink(missing_ok=True)
            with suppress(OSError):
                folder.rmdir()  # only when empty: nothing written is removed
        raise
