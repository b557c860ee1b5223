"""Keras models saved by real Keras (tests/fixtures/keras, made by make_keras_fixtures.py) import
into seqmnist with Keras's own predictions; files that are not Keras models are refused."""

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("h5py")

from conftest import FIXTURE_DATA  # noqa: E402
from seqmnist.cli import main
from seqmnist.data.views import to_input
from seqmnist.runs.keras_import import KerasImportError, import_keras, map_model, read_keras
from seqmnist.runs.storage import load_run

KERAS = Path(__file__).parent / "fixtures" / "keras"
SHOWN = json.loads((KERAS / "README.json").read_text())["images"]


def quiet(*_):
    pass


@pytest.mark.parametrize("fmt", ["h5", "keras"])
@pytest.mark.parametrize("name, model, options", [
    ("lstm", "lstm", dict(hidden=50, layers=2, dropout=0.2)),
    ("gru", "gru", dict(hidden=24, layers=1, dropout=0.2)),
    ("rnn", "rnn", dict(hidden=16, layers=2, dropout=0.1)),
    ("cnn", "cnn", dict(channels=[8, 16], kernel=5, dense=64, dropout=0.5)),
])
def test_keras_files_import_with_kerass_own_predictions(tmp_path, small_mnist, fmt, name, model,
                                                        options):
    folder = import_keras(KERAS / f"{name}.{fmt}", out=tmp_path, data_dir=FIXTURE_DATA / "mnist",
                          log=quiet)
    run = load_run(folder)
    assert run.config.model == model and run.config.model_options == options
    x = to_input(small_mnist.x_test[:SHOWN], run.config.view)
    with torch.no_grad():
        ours = run.model(x).softmax(-1).numpy()
    theirs = np.load(KERAS / f"{name}-predictions.npy")
    assert np.abs(ours - theirs).max() < 1e-5
    assert (ours.argmax(1) == theirs.argmax(1)).all()
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["imported_from"]["format"] == fmt
    assert provenance["imported_from"]["keras_version"].startswith("3.")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["test_accuracy"] == pytest.approx(
        float((run.model(to_input(small_mnist.x_test, run.config.view)).argmax(-1).numpy()
               == small_mnist.y_test).mean()))


def test_the_command_line_imports_and_the_run_is_an_ordinary_run(tmp_path, capsys):
    data = str(FIXTURE_DATA / "mnist")
    assert main(["import-keras", str(KERAS / "lstm.h5"), "--out", str(tmp_path / "runs"),
                 "--data-dir", data]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data-dir", data, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = json.loads((run / "metrics.json").read_text())
    assert result["model"] == "lstm" and result["test_accuracy"] == metrics["test_accuracy"]
    assert main(["compare", "--runs", str(run), "--out", str(tmp_path / "report"),
                 "--data-dir", data]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Quick run" not in report  # trained elsewhere: not judged against seqmnist's recipe


def _keras_zip(tmp_path, layers, weights=b"") -> Path:
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", json.dumps({"class_name": "Sequential",
                                              "config": {"layers": layers}}))
        z.writestr("model.weights.h5", weights)
    return path


def test_files_that_are_not_keras_models_are_refused(tmp_path):
    cases = {"pickle": pickle.dumps({"a": 1}), "text": b"hello", "empty": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(KerasImportError, match="a pickle"):
        read_keras(tmp_path / "pickle")
    with pytest.raises(KerasImportError, match="not a Keras model file"):
        read_keras(tmp_path / "text")
    with pytest.raises(KerasImportError, match="not a Keras model file"):
        read_keras(tmp_path / "empty")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes((KERAS / "lstm.h5").read_bytes()[:5000])
    with pytest.raises(KerasImportError, match="corrupt or truncated"):
        read_keras(truncated)
    zipped = tmp_path / "other.keras"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(KerasImportError, match="not a Keras 3 model"):
        read_keras(zipped)


def test_a_lambda_layer_is_refused_without_running_it(tmp_path):
    lam = {"class_name": "Lambda", "config": {"name": "evil", "function": {
        "class_name": "__lambda__", "config": {"code": "aW1wb3J0IG9z"}}}}
    with pytest.raises(KerasImportError, match="'evil' holds Python code"):
        read_keras(_keras_zip(tmp_path, [{"class_name": "InputLayer", "config": {}}, lam]))


def test_layers_it_cannot_map_are_named():
    model = read_keras(KERAS / "lstm.keras")
    model.layers.insert(2, ("BatchNormalization", {"name": "bn"}, []))
    with pytest.raises(KerasImportError, match="layer 'bn' \\(BatchNormalization\\) cannot be "
                                               "mapped; seqmnist maps"):
        map_model(model)
    model = read_keras(KERAS / "lstm.keras")
    kind, cfg, w = model.layers[1]
    model.layers[1] = (kind, {**cfg, "go_backwards": True}, w)
    with pytest.raises(KerasImportError, match="go_backwards=True"):
        map_model(model)
