"""The datasets seqmnist knows: MNIST, Fashion-MNIST, Kuzushiji-MNIST, EMNIST digits and letters,
scikit-learn's digits, each registered with its files, checksums, sizes and mirrors, and the
loaders that read them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import DataError, DataNotFoundError
from .datasets import SPLIT_FILES, Archive, Dataset, DatasetSpec, check_split, register_dataset
from .download import (
    find_file,
)
from .idx import read_idx
from .sources import fetch, locate, not_found_message


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
