"""ONNX export checked with onnxruntime, model folders with a model card, TensorBoard events."""


import numpy as np
import pytest
import torch

from conftest import FIXTURE_DATA
from seqmnist import TrainConfig, train
from seqmnist.cli import main
from seqmnist.errors import UsageError
from seqmnist.storage import load_run
from seqmnist.views import to_input


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def runs(small_mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("export-runs")
    made = {}
    for name, cfg in {"lstm": TrainConfig(model="lstm", epochs=1, limit=300),
                      "gru": TrainConfig(model="gru", epochs=1, limit=300, view="columns"),
                      "rnn": TrainConfig(model="rnn", epochs=1, limit=300, view="pixels"),
                      "cnn": TrainConfig(model="cnn", epochs=1, limit=300)}.items():
        made[name] = train(cfg, out=out, dataset=small_mnist, log=quiet, progress=False).path
    return made


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn", "cnn"])
def test_onnx_export_matches_pytorch_on_the_test_set(runs, small_mnist, tmp_path, name):
    ort = pytest.importorskip("onnxruntime")
    from seqmnist.export import check_onnx, export_onnx

    run = load_run(runs[name])
    path = export_onnx(run, tmp_path / f"{name}.onnx")
    x = to_input(small_mnist.x_test, run.config.view).numpy()
    assert check_onnx(path, run, x) <= 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch size
    if run.config.view != "image":  # a partial image: the first 10 steps only
        assert session.get_inputs()[0].shape[1] == "steps"
        partial = x[:7, :10]
        with torch.no_grad():
            ours = run.model(torch.from_numpy(partial)).numpy()
        np.testing.assert_allclose(session.run(None, {"x": partial})[0], ours, atol=1e-4)


def test_export_command_checks_and_refuses_what_it_cannot(runs, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    assert main(["export", str(runs["lstm"]), "--out", str(tmp_path / "m.onnx"),
                 "--data-dir", str(FIXTURE_DATA / "mnist")]) == 0
    assert "onnxruntime agrees with PyTorch on the 1,000 test images" in capsys.readouterr().out
    from seqmnist import export

    monkeypatch.setattr(export, "exportable", lambda run: "no ONNX export for this one")
    with pytest.raises(UsageError, match="cannot export .*: no ONNX export for this one"):
        export.export_onnx(runs["lstm"], tmp_path / "x.onnx")


def test_a_run_becomes_a_model_folder_with_a_card_that_loads_back(runs, tmp_path):
    folder = tmp_path / "hub"
    assert main(["export", str(runs["cnn"]), "--format", "card", "--out", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json",
                                                         "metrics.json", "model.safetensors"]
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: seqmnist") and "datasets:\n- mnist" in card
    assert "95% bootstrap interval over test images" in card and "Intended use and limits" in card
    assert "quick run below the recipe" in card  # 300 of 2,000 images
    again, original = load_run(folder), load_run(runs["cnn"])
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(again.model(x), original.model(x))
    assert main(["export", str(runs["cnn"]), "--format", "card", "--out", str(folder)]) == 2


def test_the_card_gives_the_spread_across_seeds_when_there_are_several(small_mnist, tmp_path):
    from seqmnist.export import model_card

    paths = [train(TrainConfig(model="rnn", dataset="digits", epochs=1, seed=s), out=tmp_path,
                   log=quiet, progress=False).path for s in (0, 1, 2)]
    card = model_card(load_run(paths[0]))
    assert "Across 3 seeds of the same recipe (0, 1, 2)" in card and "95% t interval" in card


def test_tensorboard_events_can_be_read_back(small_mnist, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = TrainConfig(model="lstm", epochs=2, limit=300, batch_size=4)
    result = train(cfg, out=tmp_path, dataset=small_mnist, log=quiet, progress=False,
                   tensorboard=True)
    events = EventAccumulator(str(result.path / "tensorboard"))
    events.Reload()
    tags = events.Tags()
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        values = [e.value for e in events.Scalars(f"epoch/{key}")]
        assert values == pytest.approx([h[key] for h in result.history], rel=1e-5)
    batches = events.Scalars("batch/loss")
    assert [e.step for e in batches] == [0, 50, 75, 125]  # every 50 batches, 75 batches an epoch
    assert "test/confusion" in tags["images"]
