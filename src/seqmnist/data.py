"""Datasets: the IDX reader, the dataset registry and where files are looked for.

    from seqmnist import load_dataset
    ds = load_dataset("mnist")          # Dataset(x_train uint8 (60000, 28, 28), y_train, ...)

Files are looked for, in order: an explicit ``data_dir``; ``$SEQMNIST_DATA/<name>``; the user cache
(``$XDG_CACHE_HOME/seqmnist/<name>``, default ``~/.cache/seqmnist/<name>``);
``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist``); then a download into the cache.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .download import (
    fetch_archive,
    fetch_files,
    find_file,
    recorded_sums,
    sha256_of_content,
    sha256_of_file,
)
from .errors import DataError, DataNotFoundError, DownloadError, UsageError
from .registry import add, origin_of

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SPLIT_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Refuse absurd headers before allocating: no IDX dataset we read is anywhere near this.
MAX_IDX_ITEMS = 1 << 31


def _idx_size(head: bytes) -> int | None:
    """The total size an IDX file must have, from its first bytes (None: not IDX, or too short
    to tell; ``parse_idx`` then says what is wrong)."""
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_DTYPES or head[3] == 0:
        return None
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        return None
    dims = struct.unpack(f">{ndim}I", head[4:4 + 4 * ndim])
    if math.prod(d for d in dims if d) > MAX_IDX_ITEMS:
        return None
    return 4 + 4 * ndim + math.prod(dims) * np.dtype(IDX_DTYPES[head[2]]).itemsize


def _check_dims(path: Path, head: bytes, expect: tuple[int, ...] | None) -> None:
    """Refuse a header whose dimensions are not the dataset's, from its first bytes:
    ``expect`` is (most items, *the shape of one item})."""
    if expect is None or len(head) < 4 or head[:2] != b"\0\0" or head[3] != len(expect):
        return  # not IDX, or another rank: ``parse_idx`` says what is wrong
    if len(head) < 4 + 4 * len(expect):
        return
    dims = struct.unpack(f">{len(expect)}I", head[4:4 + 4 * len(expect)])
    if dims[1:] != tuple(expect[1:]) or dims[0] > expect[0]:
        what = "images of " + " x ".join(map(str, dims[1:])) if len(dims) > 1 else "labels"
        want = "images of " + " x ".join(map(str, expect[1:])) if len(expect) > 1 else "labels"
        raise DataError(f"{path}: the header claims {dims[0]:,} {what}; this dataset has at most "
                        f"{expect[0]:,} {want}: refused before reading it")


def _open_bytes(path: Path, expect: tuple[int, ...] | None = None) -> bytes:
    """The file's IDX bytes, gunzipped if need be. Whatever the file, at most the size its IDX
    header promises (plus one byte, to notice extra data) is read or decompressed: a small gzip
    that inflates to gigabytes costs nothing. Only regular files are opened. With ``expect``,
    a header whose dimensions disagree with it is refused before anything else is read."""
    try:
        if not path.is_file():
            raise DataError(f"{path}: not a regular file")
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            fh = gzip.GzipFile(fileobj=raw) if gz else raw
            head = fh.read(4 + 4 * 255)
            _check_dims(path, head, expect)
            size = _idx_size(head)
            cap = (size if size is not None else len(head)) + 1
            return head[:cap] + fh.read(max(0, cap - len(head)))
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None


def parse_idx(data: bytes, name: str = "<bytes>", expect_ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes into an array, checking the header against the payload length."""
    if len(data) < 4:
        raise DataError(f"{name}: file is too short to be IDX ({len(data)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code not in IDX_DTYPES or ndim == 0:
        raise DataError(f"{name}: not an IDX file (magic 0x{data[:4].hex()})")
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{name}: expected {expect_ndim} dimensions, header says {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(IDX_DTYPES[dtype_code])
    count = math.prod(dims)
    # Also bound the non-zero dimensions: an empty array of shape (0, 2**31, 2**31) is not data.
    if math.prod(d for d in dims if d) > MAX_IDX_ITEMS:
        raise DataError(f"{name}: header claims {count} items, more than any dataset we read")
    need = header + count * dtype.itemsize
    if len(data) < need:
        raise DataError(f"{name}: truncated: header promises {need} bytes, file has {len(data)}")
    if len(data) > need:
        raise DataError(f"{name}: {len(data) - need} unexpected bytes after the data")
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)


def read_idx(path: str | Path, expect_ndim: int | None = None,
             expect: tuple[int, ...] | None = None) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw, validating magic, dimensions and length;
    ``expect`` = (most items, *item shape) bounds the header before the payload is read."""
    path = Path(path)
    return parse_idx(_open_bytes(path, expect), str(path), expect_ndim)


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
    try:
        return DATASETS[name]
    except KeyError:
        raise UsageError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}") from None


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


def _load_idx_dataset(spec: DatasetSpec, data_dir: Path | None) -> Dataset:
    folder = locate(spec.name, data_dir)
    if folder is None and data_dir is not None:
        missing = [f"{base}(.gz)" for base in spec.files.values()
                   if find_file(Path(data_dir), base) is None]
        what = "does not exist" if not Path(data_dir).is_dir() else \
            "lacks " + ", ".join(missing)
        raise DataNotFoundError(f"dataset {spec.name!r}: the data folder {data_dir} {what}. "
                                "Give the folder that holds the four IDX files, or leave out "
                                "--data-dir to use the usual places")
    if folder is None:
        try:
            folder = fetch(spec.name)
        except DataError as exc:
            raise DataNotFoundError(not_found_message(spec.name, data_dir, str(exc))) from None
    arrays = {}
    for role, base in spec.files.items():
        most = spec.train_images if role.startswith("train") else spec.test_images
        expect = (most, *spec.image_shape) if role.endswith("images") else (most,)
        arrays[role] = read_idx(find_file(folder, base), len(expect), expect)
    for split in ("train", "test"):
        if spec.transposed:  # stored column by column: make rows rows
            arrays[f"{split}_images"] = np.ascontiguousarray(
                arrays[f"{split}_images"].transpose(0, 2, 1))
        if spec.first_label:
            arrays[f"{split}_labels"] = arrays[f"{split}_labels"].astype(np.int64) - \
                spec.first_label
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        check_split(str(folder), split, images, labels, len(spec.classes))
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataError(f"{folder}: train images are {arrays['train_images'].shape[1:]}, "
                        f"test images {arrays['test_images'].shape[1:]}")
    return Dataset(spec.name, arrays["train_images"], arrays["train_labels"].astype(np.int64),
                   arrays["test_images"], arrays["test_labels"].astype(np.int64),
                   list(spec.classes), str(folder))


def _load_digits(spec: DatasetSpec, data_dir: Path | None) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataNotFoundError("the digits dataset comes with scikit-learn: "
                                "pip install 'seqmnist[digits]'") from None
    bunch = load_digits()
    # Pixel values are 0..16; rescale to 0..255 so every dataset shares the 1/255 scaling.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(images))  # fixed, seeded split
    test, train = order[:360], order[360:]
    return Dataset("digits", images[train], labels[train], images[test], labels[test],
                   [str(i) for i in range(10)], "scikit-learn (bundled)")


DIGITS = [str(i) for i in range(10)]
# Decompressed sizes of the 60,000 / 10,000 MNIST-format files (headers included).
MNIST_SIZES = {"train-images-idx3-ubyte": 47_040_016, "train-labels-idx1-ubyte": 60_008,
               "t10k-images-idx3-ubyte": 7_840_016, "t10k-labels-idx1-ubyte": 10_008}

register_dataset(DatasetSpec(
    name="mnist", classes=DIGITS, description="MNIST handwritten digits, 28x28, 60k/10k",
    files=SPLIT_FILES,
    sha256={
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    sizes=MNIST_SIZES,
    mirrors=["https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/"],
    loader=_load_idx_dataset,
))

register_dataset(DatasetSpec(
    name="fashion-mnist",
    classes=["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
             "Bag", "Ankle boot"],
    description="Fashion-MNIST (Zalando), 28x28, 60k/10k",
    files=SPLIT_FILES,
    sha256={
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    sizes=MNIST_SIZES,
    mirrors=["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
             "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"],
    loader=_load_idx_dataset,
))

register_dataset(DatasetSpec(
    name="kmnist",
    # Kuzushiji-MNIST's ten hiragana, romanised (the order of its classmap.csv)
    classes=["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
    description="Kuzushiji-MNIST (ROIS-DS CODH), cursive Japanese hiragana, 28x28, 60k/10k",
    files=SPLIT_FILES,
    # its publisher gives the hashes of the .gz files it serves (as torchvision checks them)
    gz_sha256={
        "train-images-idx3-ubyte": "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
        "train-labels-idx1-ubyte": "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
        "t10k-images-idx3-ubyte": "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
        "t10k-labels-idx1-ubyte": "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
    },
    sizes=MNIST_SIZES,
    mirrors=["https://codh.rois.ac.jp/kmnist/dataset/kmnist/"],
    loader=_load_idx_dataset,
))

# EMNIST (NIST): every split in one zip, with one MD5; images stored transposed.
EMNIST_ARCHIVE = Archive(name="gzip.zip", md5="58c8d27c78d21e728a6bc7b3cc06412e",
                         most_bytes=800_000_000, folder="gzip")
EMNIST_MIRRORS = ["https://biometrics.nist.gov/cs_links/EMNIST/"]


def _emnist(split: str, classes: list[str], train: int, test: int, description: str,
            first_label: int = 0) -> DatasetSpec:
    files = {role: f"emnist-{split}-{base.replace('t10k', 'test')}"
             for role, base in SPLIT_FILES.items()}
    sizes = {files["train_images"]: 16 + train * 784, files["train_labels"]: 8 + train,
             files["test_images"]: 16 + test * 784, files["test_labels"]: 8 + test}
    return DatasetSpec(name=f"emnist-{split}", classes=classes, description=description,
                       files=files, sizes=sizes, mirrors=EMNIST_MIRRORS, archive=EMNIST_ARCHIVE,
                       loader=_load_idx_dataset, train_images=train, test_images=test,
                       transposed=True, first_label=first_label)


register_dataset(_emnist("digits", DIGITS, 240_000, 40_000,
                         "EMNIST digits (NIST Special Database 19), 28x28, 240k/40k"))
# 26 classes, upper and lower case of a letter together; the files count them from 1
register_dataset(_emnist("letters", [chr(ord("A") + i) for i in range(26)], 124_800, 20_800,
                         "EMNIST letters (NIST SD 19), A-Z with cases merged, 28x28, 124.8k/20.8k",
                         first_label=1))

register_dataset(DatasetSpec(
    name="digits", classes=DIGITS,
    description="UCI 8x8 digits shipped with scikit-learn, 1437/360 (no download)",
    loader=_load_digits, image_shape=(8, 8), train_images=1437,
))


def load_dataset(name: str = "mnist", data_dir: str | Path | None = None,
                 limit: int | None = None) -> Dataset:
    """Load a registered dataset, downloading it into the cache if it is nowhere on disk."""
    spec = get_spec(name)
    ds = spec.loader(spec, Path(data_dir) if data_dir is not None else None)
    return ds.limit(limit)


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
