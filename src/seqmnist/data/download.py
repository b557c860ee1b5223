"""Downloading and checking files: the mechanics, with no knowledge of the dataset registry
(``data.fetch`` and ``data.verify`` use these for a registered dataset).

Each file is streamed to a temporary name beside its final one, its *decompressed* bytes are checked
against the SHA-256 in the registry (the gzip wrapper differs between mirrors, the content does not),
and only then renamed into place. A failed mirror is retried with backoff, then the next one is tried.
Where a publisher gives only the hash of its .gz files (``digest=sha256_of_file``) or one MD5 for
a zip of many files (``fetch_archive``), that is what is checked.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import DataError, DownloadError
from ..core.fileio import atomic_write, follow_umask
from ..core.progress import bar as progress_bar

CHUNK = 1 << 16


def sha256_of_content(path: Path) -> str:
    """SHA-256 of a file's decompressed bytes (the file may be gzip or raw)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    return digest.hexdigest()


def sha256_of_file(path: Path) -> str:
    """SHA-256 of a file's bytes as they are (a .gz as its mirror serves it)."""
    return _hash_file(path, hashlib.sha256())


def md5_of_file(path: Path) -> str:
    """MD5 of a file's bytes: only for checking an archive whose publisher gives no other hash."""
    return _hash_file(path, hashlib.md5(usedforsecurity=False))


def _hash_file(path: Path, digest) -> str:
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def find_file(folder: Path, base: str) -> Path | None:
    """``folder/base.gz`` or ``folder/base``, whichever is a file (gzip first), or None."""
    for candidate in (folder / f"{base}.gz", folder / base):
        if candidate.is_file():
            return candidate
    return None


class TooBig(DataError):
    """The mirror sends more than the file can be: a wrong file, not worth retrying."""


class TooSlow(DataError):
    """The mirror drips: under the overall deadline's rate. Given up once, not retried (each try
    would wait the whole deadline again); the next mirror is tried."""


def limits_for(size: int | None) -> tuple[int | None, float | None]:
    """(most bytes, most seconds) to download a gzip whose content is ``size`` bytes: gzip adds
    little even to incompressible data; a transfer slower than about 100 kB/s (after two minutes
    of grace) is given up on, so a mirror dripping a byte at a time cannot hold us forever."""
    if not size:
        return None, None
    return size + size // 1000 + 65536, 120.0 + size / 100_000


def _stream(url: str, target: Path, timeout: float, progress: bool,
            max_bytes: int | None = None, seconds: float | None = None) -> None:
    deadline = time.monotonic() + seconds if seconds else None
    req = urllib.request.Request(url, headers={"User-Agent": "seqmnist"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(target, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        if max_bytes is not None and total is not None and total > max_bytes:
            raise TooBig(f"the mirror offers {total:,} bytes, more than the {max_bytes:,} this "
                         "file can be")
        with progress_bar(total=total, unit="B", desc=Path(url).name, enabled=progress,
                          unit_scale=True, leave=False) as bar:
            while chunk := resp.read1(CHUNK):  # whatever has arrived: deadlines are checked
                out.write(chunk)
                bar.update(len(chunk))
                if max_bytes is not None and out.tell() > max_bytes:
                    raise TooBig(f"the mirror sent more than the {max_bytes:,} bytes this file "
                                 "can be")
                if deadline is not None and time.monotonic() > deadline:
                    raise TooSlow(f"too slow: {out.tell():,} bytes in {seconds:.0f} s")
        if total is not None and out.tell() != total:
            raise DataError(f"connection closed after {out.tell()} of {total} bytes")
        out.flush()
        os.fsync(out.fileno())


def download_file(base: str, expected: str, dest: Path, mirrors: list[str], retries: int = 3,
                  timeout: float = 30.0, backoff: float = 1.0, progress: bool = True,
                  size: int | None = None, digest=sha256_of_content, suffix: str = ".gz",
                  gzip_data: bool = True) -> Path:
    """Fetch ``base`` + ``suffix`` from the first mirror that serves the right file into
    ``dest``: ``digest(file) == expected`` (the content's SHA-256 unless told otherwise).
    ``size`` (the content's length, when known) caps the bytes and the time of each attempt."""
    max_bytes, seconds = limits_for(size)
    dest.mkdir(parents=True, exist_ok=True)
    with _downloading_into(dest) as alone:
        if alone:  # no other download into this folder runs: its partial files are a killed one's
            for stale in dest.glob(f".{base}{suffix}.*.part"):
                stale.unlink(missing_ok=True)
        return _download(base, expected, dest, mirrors, retries, timeout, backoff, progress,
                         max_bytes, seconds, digest, suffix, gzip_data)


def _download(base, expected, dest, mirrors, retries, timeout, backoff, progress, max_bytes,
              seconds, digest, suffix, gzip_data) -> Path:
    final = dest / f"{base}{suffix}"
    problems: list[str] = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{base}{suffix}"
        for attempt in range(retries):
            fd, tmp_name = tempfile.mkstemp(prefix=f".{base}{suffix}.", suffix=".part", dir=dest)
            follow_umask(fd)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                _stream(url, tmp, timeout, progress, max_bytes, seconds)
                with open(tmp, "rb") as fh:
                    if gzip_data and fh.read(2) != b"\x1f\x8b":
                        raise DataError("response is not gzip data (an error page?)")
                got = digest(tmp)
                if got != expected:
                    # A wrong file will not fix itself on retry: go to the next mirror.
                    problems.append(f"{url}: checksum mismatch, expected {expected}, got {got}")
                    break
                os.replace(tmp, final)
                return final
            except (TooBig, TooSlow) as exc:
                problems.append(f"{url}: {exc}")
                break  # a wrong file will not fix itself on retry; a dripping mirror is slow
            except urllib.error.HTTPError as exc:
                problems.append(f"{url} (try {attempt + 1}/{retries}): HTTP {exc.code} {exc.reason}")
                if 400 <= exc.code < 500:
                    break  # the mirror does not have it; retrying will not help
                if attempt + 1 < retries:
                    time.sleep(backoff * 2**attempt)
            except (urllib.error.URLError, OSError, DataError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                problems.append(f"{url} (try {attempt + 1}/{retries}): {reason}")
                if attempt + 1 < retries:
                    time.sleep(backoff * 2**attempt)
            finally:
                tmp.unlink(missing_ok=True)
    raise DownloadError(f"could not download {base}{suffix}:\n  " + "\n  ".join(problems))


def fetch_files(files: dict[str, str], folder: Path, mirrors: list[str], progress: bool = True,
                sizes: dict[str, int] | None = None, digest=sha256_of_content, **kwargs) -> Path:
    """Make ``folder`` hold every file ``base`` of ``files`` ({base: ``digest`` of it, by default
    the SHA-256 of its content}; ``sizes``: {base: content length}, which caps each download's
    bytes and time):
    files already there with the right content are kept; missing, corrupt or wrong ones are
    downloaded again (a wrong file is replaced only once a good copy is on disk). Partial files
    left by a killed download are removed first. A folder this call created is removed again if
    nothing could be downloaded into it."""
    created = not folder.exists()
    if folder.is_dir():
        for stale in folder.glob(".*.part"):
            stale.unlink(missing_ok=True)
    try:
        for base, expected in files.items():
            existing = find_file(folder, base)
            if existing is not None:
                try:
                    if digest(existing) == expected:
                        continue
                except DataError:
                    pass  # corrupt: download a good copy over it
            final = download_file(base, expected, folder, mirrors, progress=progress,
                                  size=(sizes or {}).get(base), digest=digest, **kwargs)
            if existing is not None and existing != final:
                existing.unlink(missing_ok=True)  # the raw copy that was wrong
    except BaseException:
        if created:
            _remove_if_empty(folder)
        raise
    return folder


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` (which this fetch made) if nothing was put in it."""
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


@contextmanager
def _downloading_into(folder: Path) -> Iterator[bool]:
    """Hold ``folder`` for one download at a time (an flock on the folder itself: no lock file
    is left among the data). Yields whether it is held; where the system has no flock, False."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)


SUMS = "SHA256SUMS"  # beside files taken out of a checked archive: their content's hashes


def fetch_archive(name: str, md5: str, most_bytes: int, members: dict[str, str], folder: Path,
                  archives: Path, mirrors: list[str], sizes: dict[str, int] | None = None,
                  progress: bool = True, **kwargs) -> Path:
    """Make ``folder`` hold ``base``.gz for every ``base`` of ``members`` ({base: its path inside
    the archive}), taken out of the zip ``name`` (kept in ``archives``, shared by the datasets it
    holds) once its MD5 is ``md5``. Each member is checked before it is taken out (its size
    against ``sizes``, so a zip bomb is refused unread; gzip data), written under a temporary
    name and renamed; SHA256SUMS records the content hash of each, for ``data verify``."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _take_out(name, md5, most_bytes, members, folder, archives, mirrors, sizes, progress,
                  **kwargs)
    except BaseException:
        if created:
            _remove_if_empty(folder)
        raise
    return folder


def _take_out(name, md5, most_bytes, members, folder, archives, mirrors, sizes, progress,
              **kwargs) -> None:
    import zipfile

    archive = archives / name
    if not (archive.is_file() and md5_of_file(archive) == md5):
        archive = download_file(name, md5, archives, mirrors, progress=progress, size=most_bytes,
                                digest=md5_of_file, suffix="", gzip_data=False, **kwargs)
    sums = {}
    try:
        with zipfile.ZipFile(archive) as z:
            for base, member in members.items():
                try:
                    info = z.getinfo(member)
                except KeyError:
                    raise DataError(f"{archive}: no {member} in the archive") from None
                cap = limits_for((sizes or {}).get(base))[0]
                if cap is not None and info.file_size > cap:
                    raise DataError(f"{archive}: {member} claims {info.file_size:,} bytes, more "
                                    f"than the {cap:,} it can be")
                final = folder / f"{base}.gz"
                fd, tmp_name = tempfile.mkstemp(prefix=f".{base}.", suffix=".part", dir=folder)
                follow_umask(fd)
                tmp = Path(tmp_name)
                try:
                    with os.fdopen(fd, "wb") as out, z.open(info) as src:
                        while chunk := src.read(CHUNK):
                            out.write(chunk)
                            if cap is not None and out.tell() > cap:
                                raise DataError(f"{archive}: {member} is larger than it said")
                    with open(tmp, "rb") as fh:
                        if fh.read(2) != b"\x1f\x8b":
                            raise DataError(f"{archive}: {member} is not gzip data")
                    sums[base] = sha256_of_content(tmp)
                    os.replace(tmp, final)
                finally:
                    tmp.unlink(missing_ok=True)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{archive}: not a readable zip archive ({exc})") from None
    atomic_write(folder / SUMS, "".join(f"{h}  {b}\n" for b, h in sorted(sums.items())))


def recorded_sums(folder: Path) -> dict[str, str]:
    """{base: content SHA-256} from ``folder``'s SHA256SUMS ({} when there is none)."""
    path = folder / SUMS
    if not path.is_file() or path.stat().st_size > 65536:
        return {}
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        digest, _, base = line.partition("  ")
        if len(digest) == 64 and base:
            out[base] = digest
    return out
