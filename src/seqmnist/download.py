"""Downloading and verifying dataset files.

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
from dataclasses import dataclass
from pathlib import Path

from .data import cache_dir, find_file, get_spec, search_dirs
from .errors import DataError, DownloadError, UsageError

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


def _stream(url: str, target: Path, timeout: float, progress: bool) -> None:
    from tqdm.auto import tqdm

    req = urllib.request.Request(url, headers={"User-Agent": "seqmnist"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(target, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=Path(url).name,
                  disable=not progress, leave=False) as bar:
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
        if total is not None and out.tell() != total:
            raise DataError(f"connection closed after {out.tell()} of {total} bytes")
        out.flush()
        os.fsync(out.fileno())


def download_file(base: str, expected: str, dest: Path, mirrors: list[str], retries: int = 3,
                  timeout: float = 30.0, backoff: float = 1.0, progress: bool = True) -> Path:
    """Fetch ``base``.gz from the first mirror that serves the right content into ``dest``."""
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
                _stream(url, tmp, timeout, progress)
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


def fetch(name: str, dest: str | Path | None = None, mirrors: list[str] | None = None,
          progress: bool = True, **kwargs) -> Path:
    """Download every file of dataset ``name`` (default into the user cache); return the folder."""
    spec = get_spec(name)
    if not spec.downloadable:
        raise UsageError(f"dataset {name!r} is not downloaded: {spec.description}")
    folder = Path(dest) if dest is not None else cache_dir() / name
    if mirrors is None and os.environ.get("SEQMNIST_MIRRORS"):
        # A local or institutional mirror: space-separated base URLs, "{name}" is the dataset.
        mirrors = [m.replace("{name}", name) for m in os.environ["SEQMNIST_MIRRORS"].split()]
    for base in spec.files.values():
        existing = find_file(folder, base)
        if existing is not None and sha256_of_content(existing) == spec.sha256[base]:
            continue
        try:
            download_file(base, spec.sha256[base], folder, mirrors or spec.mirrors,
                          progress=progress, **kwargs)
        except DownloadError as exc:
            raise DataError(str(exc)) from None
    return folder


@dataclass
class FileCheck:
    path: Path | None
    expected: str
    actual: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.actual == self.expected


def verify(name: str, data_dir: str | Path | None = None) -> list[FileCheck]:
    """Check each file of ``name`` found on disk (first folder holding it) against the registry."""
    spec = get_spec(name)
    checks = []
    for base in spec.files.values():
        path = next((p for d in search_dirs(name, data_dir) if (p := find_file(d, base))), None)
        if path is None:
            checks.append(FileCheck(None, spec.sha256[base], None, f"{base}: not found"))
            continue
        try:
            checks.append(FileCheck(path, spec.sha256[base], sha256_of_content(path)))
        except DataError as exc:
            checks.append(FileCheck(path, spec.sha256[base], None, str(exc)))
    return checks
