"""Kuzushiji-MNIST and EMNIST, each one registry entry: fetched through the real code path from a
local HTTP server serving small files made here (the real files cannot be fetched from here),
checked the way their publishers allow (the .gz hashes for KMNIST, the zip's MD5 for EMNIST),
loaded the right way round, and trained, reported and served with 26 letter classes."""

import gzip
import hashlib
import io
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from conftest import idx_bytes
from seqmnist.core.errors import DataError
from seqmnist.data import download
from seqmnist.data.datasets import DATASETS, load_dataset
from seqmnist.data.sources import fetch, verify
from seqmnist.models.registry import MODELS, get_entry

RNG = np.random.default_rng(0)


def _blobs(files: dict[str, str], train: int, test: int, labels: int, first: int = 0):
    arrays = {files["train_images"]: RNG.integers(0, 256, (train, 28, 28), dtype=np.uint8),
              files["train_labels"]: (np.arange(train) % labels + first).astype(np.uint8),
              files["test_images"]: RNG.integers(0, 256, (test, 28, 28), dtype=np.uint8),
              files["test_labels"]: (np.arange(test) % labels + first).astype(np.uint8)}
    return arrays, {k: gzip.compress(idx_bytes(v), mtime=0) for k, v in arrays.items()}


@pytest.fixture
def mirror():
    """A local mirror: {path: bytes} to serve, and a count of the requests for each."""
    served: dict[str, bytes] = {}
    asked: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            name = self.path.rsplit("/", 1)[-1]
            asked[name] = asked.get(name, 0) + 1
            if name not in served:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(served[name])))
            self.end_headers()
            self.wfile.write(served[name])

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield served, asked, f"http://127.0.0.1:{httpd.server_address[1]}/mirror/"
    httpd.shutdown()


@pytest.fixture(autouse=True)
def _no_local_copies(monkeypatch):
    monkeypatch.delenv("SEQMNIST_DATA", raising=False)
    monkeypatch.setattr(download.time, "sleep", lambda s: None)


def test_kmnist_is_fetched_checked_by_its_gz_hashes_and_named(mirror, monkeypatch):
    served, _, url = mirror
    spec = DATASETS["kmnist"]
    arrays, blobs = _blobs(spec.files, 30, 10, 10)
    served.update({f"{k}.gz": v for k, v in blobs.items()})
    monkeypatch.setitem(DATASETS, "kmnist", replace(
        spec, mirrors=[url], sizes={k: len(idx_bytes(v)) for k, v in arrays.items()},
        gz_sha256={k: hashlib.sha256(v).hexdigest() for k, v in blobs.items()}))
    ds = load_dataset("kmnist")
    np.testing.assert_array_equal(ds.x_train, arrays["train-images-idx3-ubyte"])
    assert ds.classes == ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
    assert all(c.ok for c in verify("kmnist"))
    folder = fetch("kmnist", progress=False)
    gz = folder / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(idx_bytes(np.zeros(10, np.uint8)), mtime=0))  # another file
    bad = [c for c in verify("kmnist") if not c.ok]
    assert [c.path for c in bad] == [gz]
    gz.unlink()
    (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(arrays["t10k-labels-idx1-ubyte"]))
    (check,) = [c for c in verify("kmnist") if not c.ok]
    assert "decompressed copy cannot be checked" in check.error


def _emnist_zip(split: str, first: int, labels: int, train: int = 52):
    spec = DATASETS[f"emnist-{split}"]
    arrays, blobs = _blobs(spec.files, train, 26, labels, first)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, blob in blobs.items():
            z.writestr(f"gzip/{name}.gz", blob)
    return spec, arrays, buf.getvalue()


def _emnist_spec(spec, url, archive: bytes, **changes):
    return replace(spec, mirrors=[url], archive=replace(
        spec.archive, md5=hashlib.md5(archive).hexdigest(), most_bytes=len(archive)), **changes)


def test_emnist_letters_come_out_of_one_checked_archive_the_right_way_round(mirror, monkeypatch):
    served, asked, url = mirror
    spec, arrays, archive = _emnist_zip("letters", 1, 26)
    digits, digit_arrays, _ = _emnist_zip("digits", 0, 10)
    buf = io.BytesIO(archive)
    with zipfile.ZipFile(buf, "a") as z:  # one zip holds every split
        for name, array in digit_arrays.items():
            z.writestr(f"gzip/{name}.gz", gzip.compress(idx_bytes(array), mtime=0))
    archive = buf.getvalue()
    served["gzip.zip"] = archive
    for s in (spec, digits):
        monkeypatch.setitem(DATASETS, s.name, _emnist_spec(s, url, archive))
    ds = load_dataset("emnist-letters")
    stored = arrays["emnist-letters-train-images-idx3-ubyte"]
    np.testing.assert_array_equal(ds.x_train, stored.transpose(0, 2, 1))  # stored transposed
    assert ds.x_train.flags["C_CONTIGUOUS"]
    assert ds.num_classes == 26 and ds.classes[:3] == ["A", "B", "C"] and ds.classes[-1] == "Z"
    np.testing.assert_array_equal(ds.y_train, np.arange(52) % 26)  # the files count from 1
    assert ds.y_train.min() == 0 and ds.y_train.max() == 25
    assert all(c.ok for c in verify("emnist-letters"))
    load_dataset("emnist-digits")  # from the archive already on disk
    assert asked["gzip.zip"] == 1
    label_file = fetch("emnist-letters", progress=False) / \
        "emnist-letters-test-labels-idx1-ubyte.gz"
    label_file.write_bytes(gzip.compress(b"tampered", mtime=0))
    assert [c.path for c in verify("emnist-letters") if not c.ok] == [label_file]


def test_an_archive_with_the_wrong_md5_or_an_oversized_member_is_refused(mirror, monkeypatch):
    served, _, url = mirror
    spec, _, archive = _emnist_zip("letters", 1, 26, train=150)  # 117,600 pixel bytes
    served["gzip.zip"] = archive
    wrong = _emnist_spec(spec, url, archive)
    monkeypatch.setitem(DATASETS, spec.name, replace(wrong, archive=replace(
        wrong.archive, md5="0" * 32)))
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch("emnist-letters", progress=False)
    assert not (DATASETS["emnist-letters"].name in {p.name for p in _cache().iterdir()}
                if _cache().is_dir() else False)  # no empty folder left behind
    small = {k: 100 for k in spec.sizes}  # the files can hold far less than the zip claims
    monkeypatch.setitem(DATASETS, spec.name, _emnist_spec(spec, url, archive, sizes=small))
    with pytest.raises(DataError, match="claims .* bytes, more than"):
        fetch("emnist-letters", progress=False)


def _cache():
    from seqmnist.data.sources import cache_dir

    return cache_dir()


LETTERS = [chr(ord("A") + i) for i in range(26)]


@pytest.fixture(scope="module")
def letters_dir(tmp_path_factory):
    """A small EMNIST letters folder in the files' own layout: transposed, labels from 1."""
    folder = tmp_path_factory.mktemp("emnist-letters")
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (104, 28, 28), dtype=np.uint8)
    y = (np.arange(104) % 26 + 1).astype(np.uint8)
    files = DATASETS["emnist-letters"].files
    for role, array in (("train_images", x[:78]), ("train_labels", y[:78]),
                        ("test_images", x[78:]), ("test_labels", y[78:])):
        (folder / f"{files[role]}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    return folder


@pytest.fixture(scope="module")
def letters(letters_dir):
    return load_dataset("emnist-letters", letters_dir)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains_on_26_letter_classes(name, letters, tmp_path):
    from seqmnist import TrainConfig, train
    from seqmnist.runs.storage import load_run

    view = get_entry(name).views[0]
    result = train(TrainConfig(model=name, dataset="emnist-letters", view=view, epochs=1,
                               batch_size=32), out=tmp_path, dataset=letters, progress=False,
                   log=lambda *_: None)
    assert letters.y_train.max() == 25 and letters.classes == LETTERS
    run = load_run(result.path)
    assert run.num_classes == 26 and run.metrics["classes"] == LETTERS
    assert set(run.metrics["per_class_accuracy"]) == set(LETTERS)
    assert len(run.metrics["confusion"]) == 26
    summary = (result.path / "summary.txt").read_text()
    assert "(None, 26)" in summary  # the head's output: one logit per letter


def test_reports_and_the_page_speak_of_letters(letters, letters_dir, tmp_path):
    from starlette.testclient import TestClient

    from seqmnist import TrainConfig, compare, train
    from seqmnist.web import create_app, resolve_runs

    runs = [train(TrainConfig(model=m, dataset="emnist-letters", epochs=1, seed=s),
                  out=tmp_path / "runs", data_dir=letters_dir, progress=False,
                  log=lambda *_: None).path for m in ("gru", "cnn") for s in (0, 1)]
    compare(runs=runs, out=tmp_path / "report", data_dir=letters_dir, log=lambda *_: None)
    md = (tmp_path / "report" / "report.md").read_text()
    per_class = md[md.index("## Per-class test accuracy"):]
    assert all(f"\n| {c} |" in per_class for c in LETTERS)
    client = TestClient(create_app(resolve_runs(runs[::2])), base_url="http://127.0.0.1:8000")
    data = client.post("/api/predict", json={"pixels": letters.x_test[0].tolist()}).json()
    for model in data["models"]:
        assert model["classes"] == LETTERS and len(model["probabilities"]) == 26
