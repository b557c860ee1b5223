"""ONNX export checked with onnxruntime, model folders with a model card, TensorBoard events."""


import numpy as np
import pytest
import torch

from conftest import FIXTURE_DATA
from seqmnist import TrainConfig, train
from seqmnist.cli import main
from seqmnist.core.errors import UsageError
from seqmnist.data.views import to_input
from seqmnist.runs.storage import load_run


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
    from seqmnist.reports.export import check_onnx, export_onnx

    run = load_run(runs[name])
    path, _ = export_onnx(run, tmp_path / f"{name}.onnx")
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
    from seqmnist.reports import export

    monkeypatch.setattr(export, "onnx_refusal", lambda run: "no ONNX export for this one")
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
    from seqmnist.reports.export import model_card

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


def _digest(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_export_never_replaces_a_runs_own_files_or_an_existing_file(runs, tmp_path, capsys):
    """--out at the run's weights, config or another run's files is refused (even with
    --force); an existing file needs --force; the default RUN/model.onnx likewise."""
    pytest.importorskip("onnx")
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["lstm"], run)
    other = tmp_path / "other"
    shutil.copytree(runs["gru"], other)
    before, before_other = _digest(run), _digest(other)
    for target in (run / "model.safetensors", run / "config.json", run / "predictions.npz",
                   other / "model.safetensors", run / "new-name.onnx"):
        for force in ([], ["--force"]):
            assert main(["export", str(run), "--no-check", "--out", str(target), *force]) == 2
            assert "inside the run folder" in capsys.readouterr().err
    assert _digest(run) == before and _digest(other) == before_other

    existing = tmp_path / "kept.onnx"
    existing.write_bytes(b"precious")
    assert main(["export", str(run), "--no-check", "--out", str(existing)]) == 2
    assert "exists; give --force" in capsys.readouterr().err
    assert existing.read_bytes() == b"precious"
    assert main(["export", str(run), "--no-check", "--out", str(existing), "--force"]) == 0
    assert existing.read_bytes() != b"precious" and existing.stat().st_size > 1000

    assert main(["export", str(run), "--no-check"]) == 0  # the default: RUN/model.onnx
    assert main(["export", str(run), "--no-check"]) == 2
    assert "exists; give --force" in capsys.readouterr().err
    assert main(["export", str(run), "--no-check", "--force"]) == 0
    assert not list(run.glob(".*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    assert {k: v for k, v in _digest(run).items() if k != "model.onnx"} == before


def test_export_with_a_bad_out_is_one_line(runs, tmp_path, capsys):
    pytest.importorskip("onnx")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = {str(tmp_path): "is a folder", str(a_file / "m.onnx"): "is a file, not a folder",
             "/proc/seqmnist-test/m.onnx": "cannot write under"}
    for out, message in cases.items():
        assert main(["export", str(runs["rnn"]), "--no-check", "--out", out]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1
    deep = tmp_path / "new" / "deeper" / "m.onnx"  # a missing parent is made
    assert main(["export", str(runs["rnn"]), "--no-check", "--out", str(deep)]) == 0
    assert deep.stat().st_size > 1000
    for out, message in {str(a_file): "is a file; give a folder",
                         str(a_file / "card"): "is a file, not a folder",
                         str(runs["rnn"] / "card"): "outside the run's own"}.items():
        assert main(["export", str(runs["rnn"]), "--format", "card", "--out", out]) == 2
        assert message in capsys.readouterr().err


def test_a_card_folder_is_whole_or_absent_and_force_replaces_only_a_card(runs, tmp_path,
                                                                          monkeypatch):
    from seqmnist.reports import export

    folder = tmp_path / "card"
    export.export_card(runs["cnn"], folder)
    first = _digest(folder)
    with pytest.raises(UsageError, match="not empty"):
        export.export_card(runs["lstm"], folder)
    export.export_card(runs["lstm"], folder, force=True)  # an earlier card: replaced whole
    assert _digest(folder) != first and sorted(_digest(folder)) == sorted(first)
    assert load_run(folder).config.model == "lstm"
    with pytest.raises(UsageError, match="not a model card's"):
        export.export_card(runs["cnn"], runs["gru"].parent, force=True)  # a folder of runs

    def broken(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "model_card", broken)
    with pytest.raises(UsageError, match="No space left"):
        export.export_card(runs["cnn"], tmp_path / "half")
    assert not (tmp_path / "half").exists() and not list(tmp_path.glob(".half.*"))
    with pytest.raises(UsageError, match="No space left"):
        export.export_card(runs["cnn"], folder, force=True)
    assert load_run(folder).config.model == "lstm"  # the earlier card is untouched


def test_a_permuted_onnx_export_says_how_to_feed_it(small_mnist, tmp_path):
    """The view, the layout and the permutation itself travel in the ONNX file's metadata:
    feeding the file by what its metadata says gives the run's own answers."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import json

    from seqmnist.reports.export import export_onnx, model_card

    run = load_run(train(TrainConfig(model="rnn", view="permuted", epochs=1, limit=200, seed=3),
                         out=tmp_path, dataset=small_mnist, log=quiet, progress=False).path)
    path, _ = export_onnx(run, tmp_path / "p.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert meta["seqmnist.view"] == "permuted" and "(batch, 784 steps, 1)" in meta["seqmnist.input"]
    order = json.loads(meta["seqmnist.pixel_order"])
    # the order is the task's (permutation 0 by default), not the seed's
    assert sorted(order) == list(range(784)) and meta["seqmnist.permutation"] == "0"
    images = small_mnist.x_test[:50]
    x = (images.reshape(50, -1)[:, order] / 255.0).astype(np.float32)[..., None]
    theirs = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    ours = run.model(to_input(images, "permuted", 0)).detach().numpy()
    assert np.abs(theirs - ours).max() < 1e-4
    assert "seqmnist.data.views.permutation(28 * 28, 0)" in model_card(run)


def test_an_older_runs_card_is_written_with_what_it_has(runs, tmp_path):
    """metrics.json without the newer fields (test_images, train_seconds): the card says '?'
    where it used to end in a TypeError."""
    import json
    import shutil

    from seqmnist.reports.export import export_card

    old = tmp_path / "old"
    shutil.copytree(runs["lstm"], old)
    metrics = json.loads((old / "metrics.json").read_text())
    for key in ("test_images", "train_seconds", "seconds_per_epoch", "params"):
        metrics.pop(key, None)
    (old / "metrics.json").write_text(json.dumps(metrics))
    folder = export_card(old, tmp_path / "card")
    card = (folder / "README.md").read_text()
    assert "on ? test images" in card and "- Time: ? s of training" in card
