"""Where a dataset's files are: the folders looked in (an explicit --data-dir, SEQMNIST_DATA, the
cache), fetching them from the registry's mirrors, and verifying them against its checksums."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import DataError, DownloadError, UsageError
from .datasets import get_spec
from .download import (
    fetch_archive,
    fetch_files,
    find_file,
    recorded_sums,
    sha256_of_content,
    sha256_of_file,
)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "seqmnist"


def search_dirs(name: str, data_dir: str | Path | None = None) -> list[Path]:
    """The folders looked in for dataset ``name``, in order. An explicit ``data_dir`` is the only
    place looked in: the files are there or it is an error, never silently found elsewhere."""
    if data_dir is not None:
        return [Path(data_dir)]
    dirs: list[Path] = []
    if os.environ.get("SEQMNIST_DATA"):
        dirs.append(Path(os.environ["SEQMNIST_DATA"]) / name)
    dirs.append(cache_dir() / name)
    dirs.append(Path("/usr/share/datasets") / name)
    return dirs


def locate(name: str, data_dir: str | Path | None = None) -> Path | None:
    """The first folder holding all of the dataset's files, or None."""
    spec = get_spec(name)
    for folder in search_dirs(name, data_dir):
        if all(find_file(folder, f) for f in spec.files.values()):
            return folder
    return None


def not_found_message(name: str, data_dir: str | Path | None, reason: str = "") -> str:
    looked = "\n".join(f"  - {d}" for d in search_dirs(name, data_dir))
    files = ", ".join(f"{f}.gz" for f in get_spec(name).files.values())
    lines = [f"dataset {name!r} not found{': ' + reason if reason else ''}.", "Looked in:", looked,
             f"Supply the files ({files}) with --data-dir DIR, or set SEQMNIST_DATA to a folder",
             f"holding {name}/, or run `seqmnist data fetch {name}` where the network is reachable.",
             "To try everything offline now, use the bundled digits: --dataset digits"]
    return "\n".join(lines)


def fetch(name: str, dest: str | Path | None = None, mirrors: list[str] | None = None,
          progress: bool = True, **kwargs) -> Path:
    """Download every file of dataset ``name`` (default into the user cache); return the folder.
    ``SEQMNIST_MIRRORS`` ("URL ...", ``{name}`` for the dataset) replaces the registry's mirrors."""
    spec = get_spec(name)
    if not spec.downloadable:
        raise UsageError(f"dataset {name!r} is not downloaded: {spec.description}")
    folder = Path(dest) if dest is not None else cache_dir() / name
    if mirrors is None and os.environ.get("SEQMNIST_MIRRORS"):
        mirrors = [m.replace("{name}", name) for m in os.environ["SEQMNIST_MIRRORS"].split()]
    try:
        if spec.checksum_kind == "archive":
            a = spec.archive
            members = {base: f"{a.folder}/{base}.gz" for base in spec.files.values()}
            return fetch_archive(a.name, a.md5, a.most_bytes, members, folder,
                                 cache_dir() / "archives" if dest is None else folder,
                                 mirrors or spec.mirrors, sizes=spec.sizes, progress=progress,
                                 **kwargs)
        gz = spec.checksum_kind == "gz"
        files = {base: (spec.gz_sha256 if gz else spec.sha256)[base]
                 for base in spec.files.values()}
        return fetch_files(files, folder, mirrors or spec.mirrors, progress=progress,
                           sizes=spec.sizes, digest=sha256_of_file if gz else sha256_of_content,
                           **kwargs)
    except DownloadError as exc:
        raise DataError(str(exc)) from None


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
    """Check each file of ``name`` found on disk (first folder holding it) against the registry:
    its content's SHA-256; where the publisher gives only the .gz's hash, the .gz itself (a
    decompressed copy cannot be checked); for files taken out of a checked archive, the hashes
    recorded then (SHA256SUMS beside them)."""
    spec = get_spec(name)
    checks = []
    for base in spec.files.values():
        path = next((p for d in search_dirs(name, data_dir) if (p := find_file(d, base))), None)
        kind = spec.checksum_kind
        expected = spec.sha256.get(base) or spec.gz_sha256.get(base) or \
            (recorded_sums(path.parent).get(base) if path is not None else None) or "?"
        if path is None:
            checks.append(FileCheck(None, expected, None, f"{base}: not found"))
            continue
        try:
            if kind == "content":
                checks.append(FileCheck(path, expected, sha256_of_content(path)))
            elif kind == "gz" and path.suffix == ".gz":
                checks.append(FileCheck(path, expected, sha256_of_file(path)))
            elif kind == "gz":
                checks.append(FileCheck(path, expected, None, f"{path}: the registry holds the "
                                        "hash of the .gz file its mirror serves; a decompressed "
                                        "copy cannot be checked (keep the .gz)"))
            elif expected != "?":
                checks.append(FileCheck(path, expected, sha256_of_content(path)))
            else:
                checks.append(FileCheck(path, expected, None, f"{path}: its publisher gives one "
                                        "MD5 for the whole archive and none per file; fetch it "
                                        "with `seqmnist data fetch` to have it checked"))
        except DataError as exc:
            checks.append(FileCheck(path, expected, None, str(exc)))
    return checks
