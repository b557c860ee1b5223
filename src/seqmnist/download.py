"""Downloading and checking files: the mechanics, with no knowledge of the dataset registry
(``data.fetch`` and ``data.verify`` use these for a registered dataset).

Each file is streamed to a temporary name beside its final one, its *decompressed* bytes are checked
against the SHA-256 in the registry (the gzip wrapper differs between mirrors, the content does not),
and only then renamed into place. A failed mirror is retried with backoff, then the next one is tried.
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
from pathlib import Path

from .errors import DataError, DownloadError

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


def find_file(folder: Path, base: str) -> Path | None:
    """``folder/base.gz`` or ``folder/base``, whichever is a file (gzip first), or None."""
    for candidate in (folder / f"{base}.gz", folder / base):
        if candidate.is_file():
            return candidate
    return None


class TooBig(DataError):
    """The mirror sends more than the file can be: a wrong file, not worth retrying."""


def limits_for(size: int | None) -> tuple[int | None, float | None]:
    """(most bytes, most seconds) to download a gzip whose content is ``size`` bytes: gzip adds
    little even to incompressible data; a transfer slower than about 100 kB/s (after two minutes
    of grace) is given up on, so a mirror dripping a byte at a time cannot hold us forever."""
    if not size:
        return None, None
    return size + size // 1000 + 65536, 120.0 + size / 100_000


def _stream(url: str, target: Path, timeout: float, progress: bool,
            max_bytes: int | None = None, seconds: float | None = None) -> None:
    from tqdm.auto import tqdm

    deadline = time.monotonic() + seconds if seconds else None
    req = urllib.request.Request(url, headers={"User-Agent": "seqmnist"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(target, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        if max_bytes is not None and total is not None and total > max_bytes:
            raise TooBig(f"the mirror offers {total:,} bytes, more than the {max_bytes:,} this "
                         "file can be")
        with tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name,
                  disable=not progress, leave=False) as bar:
            while chunk := resp.read1(CHUNK):  # whatever has arrived: deadlines are checked
                out.write(chunk)
                bar.update(len(chunk))
                if max_bytes is not None and out.tell() > max_bytes:
                    raise TooBig(f"the mirror sent more than the {max_bytes:,} bytes this file "
                                 "can be")
                if deadline is not None and time.monotonic() > deadline:
                    raise DataError(f"too slow: {out.tell():,} bytes in {seconds:.0f} s")
        if total is not None and out.tell() != total:
            raise DataError(f"connection closed after {out.tell()} of {total} bytes")
        out.flush()
        os.fsync(out.fileno())


def download_file(base: str, expected: str, dest: Path, mirrors: list[str], retries: int = 3,
                  timeout: float = 30.0, backoff: float = 1.0, progress: bool = True,
                  size: int | None = None) -> Path:
    """Fetch ``base``.gz from the first mirror that serves the right content into ``dest``.
    ``size`` (the content's length, when known) caps the bytes and the time of each attempt."""
    max_bytes, seconds = limits_for(size)
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / f"{base}.gz"
    problems: list[str] = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{base}.gz"
        for attempt in range(retries):
            fd, tmp_name = tempfile.mkstemp(prefix=f".{base}.", suffix=".part", dir=dest)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                _stream(url, tmp, timeout, progress, max_bytes, seconds)
                with open(tmp, "rb") as fh:
                    if fh.read(2) != b"\x1f\x8b":
                        raise DataError("response is not gzip data (an error page?)")
                got = sha256_of_content(tmp)
                if got != expected:
                    # A wrong file will not fix itself on retry: go to the next mirror.
                    problems.append(f"{url}: checksum mismatch, expected {expected}, got {got}")
                    break
                os.replace(tmp, final)
                return final
            except TooBig as exc:
                problems.append(f"{url}: {exc}")
                break  # a wrong file will not fix itself on retry
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
    raise DownloadError(f"could not download {base}.gz:\n  " + "\n  ".join(problems))


def fetch_files(files: dict[str, str], folder: Path, mirrors: list[str], progress: bool = True,
                sizes: dict[str, int] | None = None, **kwargs) -> Path:
    """Make ``folder`` hold every file ``base`` of ``files`` ({base: sha256 of its content};
    ``sizes``: {base: content length}, which caps each download's bytes and time):
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
                    if sha256_of_content(existing) == expected:
                        continue
                except DataError:
                    pass  # corrupt: download a good copy over it
            final = download_file(base, expected, folder, mirrors, progress=progress,
                                  size=(sizes or {}).get(base), **kwargs)
            if existing is not None and existing != final:
                existing.unlink(missing_ok=True)  # the raw copy that was wrong
    except BaseException:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
    return folder
