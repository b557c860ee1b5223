"""Datasets: the IDX reader, the dataset registry and where files are looked for.

    from seqmnist import load_dataset
    ds = load_dataset("mnist")          # Dataset(x_train uint8 (60000, 28, 28), y_train, ...)

Files are looked for, in order: an explicit ``data_dir``; ``$SEQMNIST_DATA/<name>``; the user cache
(``$XDG_CACHE_HOME/seqmnist/<name>``, default ``~/.cache/seqmnist/<name>``);
``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist``); then a download into the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import DataError, UsageError
from ..core.registry import add, lookup, origin_of

SPLIT_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class Dataset:
    """A dataset in memory: uint8 images (N, H, W) and int64 labels, train and test."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    source: str = ""
    full_train: int = 0  # training images before ``limit`` (0: not limited)

    @property
    def train_total(self) -> int:
        """How many training images the dataset has (``x_train`` may be the first few)."""
        return self.full_train or len(self.x_train)

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def limit(self, n: int | None) -> Dataset:
        """The first ``n`` training images (the test set is kept whole)."""
        if n is None or n >= len(self.x_train):
            return self
        if n < 1:
            raise UsageError(f"--limit must be at least 1, got {n}")
        return Dataset(self.name, self.x_train[:n], self.y_train[:n], self.x_test, self.y_test,
                       self.classes, self.source, self.train_total)


@dataclass(frozen=True)
class Archive:
    """Files a publisher ships inside one zip, with one MD5 for the whole (EMNIST)."""

    name: str  # the zip's file name on the mirrors
    md5: str  # of the whole zip, as its publisher gives it
    most_bytes: int  # a cap on the download (the zip is smaller), not its size
    folder: str  # where the dataset's files lie inside the zip


@dataclass
class DatasetSpec:
    """A registry entry: how to find, check and load one dataset. Checksums, in order of
    preference: ``sha256`` of each file's content; else ``gz_sha256``, of each .gz as its
    canonical mirror serves it; else the ``archive``'s MD5."""

    name: str
    classes: list[str]
    description: str
    files: dict[str, str] = field(default_factory=dict)  # role -> file name, without .gz
    sha256: dict[str, str] = field(default_factory=dict)  # file name -> hash of decompressed bytes
    sizes: dict[str, int] = field(default_factory=dict)  # file name -> decompressed bytes
    mirrors: list[str] = field(default_factory=list)
    loader: Callable[[DatasetSpec, Path | None], Dataset] | None = None
    image_shape: tuple[int, int] = (28, 28)  # height, width of every image
    train_images: int = 60_000  # in the full training split
    test_images: int = 10_000
    gz_sha256: dict[str, str] = field(default_factory=dict)  # file name -> hash of its .gz
    archive: Archive | None = None
    transposed: bool = False  # images stored column by column (EMNIST): transposed on loading
    first_label: int = 0  # the files' label of the first class (EMNIST letters count from 1)

    @property
    def downloadable(self) -> bool:
        return bool(self.mirrors)

    @property
    def checksum_kind(self) -> str:
        return "content" if self.sha256 else "gz" if self.gz_sha256 else \
            "archive" if self.archive else "none"


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec, replace: bool = False) -> DatasetSpec:
    """Add ``spec`` to the datasets; a name already there is an error naming both places,
    unless ``replace=True``."""
    add(DATASETS, spec.name, spec, "dataset", origin_of(), replace)
    return spec


def list_datasets() -> list[str]:
    return list(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    return lookup(DATASETS, name, "dataset")


def check_split(where: str, split: str, images: np.ndarray, labels: np.ndarray,
                classes: int) -> None:
    """A split seqmnist can train on: uint8 images (N, H, W) with H, W >= 1, at least one, and
    one whole-number label in 0..classes-1 per image; else DataError naming what is wrong."""
    if images.dtype != np.uint8:
        raise DataError(f"{where}: {split} images are {images.dtype}; MNIST-style images are "
                        "unsigned bytes (IDX type 0x08)")
    if images.ndim != 3 or 0 in images.shape[1:]:
        raise DataError(f"{where}: {split} images have shape {images.shape}; expected "
                        "(count, height, width) with height and width of at least 1")
    if len(images) == 0:
        raise DataError(f"{where}: the {split} split is empty")
    if len(images) != len(labels):
        raise DataError(f"{where}: {split} has {len(images)} images but {len(labels)} labels")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{where}: {split} labels are {labels.dtype}, not whole numbers")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        bad = high if high >= classes else low
        raise DataError(f"{where}: {split} label {bad} out of range for {classes} classes "
                        f"(labels must be 0..{classes - 1})")


def load_dataset(name: str = "mnist", data_dir: str | Path | None = None,
                 limit: int | None = None) -> Dataset:
    """Load a registered dataset, downloading it into the cache if it is nowhere on disk."""
    spec = get_spec(name)
    ds = spec.loader(spec, Path(data_dir) if data_dir is not None else None)
    return ds.limit(limit)


