"""Shared fixtures: the shipped slice of MNIST (tests/fixtures/data, always there), the full MNIST
from $SEQMNIST_DATA or ../shared/data when present (tests that need it are skipped otherwise), and
helpers that write IDX files."""

from __future__ import annotations

import gzip
import os
import signal
import struct
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DATA = REPO / "tests" / "fixtures" / "data"  # mnist/: 2,000 train + 1,000 test images


def data_root() -> Path:
    """Where the full datasets are (they may not be)."""
    return Path(os.environ.get("SEQMNIST_DATA") or REPO.parent / "shared" / "data")


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX (the format MNIST ships in)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_dataset(folder: Path, x_train, y_train, x_test, y_test, compress: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", x_train, compress)
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", y_train, compress)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", x_test, compress)
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", y_test, compress)
    return folder


def stop_after_each_epoch(monkeypatch, signum: int = signal.SIGINT):
    """Make training stop as if ``signum`` arrived during every epoch: it ends after the first
    complete one with a resumable checkpoint (through the trainer's public epoch hook). Returns
    a function that undoes it."""
    from seqmnist.training import trainer as training

    def stop(_row):
        return signum

    monkeypatch.setattr(training, "EPOCH_HOOKS", [stop])
    return lambda: training.EPOCH_HOOKS.remove(stop)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never read or write the user's real cache from tests."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def real_mnist():
    """The full real MNIST, loaded once."""
    from seqmnist.data.datasets import load_dataset

    root = data_root()
    if not (root / "mnist").is_dir():
        pytest.skip(f"real MNIST not found under {root}; set SEQMNIST_DATA")
    return load_dataset("mnist", root / "mnist")


@pytest.fixture(scope="session")
def small_mnist():
    """The shipped fixture: the first 2,000 training and 1,000 test images of real MNIST."""
    from seqmnist.data.datasets import load_dataset

    return load_dataset("mnist", FIXTURE_DATA / "mnist")


@pytest.fixture(scope="session")
def small_mnist_dir() -> Path:
    """The shipped fixture's IDX folder, for the CLI's --data-dir."""
    return FIXTURE_DATA / "mnist"


@pytest.fixture(scope="session")
def small_runs(small_mnist, tmp_path_factory):
    """An LSTM and a CNN trained one epoch on ``small_mnist``: {model: run folder}."""
    from seqmnist import TrainConfig, train

    out = tmp_path_factory.mktemp("small-runs")
    return {m: train(TrainConfig(model=m, epochs=1), out=out, dataset=small_mnist,
                     progress=False, log=lambda *_: None).path for m in ("lstm", "cnn")}
