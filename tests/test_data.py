import gzip
from pathlib import Path

import numpy as np
import pytest

from conftest import data_root, idx_bytes, write_dataset, write_idx
from seqmnist.core.errors import DataError, DataNotFoundError, UsageError
from seqmnist.data.datasets import DATASETS, load_dataset
from seqmnist.data.idx import parse_idx, read_idx
from seqmnist.data.sources import locate, search_dirs, verify


def _tiny(n=5, h=28, w=28, seed=0):  # MNIST's image size: the loader checks it
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, h, w), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8))


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    images, labels = _tiny()
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "i", images, compress)), images)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "l", labels, compress)), labels)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"\x08\x03" + b[2:], "not an IDX file"),
    (lambda b: b[:2] + b"\x42" + b[3:], "not an IDX file"),
    (lambda b: b[:10], "truncated header"),
    (lambda b: b[:-7], "truncated: header promises"),
    (lambda b: b + b"xx", "unexpected bytes"),
    (lambda b: b"", "too short"),
])
def test_parse_idx_rejects_bad_bytes(mutate, message):
    data = mutate(idx_bytes(_tiny()[0]))
    with pytest.raises(DataError, match=message):
        parse_idx(data, "f")


def test_wrong_dimensions_named(tmp_path):
    path = write_idx(tmp_path / "labels", _tiny()[0])
    with pytest.raises(DataError, match=r"labels: expected 1 dimensions, header says 3"):
        read_idx(path, expect_ndim=1)


def test_truncated_gzip_names_file(tmp_path):
    good = gzip.compress(idx_bytes(_tiny()[0]))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: corrupt or truncated gzip"):
        read_idx(path)


def test_absurd_header_refused_before_allocating():
    header = bytes([0, 0, 8, 3]) + (60000).to_bytes(4, "big") + (65535).to_bytes(4, "big") * 2
    with pytest.raises(DataError, match="more than any dataset"):
        parse_idx(header, "f")


def test_count_mismatch_between_images_and_labels(tmp_path):
    images, labels = _tiny(6)
    folder = write_dataset(tmp_path / "mnist", images, labels[:5], images, labels)
    with pytest.raises(DataError, match="train has 6 images but 5 labels"):
        load_dataset("mnist", folder)


def test_label_out_of_range(tmp_path):
    images, labels = _tiny(6)
    labels[0] = 12
    folder = write_dataset(tmp_path / "mnist", images, labels, images, labels)
    with pytest.raises(DataError, match="label 12 out of range"):
        load_dataset("mnist", folder)


def test_search_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQMNIST_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert search_dirs("mnist", tmp_path / "explicit") == [tmp_path / "explicit"]
    assert search_dirs("mnist") == [tmp_path / "env" / "mnist",
                                    tmp_path / "cache" / "seqmnist" / "mnist",
                                    Path("/usr/share/datasets/mnist")]
    images, labels = _tiny()
    write_dataset(tmp_path / "cache" / "seqmnist" / "mnist", images, labels, images, labels)
    assert locate("mnist") == tmp_path / "cache" / "seqmnist" / "mnist"
    write_dataset(tmp_path / "env" / "mnist", images, labels, images, labels, compress=False)
    assert locate("mnist") == tmp_path / "env" / "mnist"
    assert load_dataset("mnist").source == str(tmp_path / "env" / "mnist")


def test_not_found_without_network_is_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("SEQMNIST_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(DATASETS["fashion-mnist"], "mirrors", ["http://127.0.0.1:9/"])
    monkeypatch.setattr("seqmnist.data.download.time.sleep", lambda s: None)
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("fashion-mnist")
    text = str(info.value)
    assert "not found" in text and str(tmp_path / "env" / "fashion-mnist") in text
    assert "--data-dir" in text and "SEQMNIST_DATA" in text and "--dataset digits" in text
    assert info.value.exit_code == 2
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*"))


def test_explicit_data_dir_is_used_or_is_an_error(tmp_path, monkeypatch, small_mnist_dir):
    """Never another copy in silence: SEQMNIST_DATA holds good files, the explicit folder not."""
    monkeypatch.setenv("SEQMNIST_DATA", str(small_mnist_dir.parent))
    for folder, says in [(tmp_path / "missing", "does not exist"),
                         (tmp_path, "lacks train-images-idx3-ubyte")]:
        with pytest.raises(DataNotFoundError, match=says):
            load_dataset("mnist", folder)
    assert load_dataset("mnist").source == str(small_mnist_dir)


def test_unknown_dataset():
    with pytest.raises(UsageError, match="unknown dataset 'kuzushiji-49'"):
        load_dataset("kuzushiji-49")


def test_digits_is_offline_and_seeded():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.x_train.shape == (1437, 8, 8) and a.x_test.shape == (360, 8, 8)
    assert a.x_train.dtype == np.uint8 and a.x_train.max() == 255
    np.testing.assert_array_equal(a.y_test, b.y_test)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_data_loads_and_verifies(name):
    folder = data_root() / name
    if not folder.is_dir():
        pytest.skip(f"{folder} missing")
    ds = load_dataset(name, folder, limit=100)
    assert ds.x_train.shape == (100, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert ds.image_shape == (28, 28) and ds.num_classes == 10
    assert all(check.ok for check in verify(name, folder))


def test_limit_validated_and_total_kept(small_mnist):
    with pytest.raises(UsageError):
        small_mnist.limit(0)
    assert small_mnist.limit(300).train_total == 2000 and len(small_mnist.limit(300).x_train) == 300
    assert small_mnist.train_total == 2000


def _typed_idx(array: np.ndarray, code: int) -> bytes:
    """IDX bytes of ``array`` stored with IDX type ``code`` (0x09 int8, 0x0B int16, 0x0D float32)."""
    import struct

    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4"}[code]
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=dtype).tobytes()


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, -3, 2, 1], np.int8), "label -3 out of range for 10 classes"),
    (np.array([0, 1, 300, 2, 1], np.int16), "label 300 out of range"),
    (np.array([0, 1, 1.5, 2, 1], np.float32), "not whole numbers"),
])
def test_labels_of_any_idx_type_are_checked_against_the_classes(tmp_path, labels, message):
    images, good = _tiny()
    folder = write_dataset(tmp_path / "mnist", images, good, images, good)
    code = {np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B, np.dtype(np.float32): 0x0D}
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(_typed_idx(labels, code[labels.dtype])))
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", folder)


@pytest.mark.parametrize("make, message", [
    (lambda im: _typed_idx(im.astype(np.int8) - 100, 0x09), "images are int8"),
    (lambda im: _typed_idx(np.zeros((5, 0, 3), np.uint8), 0x08), "claims 5 images of 0 x 3"),
    (lambda im: _typed_idx(np.zeros((0, 28, 28), np.uint8), 0x08), "the train split is empty"),
])
def test_images_that_cannot_train_are_refused(tmp_path, make, message):
    images, labels = _tiny()
    folder = write_dataset(tmp_path / "mnist", images, labels, images, labels)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(make(images)))
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", folder)


def test_an_empty_split_is_refused_not_trained(tmp_path):
    images, labels = _tiny()
    folder = write_dataset(tmp_path / "mnist", images, labels, images[:0], labels[:0])
    with pytest.raises(DataError, match="the test split is empty"):
        load_dataset("mnist", folder)


def test_a_gzip_bomb_is_read_only_as_far_as_its_header_promises(tmp_path):
    """A few kilobytes that inflate to a gigabyte: only the header's promise is decompressed."""
    import resource
    import zlib

    header = idx_bytes(np.zeros((10, 4, 4), np.uint8))  # promises 160 bytes of pixels
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    blob = compressor.compress(header)
    zeros = b"\0" * (1 << 20)
    for _ in range(1024):  # 1 GiB of zeros after the promised data
        blob += compressor.compress(zeros)
    blob += compressor.flush()
    path = tmp_path / "bomb.gz"
    path.write_bytes(blob)
    assert path.stat().st_size < 2_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match="unexpected bytes after the data"):
        read_idx(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100


@pytest.mark.parametrize("dims, message", [
    ((2000, 1000, 1000), "claims 2,000 images of 1000 x 1000; this dataset has at most 60,000 "
                         "images of 28 x 28"),
    ((60001, 28, 28), "claims 60,001 images of 28 x 28"),
    ((5, 28, 29), "images of 28 x 29"),
])
def test_an_idx_header_that_is_not_the_datasets_shape_is_refused_from_its_first_bytes(
        tmp_path, dims, message):
    """The header alone is written (16 bytes): the payload it claims (2 GB for the first) is
    never read, so the refusal cannot depend on how much memory there is."""
    import struct

    images, labels = _tiny()
    folder = write_dataset(tmp_path / "mnist", images, labels, images, labels)
    header = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", *dims)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header))
    with pytest.raises(DataError, match=message):
        load_dataset("mnist", folder)


def test_a_memory_error_anywhere_is_one_line(monkeypatch, capsys):
    from seqmnist import cli

    def exhausted(_args):
        raise MemoryError("Unable to allocate 2.00 GiB for an array")

    monkeypatch.setitem(cli.COMMANDS, "data", (*cli.COMMANDS["data"][:2], exhausted))
    assert cli.main(["data"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("seqmnist: error: out of memory") and "2.00 GiB" in err
    assert err.count("\n") == 1
