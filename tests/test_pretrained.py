"""The pretrained runs shipped in the package: ordinary run folders that load with every check,
whose files are what SHA256SUMS says, that serve, explain and compare before anything is trained,
and that nothing writes into."""

import shutil

import pytest

from seqmnist.core.errors import CheckpointError, UsageError
from seqmnist.runs import pretrained
from seqmnist.runs.storage import load_predictions, load_run

SHIPPED = ("cnn", "gru", "lstm")
# the README's bar for the tutorial's models (every seed of the fast preset reaches it); the GRU
# has no tutorial figure: 98%
BAR = {"lstm": 0.986, "gru": 0.98, "cnn": 0.992}


def test_the_tutorials_models_and_the_gru_are_shipped_and_load_as_runs():
    assert pretrained.names() == list(SHIPPED)
    for name in SHIPPED:
        run = load_run(f"{pretrained.PREFIX}{name}")  # every check load_run makes of a run
        assert run.config.model == name and run.config.dataset == "mnist"
        assert run.metrics.test_accuracy >= BAR[name]
        assert run.metrics.train_images == 60000  # trained on the whole training set
        assert pretrained.verify(name) == run.path
        p = load_predictions(run.path, run.num_classes, images=10000)
        assert (p["predictions"] == p["labels"]).mean() == pytest.approx(
            run.metrics.test_accuracy, abs=1e-9)
        card = (run.path / "README.md").read_text()
        assert "seqmnist train " + name in card  # the command that trained it


def test_a_changed_or_added_file_fails_the_checksums(tmp_path, monkeypatch):
    copy = tmp_path / "pretrained"
    shutil.copytree(pretrained.FOLDER / "lstm", copy / "lstm")
    monkeypatch.setattr(pretrained, "FOLDER", copy)
    assert pretrained.verify("lstm") == copy / "lstm"
    history = copy / "lstm" / "history.json"
    history.write_bytes(history.read_bytes().replace(b"0", b"1", 1))
    with pytest.raises(CheckpointError, match="checksum differs"):
        pretrained.verify("lstm")
    (copy / "lstm" / "extra.txt").write_text("x")
    with pytest.raises(CheckpointError, match="disagree"):
        pretrained.verify("lstm")


def test_an_unknown_name_lists_those_there_are():
    with pytest.raises(UsageError, match="there are: cnn, gru, lstm"):
        load_run("pretrained:transformer")


def test_the_cnns_half_precision_weights_answer_as_its_full_ones(real_mnist):
    """Stored in float16 to halve the package; measured on every test image, the accuracy from
    them is within two images of the float32 model's (metrics.json, predictions.npz) and the
    answers differ on at most five of 10,000."""
    import torch
    from safetensors import safe_open

    from seqmnist.data.views import to_input
    from seqmnist.training.metrics import evaluate_tensors

    run = load_run("pretrained:cnn")
    with safe_open(run.path / "model.safetensors", framework="pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float16}
    assert next(run.model.parameters()).dtype == torch.float32  # loaded for fp32 arithmetic
    result = evaluate_tensors(run.model, to_input(real_mnist.x_test, run.config.view),
                              torch.as_tensor(real_mnist.y_test))
    shipped = load_predictions(run.path, run.num_classes)
    assert abs(result.accuracy - run.metrics.test_accuracy) <= 2 / 10000
    assert int((result.predictions != shipped["predictions"]).sum()) <= 5


def test_nothing_writes_into_a_pretrained_run(tmp_path):
    from seqmnist.reports.export import export_onnx
    from seqmnist.runs.recorder import Recorder

    with pytest.raises(UsageError, match="pretrained run shipped with seqmnist"):
        export_onnx("pretrained:lstm")  # its default: model.onnx inside the run
    for name in (pretrained.FOLDER / "lstm", "pretrained:lstm"):  # a resume, either way
        with pytest.raises(CheckpointError, match="finished and read-only"):
            Recorder.reopen(name)
    assert not (pretrained.FOLDER / "lstm" / "model.onnx").exists()


def test_serve_with_no_runs_serves_the_pretrained_ones_and_says_so(tmp_path):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from seqmnist.web import create_app, resolve_runs

    said = []
    runs = resolve_runs(None, runs_dir=tmp_path / "runs", log=said.append)
    assert sorted(r.config.model for r in runs) == list(SHIPPED)
    assert "serving the pretrained runs shipped with seqmnist" in said[0]
    client = TestClient(create_app(runs), base_url="http://127.0.0.1:8000")
    models = client.get("/api/models").json()["models"]
    assert [m["pretrained"] for m in models] == [True] * 3


def test_serve_prefers_the_users_own_runs(small_runs):
    from seqmnist.web import resolve_runs

    runs = resolve_runs(None, runs_dir=small_runs["lstm"].parent)
    assert runs and not any(pretrained.is_pretrained(r.path) for r in runs)


def test_explain_pretrained_works_at_once(tmp_path, capsys, real_mnist):
    pytest.importorskip("captum")
    from conftest import data_root
    from seqmnist.cli import main

    code = main(["explain", "--pretrained", "lstm", "--index", "0", "--out",
                 str(tmp_path / "x"), "--data-dir", str(data_root() / "mnist"), "--no-progress"])
    assert code == 0
    assert (tmp_path / "x" / "explain.html").is_file()
    assert "Explained 1 images with lstm" in capsys.readouterr().out


def test_explain_with_nothing_to_explain_says_what_to_give(capsys):
    from seqmnist.cli import main

    assert main(["explain"]) == 2
    assert "--pretrained lstm" in capsys.readouterr().err


def test_a_users_run_beside_a_pretrained_one_in_compare(tmp_path, real_mnist):
    """`compare --runs RUN pretrained:cnn`: a user's own quick run and the pretrained CNN on
    the same 10,000 test images, paired image by image."""
    from seqmnist import TrainConfig, train
    from seqmnist.experiments.comparison import compare

    mine = train(TrainConfig(model="gru", epochs=1, limit=2000, batch_size=128, lr=4e-3,
                             schedule="onecycle"), out=tmp_path / "runs", dataset=real_mnist,
                 progress=False, log=lambda *_: None).path
    from conftest import data_root

    summary = compare(runs=[mine, "pretrained:cnn"], out=tmp_path / "report",
                      data_dir=data_root() / "mnist", progress=False, log=lambda *_: None)
    assert "cnn" in summary["verdict"] and "gru" in summary["verdict"]
    assert (tmp_path / "report" / "report.html").is_file()
    assert not (pretrained.FOLDER / "cnn" / "report.html").exists()
