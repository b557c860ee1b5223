"""Downloads against a local HTTP server on 127.0.0.1: good, corrupt, truncated, HTML, 404, stalled."""

import gzip
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from conftest import idx_bytes
from seqmnist.core.errors import DownloadError
from seqmnist.data import download
from seqmnist.data.datasets import (
    DATASETS,
    SPLIT_FILES,
    DatasetSpec,
    load_dataset,
    register_dataset,
)
from seqmnist.data.download import download_file, sha256_of_content
from seqmnist.data.sources import fetch

CONTENT = idx_bytes(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3))
GOOD = gzip.compress(CONTENT)
EXPECTED = hashlib.sha256(CONTENT).hexdigest()


class Handler(BaseHTTPRequestHandler):
    routes: dict = {}
    hits: dict = {}  # requests per kind of mirror

    def do_GET(self):  # noqa: N802 (http.server's naming)
        kind = self.path.split("/")[1]
        Handler.hits[kind] = Handler.hits.get(kind, 0) + 1
        if kind == "missing":
            self.send_error(404)
            return
        if kind == "huge":  # announces far more than the file can be
            self.send_response(200)
            self.send_header("Content-Length", str(50_000_000))
            self.end_headers()
            return
        if kind in ("endless", "drip"):  # no length; endless data, or a byte now and then
            self.send_response(200)
            self.end_headers()
            for _ in range(2000 if kind == "endless" else 40):
                try:
                    self.wfile.write(b"\x1f\x8b" + b"\0" * 65534 if kind == "endless" else b"\0")
                    self.wfile.flush()
                except OSError:
                    return
                if kind == "drip":
                    threading.Event().wait(0.1)
            return
        body = {"good": GOOD, "corrupt": gzip.compress(CONTENT[:-1] + b"\x01"),
                "html": b"<html><body>Service unavailable</body></html>",
                "truncated": GOOD, "stall": GOOD}[kind]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if kind == "truncated":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.close()  # the server drops the connection half-way
            return
        if kind == "stall":
            self.wfile.write(body[:10])
            self.wfile.flush()
            threading.Event().wait(4)  # (time.sleep is patched out below)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(download.time, "sleep", lambda s: None)


def _fetch(server, tmp_path, *kinds, **kw):
    return download_file("f", EXPECTED, tmp_path, [f"{server}/{k}" for k in kinds],
                         progress=False, **kw)


def test_good_file(server, tmp_path):
    path = _fetch(server, tmp_path, "good")
    assert path == tmp_path / "f.gz" and sha256_of_content(path) == EXPECTED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.gz"]  # no temporary file left


@pytest.mark.parametrize("kind, message", [
    ("corrupt", "checksum mismatch, expected " + EXPECTED),
    ("html", "not gzip data"),
    ("truncated", "truncated|closed|IncompleteRead|bytes"),
    ("missing", "404"),
    ("stall", "timed out"),
])
def test_bad_mirror_falls_back_to_good_one(server, tmp_path, kind, message):
    path = _fetch(server, tmp_path, kind, "good", timeout=1)
    assert sha256_of_content(path) == EXPECTED
    with pytest.raises(DownloadError, match=message):
        _fetch(server, tmp_path / "only-bad", kind, timeout=1, retries=2)
    assert not (tmp_path / "only-bad" / "f.gz").exists()
    assert list((tmp_path / "only-bad").iterdir()) == []  # the bad download was deleted


def test_mismatch_names_both_hashes(server, tmp_path):
    with pytest.raises(DownloadError) as info:
        _fetch(server, tmp_path, "corrupt")
    got = hashlib.sha256(CONTENT[:-1] + b"\x01").hexdigest()
    assert "f.gz" in str(info.value) and EXPECTED in str(info.value) and got in str(info.value)


def test_retries_are_bounded_with_backoff(server, tmp_path, monkeypatch):
    sleeps = []
    monkeypatch.setattr(download.time, "sleep", sleeps.append)
    with pytest.raises(DownloadError):
        _fetch(server, tmp_path, "html", retries=3, backoff=0.5)
    assert sleeps == [0.5, 1.0]


def test_fetch_then_load_a_registered_dataset(server, tmp_path, monkeypatch):
    """A whole dataset through the real code path: registry -> mirrors -> cache -> loader."""
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (4, 5, 5), dtype=np.uint8),
              "train-labels-idx1-ubyte": np.array([0, 1, 2, 1], dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 5, 5), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": np.array([2, 0], dtype=np.uint8)}
    blobs = {k: idx_bytes(v) for k, v in arrays.items()}

    class DatasetHandler(Handler):
        def do_GET(self):  # noqa: N802
            name = self.path.rsplit("/", 1)[-1].removesuffix(".gz")
            body = gzip.compress(blobs[name])
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), DatasetHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        spec = DatasetSpec("tiny-test", ["a", "b", "c"], "test", files=SPLIT_FILES,
                           sha256={k: hashlib.sha256(v).hexdigest() for k, v in blobs.items()},
                           mirrors=[f"http://127.0.0.1:{httpd.server_address[1]}/x/"],
                           loader=DATASETS["mnist"].loader, image_shape=(5, 5))
        register_dataset(spec)
        monkeypatch.delenv("SEQMNIST_DATA", raising=False)
        ds = load_dataset("tiny-test")  # not on disk: downloaded into the (test) cache
        np.testing.assert_array_equal(ds.x_train, arrays["train-images-idx3-ubyte"])
        assert (fetch("tiny-test", progress=False) / "t10k-labels-idx1-ubyte.gz").is_file()
    finally:
        DATASETS.pop("tiny-test", None)
        httpd.shutdown()


@pytest.mark.parametrize("kind, message", [("huge", "offers 50,000,000 bytes"),
                                           ("endless", "sent more than")])
def test_downloads_are_capped_from_the_known_size(server, tmp_path, kind, message):
    with pytest.raises(DownloadError, match=message):
        _fetch(server, tmp_path, kind, size=len(CONTENT), retries=3)
    assert list(tmp_path.iterdir()) == []


def test_a_dripping_mirror_meets_the_overall_deadline(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "limits_for", lambda size: (10_000_000, 1.0))
    with pytest.raises(DownloadError, match="too slow"):
        _fetch(server, tmp_path, "drip", size=len(CONTENT), retries=1, timeout=5)


def test_a_dripping_mirror_is_given_up_once_and_the_next_one_tried(server, tmp_path,
                                                                    monkeypatch):
    """Under the rate the deadline allows, a mirror is not tried again (each try would wait the
    whole deadline: half an hour for MNIST's training images): the next mirror serves the file."""
    monkeypatch.setattr(download, "limits_for", lambda size: (10_000_000, 1.0))
    Handler.hits.pop("drip", None)
    path = _fetch(server, tmp_path, "drip", "good", size=len(CONTENT), retries=3, timeout=5)
    assert sha256_of_content(path) == EXPECTED and Handler.hits["drip"] == 1


def test_a_killed_archive_download_is_cleared_by_the_next_fetch(server, tmp_path):
    """A download killed mid-way leaves its .part (724 MB for EMNIST's archive) under archives/:
    the next download of that file removes it, even when it fails; other files are kept."""
    archives = tmp_path / "archives"
    archives.mkdir()
    stale = archives / ".gzip.zip.k3j9x.part"
    stale.write_bytes(b"\0" * 1000)
    (archives / "notes.txt").write_text("mine")
    with pytest.raises(DownloadError):
        download_file("gzip.zip", "0" * 32, archives, [f"{server}/missing"], progress=False,
                      suffix="", gzip_data=False)
    assert sorted(p.name for p in archives.iterdir()) == ["notes.txt"]


def test_a_corrupt_cached_file_and_stale_partial_files_are_repaired(server, tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "f.gz").write_bytes(GOOD[: len(GOOD) // 2])  # truncated by an earlier crash
    (folder / ".f.abc.part").write_bytes(b"half a download")  # left by a killed process
    download.fetch_files({"f": EXPECTED}, folder, [f"{server}/good"], progress=False)
    assert sha256_of_content(folder / "f.gz") == EXPECTED
    assert sorted(p.name for p in folder.iterdir()) == ["f.gz"]


def test_a_failed_fetch_leaves_no_empty_folder(server, tmp_path):
    folder = tmp_path / "new" / "mnist"
    with pytest.raises(DownloadError):
        download.fetch_files({"f": EXPECTED}, folder, [f"{server}/missing"], progress=False)
    assert not folder.exists()
