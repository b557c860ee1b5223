"""Faults provoked for real: kills, signals, corrupt and malicious files, full disks, fuzzing."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import stop_after_each_epoch
from seqmnist import TrainConfig, train
from seqmnist.core.errors import CheckpointError, DataError, ImageError, SeqmnistError
from seqmnist.data.idx import parse_idx
from seqmnist.data.images import decode_image, prepare_array
from seqmnist.runs.storage import PREVIOUS_CHECKPOINT, load_checkpoint, load_run, save_checkpoint

TRAIN = [sys.executable, "-m", "seqmnist", "train"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def weights(folder):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def same_weights(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def start_training(data_dir, out, *extra):
    args = [*TRAIN, "lstm", "--data-dir", str(data_dir), "--out", str(out), "--epochs", "3",
            "--batch-size", "16", "--seed", "1", "--no-progress", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV)


def wait_for_epoch(proc, epoch: int) -> float:
    """Read output until "Epoch <epoch>/" is printed; return that epoch's seconds."""
    for line in proc.stdout:
        if line.startswith(f"Epoch {epoch}/"):
            return float(line.split(" - ")[1].rstrip("s"))
    raise AssertionError(f"process ended before epoch {epoch} (rc {proc.wait()})")


def only_run(out):
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


@pytest.fixture(scope="module")
def uninterrupted(small_mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    proc = start_training(small_mnist_dir, out)
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    return only_run(out)


@pytest.mark.slow
@pytest.mark.parametrize("killed_in_epoch", [2, 3])
def test_sigkill_mid_epoch_then_resume_is_bit_exact(small_mnist_dir, tmp_path, uninterrupted,
                                                    killed_in_epoch):
    out = tmp_path / "runs"
    proc = start_training(small_mnist_dir, out)
    seconds = wait_for_epoch(proc, killed_in_epoch - 1)
    time.sleep(seconds * 0.3)  # well inside the next epoch
    proc.kill()
    proc.wait()
    folder = only_run(out)
    state, warnings = load_checkpoint(folder)
    assert state["epoch"] == killed_in_epoch - 1 and not warnings
    assert not (folder / "model.safetensors").exists()
    history = (folder / "history.csv").read_text().splitlines()
    assert len(history) == killed_in_epoch  # header + the complete epochs
    resumed = subprocess.run([*TRAIN, "--resume", str(folder), "--no-progress"],
                             capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {killed_in_epoch - 1}/3" in resumed.stdout
    assert same_weights(folder, uninterrupted)
    assert not list(folder.glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_stop_cleanly(small_mnist_dir, tmp_path, sig, code):
    proc = start_training(small_mnist_dir, tmp_path)
    wait_for_epoch(proc, 1)
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, rest
    assert "seqmnist train --resume" in rest and "Traceback" not in rest
    folder = only_run(tmp_path)
    state, _ = load_checkpoint(folder)
    lines = (folder / "history.csv").read_text().splitlines()
    assert len(lines) == state["epoch"] + 1 and lines[0].startswith("epoch,loss")


def _state():
    return dict(model={"w": torch.ones(2)}, epoch=1, history=[])


def test_corrupt_checkpoint_falls_back_to_previous(tmp_path):
    save_checkpoint(tmp_path, _state())
    save_checkpoint(tmp_path, {**_state(), "epoch": 2})
    assert (tmp_path / PREVIOUS_CHECKPOINT).exists()
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])  # truncated
    state, warnings = load_checkpoint(tmp_path)
    assert state["epoch"] == 1
    assert "corrupt or truncated checkpoint" in warnings[0]
    (tmp_path / PREVIOUS_CHECKPOINT).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path)


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text('{"model": "lstm"}')
    torch.save({"model": Evil(marker), "epoch": 1}, folder / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(folder)
    from seqmnist.cli import main

    assert main(["train", "--resume", str(folder)]) == 2
    assert "refused to load" in capsys.readouterr().err
    # A pickle posing as weights is not even parsed as one.
    (folder / "model.safetensors").write_bytes(pickle.dumps(Evil(marker)))
    with pytest.raises(CheckpointError, match="corrupt or not a seqmnist weights file"):
        load_run(folder)
    assert not marker.exists()


def test_full_disk_fails_clearly_and_leaves_no_partial_file(small_mnist_dir, tmp_path):
    """RLIMIT_FSIZE makes every write past 300 KB fail with EFBIG, as a full disk would."""
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000));"
        "from seqmnist.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "train", "cnn", "--epochs", "1",
                           "--limit", "64", "--data-dir", str(small_mnist_dir), "--out",
                           str(tmp_path), "--no-progress"], capture_output=True, text=True,
                          env=ENV, timeout=300)
    assert proc.returncode == 1
    assert "cannot write" in proc.stderr and "File too large" in proc.stderr
    assert "Traceback" not in proc.stderr
    folder = only_run(tmp_path)
    assert not (folder / "checkpoint.pt").exists() and not list(folder.glob(".*.tmp"))


def test_interrupted_in_process_keeps_history(tmp_path, monkeypatch):
    """The stop flag, checked between batches, ends training with a resumable checkpoint whose
    history holds the finished epoch; resuming completes the run with every epoch."""
    from seqmnist.training import trainer as training

    cfg = TrainConfig(model="rnn", dataset="digits", epochs=3, limit=300)
    undo = stop_after_each_epoch(monkeypatch, signal.SIGTERM)
    with pytest.raises(training.TrainingInterrupted) as info:
        train(cfg, out=tmp_path, log=lambda *_: None, progress=False)
    assert info.value.exit_code == 143 and info.value.epochs_done == 1
    folder = only_run(tmp_path)
    state, _ = load_checkpoint(folder)
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert len((folder / "history.csv").read_text().splitlines()) == 2  # header + epoch 1
    assert not (folder / "model.safetensors").exists()
    undo()
    result = train(resume=folder, log=lambda *_: None, progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.history[0] == state["history"][0]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no cleanup but the OS's."""


def _history_rows(folder):
    return len((folder / "history.csv").read_text().splitlines()) - 1


def test_a_kill_at_every_write_then_resume_ends_consistent(tmp_path, monkeypatch):
    """Kill the run just before each of its file replacements in turn (every write goes through
    one), resume it, and check the finished run: history files, metrics and checkpoint agree."""
    import json

    cfg = TrainConfig(model="rnn", dataset="digits", epochs=2, limit=200, seed=5)
    quiet = dict(log=lambda *_: None, progress=False)
    real_replace = os.replace
    calls = []

    def counting(src, dst):
        calls.append(str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", counting)
    train(cfg, out=tmp_path / "reference", **quiet)
    writes = list(calls)
    assert any(w.endswith("history.csv") for w in writes) and len(writes) > 10
    for k in range(len(writes)):
        out = tmp_path / f"killed-{k}"

        def kill_at(src, dst, k=k):
            if len(calls) == k:
                raise Killed(dst)
            calls.append(str(dst))
            return real_replace(src, dst)

        calls.clear()
        monkeypatch.setattr(os, "replace", kill_at)
        with pytest.raises(Killed):
            train(cfg, out=out, **quiet)
        monkeypatch.setattr(os, "replace", real_replace)
        folder = only_run(out)
        if not (folder / "checkpoint.pt").exists() and not (folder / PREVIOUS_CHECKPOINT).exists():
            with pytest.raises(CheckpointError):  # killed before the first epoch was saved
                train(resume=folder, **quiet)
            continue
        result = train(resume=folder, **quiet)
        metrics = json.loads((folder / "metrics.json").read_text())
        history = json.loads((folder / "history.json").read_text())
        assert metrics["epochs"] == len(history) == _history_rows(folder) == 2, writes[k]
        assert [h["epoch"] for h in history] == [1, 2] and result.history == history, writes[k]
        assert (folder / "model.safetensors").is_file() and not list(folder.glob(".*.tmp"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=64) | st.builds(
    lambda dims, body: bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    + body, st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4), st.binary(max_size=64)))
def test_fuzz_idx_reader_only_raises_data_error(data):
    try:
        arr = parse_idx(data, "fuzz")
    except DataError:
        return
    assert arr.size * arr.itemsize <= len(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_image_decoding_only_raises_image_error(data):
    header = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"RIFF"]
    for prefix in [b"", *header]:
        try:
            prepare_array(decode_image(prefix + data))
        except ImageError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 60), st.integers(1, 60), st.floats(0, 1), st.integers(0, 2**32 - 1))
def test_fuzz_preparation_of_arrays(h, w, ink, seed):
    gray = np.random.default_rng(seed).random((h, w)).astype(np.float32) * ink
    try:
        out = prepare_array(gray)
    except ImageError:
        return
    assert out.shape == (28, 28) and out.dtype == np.uint8


def test_edited_config_json_cannot_mix_settings_on_resume(tmp_path, monkeypatch):
    """The checkpoint holds the config the run was trained with; an edited config.json is a
    clear error on resume, not a run with mixed settings."""
    import json

    from seqmnist.training import trainer as training

    stop_after_each_epoch(monkeypatch)
    with pytest.raises(training.TrainingInterrupted):
        train(TrainConfig(model="rnn", dataset="digits", epochs=2, limit=100), out=tmp_path,
              log=lambda *_: None, progress=False)
    folder = only_run(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "view": "columns"}))
    with pytest.raises(CheckpointError, match=r"disagrees with the checkpoint.*\(view\)"):
        train(resume=folder, log=lambda *_: None, progress=False)
    (folder / "config.json").write_text(json.dumps({**config, "epochs": "two"}))
    with pytest.raises(CheckpointError, match="'epochs' must be a whole number, got 'two'"):
        train(resume=folder, log=lambda *_: None, progress=False)


@pytest.fixture(scope="module")
def finished_lstm(small_mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    return train(TrainConfig(model="lstm", epochs=1, limit=300, data_dir=str(small_mnist_dir)),
                 out=out, log=lambda *_: None, progress=False).path


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3),
    max_leaves=6)
EDITS = {
    "config.json": ["model", "view", "dataset", "epochs", "batch_size", "lr", "seed", "backend",
                    "model_options", "precision", "limit", "data_dir", "replicas"],
    "metrics.json": ["classes", "image_shape", "test_accuracy", "test_loss", "params",
                     "per_class_accuracy", "confusion", "anytime", "seconds_per_epoch"],
    "metadata": ["config", "input_shape", "num_classes", "config.model_options",
                 "config.view", "config.model"],
}


def _edit(folder, where: str, key: str, value) -> None:
    import json

    from safetensors.torch import load_file, safe_open, save_file

    if where == "metadata":
        weights = folder / "model.safetensors"
        with safe_open(weights, framework="pt") as fh:
            meta = fh.metadata()
        if key.startswith("config."):
            config = json.loads(meta["config"])
            config[key.split(".", 1)[1]] = value
            meta["config"] = json.dumps(config)
        else:
            meta[key] = json.dumps(value)
        save_file(load_file(weights), weights, metadata=meta)
        return
    data = json.loads((folder / where).read_text())
    data[key] = value
    (folder / where).write_text(json.dumps(data))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(sorted(EDITS)), pick=st.integers(0, 100), value=JSON_VALUES,
       command=st.sampled_from(["evaluate", "predict", "compare", "resume"]))
def test_edited_run_folders_give_one_line_errors_or_success(finished_lstm, small_mnist_dir,
                                                             small_mnist, where, pick, value,
                                                             command):
    """Any field of any file we read back, set to any JSON value, fed to every command that reads
    run folders: each answers with success or a one-line error, never a traceback."""
    import contextlib
    import io
    import shutil
    import tempfile

    from PIL import Image

    from seqmnist.cli import main

    key = EDITS[where][pick % len(EDITS[where])]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "run"
        shutil.copytree(finished_lstm, folder)
        _edit(folder, where, key, value)
        image = Path(tmp) / "digit.png"
        Image.fromarray(255 - small_mnist.x_test[0]).save(image)
        args = {"evaluate": ["evaluate", str(folder), "--data-dir", str(small_mnist_dir)],
                "predict": ["predict", str(folder), str(image)],
                "compare": ["compare", "--runs", str(folder), "--out", str(Path(tmp) / "report"),
                            "--data-dir", str(small_mnist_dir)],
                "resume": ["train", "--resume", str(folder), "--no-progress"]}[command]
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(args)  # anything but SeqmnistError would escape and fail the test
    assert code in (0, 1, 2), (code, err.getvalue())
    if code:
        lines = [line for line in err.getvalue().splitlines() if line.startswith("seqmnist")]
        assert lines and "Traceback" not in err.getvalue(), err.getvalue()


def test_a_diverged_run_stops_with_a_clear_error_and_keeps_its_last_good_checkpoint(
        tmp_path, monkeypatch):
    """The loss becomes NaN in epoch 2: training stops naming the epoch, and the checkpoint on
    disk is epoch 1's, ready for a resume with other settings."""
    from seqmnist.training import trainer as training

    def diverging(row):  # a weight becomes NaN during epoch 2 (epochs count from 0 here)
        if row["epoch"] == 1 and row["step"] == 1:
            with torch.no_grad():
                next(row["model"].parameters()).view(-1)[0] = float("nan")

    cfg = TrainConfig(model="rnn", dataset="digits", epochs=3, limit=300)
    with training.batch_hook(diverging), pytest.raises(
            SeqmnistError, match=r"diverged: the loss became nan in epoch 2; .*"
                                 r"last good checkpoint \(epoch 1\)"):
        train(cfg, out=tmp_path, log=lambda *_: None, progress=False)
    folder = only_run(tmp_path)
    state, _ = load_checkpoint(folder)
    assert state["epoch"] == 1 and not (folder / "model.safetensors").exists()


def test_undefined_numbers_are_json_null_not_nan():
    from seqmnist.core.fileio import dumps

    text = dumps({"loss": float("nan"), "curve": [1.0, float("inf")]})
    assert json.loads(text) == {"loss": None, "curve": [1.0, None]} and "NaN" not in text


@pytest.mark.parametrize("key, value, message", [
    ("input_shape", [28, 14], "does not match rows view of 28x28"),
    ("input_shape+no-metrics", [28, 14], r"weight_ih_l0\)?: file \(200, 28\), model \(200, 14\)"),
    ("input_shape", [784, 1], "does not match rows view of 28x28"),
    ("config.model_options", {"hidden": 3000}, "weights do not fit the stored configuration"),
    ("config.model_options", {"hidden": 12000}, "hidden must be in 1..4096"),
    ("config.model_options", {"layers": 200000}, "layers must be in 1..64"),
    ("num_classes", 10**9, "is not a class count"),
])
def test_stored_shapes_are_checked_against_the_weights_before_building(finished_lstm, tmp_path,
                                                                       key, value, message):
    import shutil
    import time as clock

    folder = tmp_path / "run"
    shutil.copytree(finished_lstm, folder)
    if key.endswith("+no-metrics"):  # without the image shape to check the view against
        key = key.removesuffix("+no-metrics")
        (folder / "metrics.json").unlink()
    _edit(folder, "metadata", key, value)
    if key.startswith("config."):  # both files agree: the stored shapes themselves are tested
        _edit(folder, "config.json", key.split(".", 1)[1], value)
    start = clock.perf_counter()
    with pytest.raises(CheckpointError, match=message):
        load_run(folder)
    assert clock.perf_counter() - start < 5  # nothing gigabyte-sized was built first


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_in_place_of_a_runs_json_or_a_spec_is_refused_not_waited_on(
        finished_lstm, tmp_path):
    """Siblings of the Keras FIFO: every JSON file of a run and a sweep spec are read only when
    they are regular files. Run in child processes, so a hang fails the test."""
    import shutil
    import subprocess
    import sys

    cases = []
    for name in ("metrics.json", "history.json"):
        run = tmp_path / name.split(".")[0]
        shutil.copytree(finished_lstm, run)
        (run / name).unlink()
        os.mkfifo(run / name)
        cases.append((["evaluate", str(run)], f"{name}: not a regular file"))
    spec = tmp_path / "spec.toml"
    os.mkfifo(spec)
    cases.append((["sweep", str(spec), "--dry-run"], "spec.toml: not a regular file"))
    for args, message in cases:
        done = subprocess.run([sys.executable, "-m", "seqmnist", *args], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr, done.stderr
