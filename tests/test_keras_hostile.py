"""Keras files from strangers: nothing in one makes seqmnist read another file, hang, allocate
what the model does not need, import broken weights, or leave a half-written run folder. Each
file here is made from a real Keras fixture with one thing changed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from conftest import FIXTURE_DATA  # noqa: E402
from seqmnist.cli import main  # noqa: E402
from seqmnist.runs.keras_import import KerasImportError, import_keras, read_keras  # noqa: E402

KERAS = Path(__file__).parent / "fixtures" / "keras"
DATA = str(FIXTURE_DATA / "mnist")
GRU_KERNEL = "layers/gru/cell/vars/0"  # (28, 72) in gru.keras
SECRET = b"TOP-SECRET-" * 1000


def _parts(name: str) -> tuple[dict, dict, bytes]:
    with zipfile.ZipFile(KERAS / f"{name}.keras") as z:
        return (json.loads(z.read("config.json")), json.loads(z.read("metadata.json")),
                z.read("model.weights.h5"))


def _zip(path: Path, config, meta, blob: bytes, **members) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", config if isinstance(config, str) else json.dumps(config))
        z.writestr("metadata.json", json.dumps(meta))
        z.writestr("model.weights.h5", blob)
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _edit_weights(blob: bytes, tmp_path: Path, edit) -> bytes:
    path = tmp_path / "weights.h5"
    path.write_bytes(blob)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path.read_bytes()


def keras_with(tmp_path: Path, edit=None, name: str = "gru", config=None, meta=None) -> Path:
    """The fixture ``name``.keras with its weights file edited by ``edit(h5file)``, or its config
    or metadata replaced."""
    cfg, md, blob = _parts(name)
    if edit is not None:
        blob = _edit_weights(blob, tmp_path, edit)
    return _zip(tmp_path / "model.keras", cfg if config is None else config,
                md if meta is None else meta, blob)


def h5_with(tmp_path: Path, edit, name: str = "gru") -> Path:
    path = tmp_path / "model.h5"
    path.write_bytes((KERAS / f"{name}.h5").read_bytes())
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def replace_dataset(path: str, **create):
    def edit(f):
        del f[path]
        f.create_dataset(path, **create)
    return edit


def refused(tmp_path: Path, model_file: Path, match: str) -> str:
    """The import is refused with an error that names the problem, and no run folder is left."""
    out = tmp_path / "runs"
    with pytest.raises(KerasImportError, match=match):
        import_keras(model_file, out=out, data_dir=DATA, log=lambda *_: None)
    assert not out.exists() or not any(out.iterdir()), "a run folder was left behind"
    return match


def _secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.bin"
    path.write_bytes(SECRET)
    return path


# --- files that point at other files ------------------------------------------------------------

LEGACY_KERNEL = "model_weights/gru/sequential_1/gru/gru_cell/kernel"


def _external(target: Path, where: str = GRU_KERNEL):
    return replace_dataset(where, shape=(28, 72), dtype="f4",
                           external=[(str(target), 0, 28 * 72 * 4)])


def _secret_h5(target: Path) -> str:
    with h5py.File(target.with_suffix(".h5"), "w") as g:
        g["data"] = np.frombuffer(SECRET[:28 * 72 * 4], dtype="f4").reshape(28, 72)
    return str(target.with_suffix(".h5"))


def _external_link(target: Path, where: str = GRU_KERNEL):
    other = _secret_h5(target)

    def edit(f):
        del f[where]
        f[where] = h5py.ExternalLink(other, "/data")
    return edit


def _virtual(target: Path, where: str = GRU_KERNEL):
    other = _secret_h5(target)

    def edit(f):
        del f[where]
        layout = h5py.VirtualLayout(shape=(28, 72), dtype="f4")
        layout[:] = h5py.VirtualSource(other, "data", shape=(28, 72))
        f.create_virtual_dataset(where, layout)
    return edit


def _soft_link(_target: Path, where: str = GRU_KERNEL):
    def edit(f):
        del f[where]
        f[where] = h5py.SoftLink(where.rsplit("/", 1)[0] + "/1")
    return edit


def _external_group(target: Path):
    """The whole layer group is an external link: the walk refuses it before going in."""
    with h5py.File(target.with_suffix(".h5"), "w") as g:
        g.create_group("cell/vars")

    def edit(f):
        del f["layers/gru"]
        f["layers/gru"] = h5py.ExternalLink(str(target.with_suffix(".h5")), "/")
    return edit


@pytest.mark.parametrize("make, match", [
    (_external, "external file"), (_external_link, "external link"),
    (_virtual, "virtual dataset"), (_soft_link, "soft link"),
    (_external_group, "external link"),
])
def test_a_keras_archive_cannot_make_seqmnist_read_another_file(tmp_path, make, match):
    refused(tmp_path, keras_with(tmp_path, make(_secret(tmp_path))), match)


@pytest.mark.parametrize("make, match", [
    (_external, "external file"), (_external_link, "external link"),
    (_virtual, "virtual dataset"),
])
def test_a_legacy_h5_file_cannot_make_seqmnist_read_another_file(tmp_path, make, match):
    refused(tmp_path, h5_with(tmp_path, make(_secret(tmp_path), LEGACY_KERNEL)), match)


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """seqmnist in a child process, so that a hang fails the test instead of stalling it."""
    return subprocess.run([sys.executable, "-m", "seqmnist.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=os.getcwd())


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_is_refused_without_being_opened_for_reading(tmp_path):
    fifo = tmp_path / "model.h5"
    os.mkfifo(fifo)
    # weights stored "externally" in a FIFO: the layout is refused before HDF5 would open it
    hidden = tmp_path / "pipe"
    os.mkfifo(hidden)
    external = keras_with(tmp_path, _external(hidden))
    for path, what in ((fifo, "not a regular file"), (external, "external file")):
        done = _cli("import-keras", str(path), "--out", str(tmp_path / "runs"), "--data-dir", DATA)
        assert done.returncode == 2, done.stderr
        assert what in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()


# --- malformed configurations and weights -------------------------------------------------------

def _layer(config: dict, kind: str) -> dict:
    return next(layer for layer in config["config"]["layers"] if layer["class_name"] == kind)


def _config_case(name: str, change) -> dict:
    config, _, _ = _parts(name)
    change(config)
    return config


CONFIGS = {
    "a list": ("gru", lambda c: c.clear(), "Sequential"),
    "layers a string": ("gru", lambda c: c["config"].update(layers="x"), "lists no layers"),
    "config a string": ("gru", lambda c: c.update(config="x"), "lists no layers"),
    "a layer a string": ("gru", lambda c: c["config"]["layers"].append("x"), "malformed"),
    "a layer's config a list": ("gru", lambda c: _layer(c, "GRU").update(config=[1]),
                                "malformed"),
    "units abc": ("gru", lambda c: _layer(c, "GRU")["config"].update(units="abc"), "units"),
    "units NaN": ("gru", lambda c: _layer(c, "GRU")["config"].update(units=math.nan), "units"),
    "units [24]": ("gru", lambda c: _layer(c, "GRU")["config"].update(units=[24, 25]), "units"),
    "units 10^9": ("gru", lambda c: _layer(c, "GRU")["config"].update(units=10**9),
                   "units must be a whole number from 1 to 4,096"),
    "units -5": ("gru", lambda c: _layer(c, "GRU")["config"].update(units=-5), "units"),
    "units true": ("gru", lambda c: _layer(c, "GRU")["config"].update(units=True), "units"),
    "rate abc": ("gru", lambda c: _layer(c, "Dropout")["config"].update(rate="abc"), "rate"),
    "rate 2": ("gru", lambda c: _layer(c, "Dropout")["config"].update(rate=2), "rate"),
    "kernel_size '5'": ("cnn", lambda c: _layer(c, "Conv2D")["config"].update(kernel_size="5"),
                        "kernel_size"),
    "filters 1e9": ("cnn", lambda c: _layer(c, "Conv2D")["config"].update(filters=10**9),
                    "filters"),
    "input shape of strings": ("gru", lambda c: _layer(c, "InputLayer")["config"].update(
        batch_shape=[None, "28", 28]), "input shape"),
    "four Dense(4096) layers": ("gru", lambda c: c["config"]["layers"][2:2].extend([]) or [
        c["config"]["layers"].insert(2, {"class_name": "Dense", "config": {
            "name": f"d{i}", "units": 4096}}) for i in range(4)],
        "declares over 50,000,000 parameters"),
    "an unknown layer": ("gru", lambda c: c["config"]["layers"].insert(
        2, {"class_name": "BatchNormalization", "config": {"name": "bn"}}), "cannot be mapped"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_malformed_configurations_are_refused_before_any_weight_is_read(tmp_path, case):
    name, change, match = CONFIGS[case]
    refused(tmp_path, keras_with(tmp_path, name=name, config=_config_case(name, change)), match)


def test_a_config_nested_too_deeply_or_a_bad_version_is_one_line(tmp_path, capsys):
    deep = "[" * 100_000 + "]" * 100_000
    refused(tmp_path, keras_with(tmp_path, config=deep), "nested too deeply")
    meta = {"keras_version": 5}
    refused(tmp_path, keras_with(tmp_path, meta=meta), "keras_version must be a short string")
    assert main(["import-keras", str(keras_with(tmp_path, meta=meta)), "--out",
                 str(tmp_path / "runs"), "--data-dir", DATA]) == 2
    assert "keras_version" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def _weights(data=None, **kw):
    kw.setdefault("shape", (28, 72) if data is None else None)
    return replace_dataset(GRU_KERNEL, data=data, **{k: v for k, v in kw.items() if v is not None})


WEIGHTS = {
    "scalar": (_weights(data=np.float32(1.0)), r"holds \(\), the layer needs \(28, 72\)"),
    "mis-shaped": (_weights(data=np.zeros((72, 28), "f4")), r"needs \(28, 72\)"),
    "too wide (truncated before)": (_weights(data=np.zeros((28, 144), "f4")),
                                    r"holds \(28, 144\), the layer needs \(28, 72\)"),
    "declares 25,000,000 columns": (
        _weights(shape=(28, 25_000_000), dtype="f4", chunks=(28, 100_000), compression="gzip"),
        r"holds \(28, 25000000\)"),
    "strings": (_weights(data=np.full((28, 72), b"abc")), "floating point"),
    "compound": (_weights(data=np.zeros((28, 72), dtype=[("a", "f4"), ("b", "f4")])),
                 "floating point"),
    "integers": (_weights(data=np.zeros((28, 72), "i4")), "floating point"),
    "NaN": (_weights(data=np.full((28, 72), np.nan, "f4")), "NaN or infinite"),
    "Inf": (_weights(data=np.where(np.eye(28, 72) > 0, np.inf, 0).astype("f4")),
            "28 weights are NaN or infinite"),
    "an unknown filter": (_weights(data=np.zeros((28, 72), "f4"), scaleoffset=4, chunks=(28, 72)),
                          "filter 6"),
    "a missing weight": (lambda f: f.__delitem__("layers/gru/cell/vars/2"), "holds 2 weights"),
    "variables not numbered": (lambda f: f.move("layers/gru/cell/vars/2",
                                                "layers/gru/cell/vars/x"), "numbered"),
}


@pytest.mark.parametrize("case", list(WEIGHTS))
def test_weights_must_be_exactly_what_the_layer_needs(tmp_path, case):
    edit, match = WEIGHTS[case]
    refused(tmp_path, keras_with(tmp_path, edit), match)


def test_nan_weights_in_a_legacy_file_are_refused(tmp_path):
    edit = replace_dataset("model_weights/gru/sequential_1/gru/gru_cell/bias",
                           data=np.full((2, 72), np.nan, "f4"))
    refused(tmp_path, h5_with(tmp_path, edit), "NaN or infinite")


def _patch_header(path: Path, member: str, local_at: int, central_at: int, value: int) -> None:
    """Set a 2-byte field of ``member``'s local header and central directory entry."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        local = z.getinfo(member).header_offset
    data[local + local_at:local + local_at + 2] = value.to_bytes(2, "little")
    central = data.find(b"PK\x01\x02")
    while central >= 0:
        name_len = int.from_bytes(data[central + 28:central + 30], "little")
        if data[central + 46:central + 46 + name_len] == member.encode():
            data[central + central_at:central + central_at + 2] = value.to_bytes(2, "little")
        central = data.find(b"PK\x01\x02", central + 4)
    path.write_bytes(bytes(data))


def test_zip_members_that_cannot_be_read_or_inflate_too_far_are_refused(tmp_path):
    config, meta, blob = _parts("gru")
    unknown = _zip(tmp_path / "model.keras", config, meta, blob)
    _patch_header(unknown, "model.weights.h5", 8, 10, 98)  # PPMd: zipfile cannot inflate it
    refused(tmp_path, unknown, "compression method")

    encrypted = _zip(tmp_path / "encrypted.keras", config, meta, blob)
    _patch_header(encrypted, "model.weights.h5", 6, 8, 0x1)  # flag bit 0: encrypted
    refused(tmp_path, encrypted, "encrypted|password")

    bomb = _zip(tmp_path / "bomb.keras", config, meta, blob + bytes(64 << 20))
    assert bomb.stat().st_size < 1 << 20  # 64 MB of zeros deflate to well under 1 MB
    refused(tmp_path, bomb, "inflates to 67,1")
    big_config = _zip(tmp_path / "big-config.keras", " " * (5 << 20) + json.dumps(config),
                      meta, blob)
    refused(tmp_path, big_config, "config.json inflates")


def test_a_sound_file_still_imports_after_every_check(tmp_path):
    """The checks refuse what is wrong, not what Keras writes: the edited-but-equal file (a copy
    of the weights through h5py) imports with the fixture's own accuracy."""
    copy = keras_with(tmp_path, lambda f: None)
    folder = import_keras(copy, out=tmp_path / "runs", data_dir=DATA, log=lambda *_: None)
    original = import_keras(KERAS / "gru.keras", out=tmp_path / "runs2", data_dir=DATA,
                            log=lambda *_: None)
    a = json.loads((folder / "metrics.json").read_text())["test_accuracy"]
    b = json.loads((original / "metrics.json").read_text())["test_accuracy"]
    assert a == b
    assert read_keras(copy).sha256 != read_keras(KERAS / "gru.keras").sha256


@pytest.mark.parametrize("how", ["error", "ctrl-c", "sigterm"])
def test_an_import_stopped_while_writing_leaves_no_folder(tmp_path, monkeypatch, how):
    import signal

    from seqmnist.runs.recorder import Recorder

    real = Recorder.finish

    def stop(self, *args, **kwargs):
        (self.folder / "partial").write_text("half")
        if how == "error":
            raise OSError("disk full")
        if how == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)  # not reached: SIGTERM interrupts the import

    monkeypatch.setattr(Recorder, "finish", stop)
    out = tmp_path / "runs"
    with pytest.raises((OSError, KeyboardInterrupt)):
        import_keras(KERAS / "gru.keras", out=out, data_dir=DATA, log=lambda *_: None)
    assert list(out.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is not None  # the handler was put back
