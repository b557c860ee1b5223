"""Nothing a user did not ask seqmnist to change is deleted, overwritten or stopped; a folder where
a file should be is one clear line. Every test provokes the fault for real (RELIABILITY.md lists
them); each names the line of code whose absence it would catch."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seqmnist.cli import main
from seqmnist.core.fileio import OUT_LOCK, exclusive, output_folder


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and the SHA-256 of its bytes (the lock files a command holds
    its folders with aside: seqmnist's own, empty but for a process number)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != OUT_LOCK
            and p.parent.name != ".locks"}


def digit_png(path: Path, small_mnist, index: int = 0) -> Path:
    Image.fromarray(small_mnist.x_test[index]).save(path)
    return path


QUICK = ["--epochs", "1", "--limit", "100", "--no-progress"]


# --- 1. Work deleted or overwritten -------------------------------------------------------------

def test_a_slot_holding_what_seqmnist_did_not_write_is_refused_and_kept(small_runs, small_mnist_dir,
                                                                         tmp_path, capsys):
    """A run copied to where its slot should be, a slot holding a folder of the user's, a slot
    that is a link: refused, naming what is there, every byte kept (it used to be rmtree'd)."""
    slot = "lstm-mnist-rows-seed0"
    cases = {}
    copied = tmp_path / "copied"  # the slot is itself a run folder
    shutil.copytree(small_runs["lstm"], copied / "runs" / slot)
    cases[copied] = "is itself a run folder"
    notes = tmp_path / "notes"  # the slot holds a folder seqmnist did not make
    (notes / "runs" / slot / "my-notes").mkdir(parents=True)
    (notes / "runs" / slot / "my-notes" / "todo.txt").write_text("keep me")
    cases[notes] = "holds my-notes"
    nested = tmp_path / "nested"  # a run folder one level down, but of a name seqmnist never makes
    shutil.copytree(small_runs["cnn"], nested / "runs" / slot / "backup" / "cnn-run")
    cases[nested] = "holds backup"
    linked = tmp_path / "linked"  # the slot is a link to somewhere else
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "mine").mkdir(parents=True)
    (elsewhere / "mine" / "data.txt").write_text("mine")
    (linked / "runs").mkdir(parents=True)
    (linked / "runs" / slot).symlink_to(elsewhere)
    cases[linked] = "is a symbolic link"
    for out, message in cases.items():
        before = digest(out) | digest(elsewhere)
        code = main(["compare", "lstm", "--out", str(out), "--data-dir", str(small_mnist_dir),
                     *QUICK])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "Traceback" not in err, err
        assert digest(out) | digest(elsewhere) == before
        assert not (out / "report.html").exists()


def test_a_run_abandoned_before_its_first_epoch_is_still_replaced(small_mnist_dir, tmp_path,
                                                                   capsys):
    """What seqmnist itself left (a run folder killed before its first checkpoint: config,
    provenance, summary) is still cleared and the run trained, as before."""
    out = tmp_path / "cmp"
    slot = out / "runs" / "lstm-mnist-rows-seed0"
    left = slot / "20261206-101010-lstm-mnist-rows"
    (left / "tensorboard").mkdir(parents=True)
    for name in ("config.json", "provenance.json", "summary.txt"):
        (left / name).write_text("{}")
    assert main(["compare", "lstm", "--out", str(out), "--data-dir", str(small_mnist_dir),
                 *QUICK]) == 0
    assert not left.exists()
    assert [p.name for p in slot.iterdir()] != [] and (out / "report.html").is_file()


def test_default_output_folders_are_claimed_before_the_work_and_never_shared(tmp_path,
                                                                              monkeypatch):
    """Two commands finishing in the same second each get their own folder: the clock is
    frozen, so both choose the same name by construction."""
    from seqmnist.core import fileio

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fileio, "stamp", lambda: "20261206-120000")
    with output_folder(None, "explanation", default="explain") as first, \
            output_folder(None, "explanation", default="explain") as second:
        assert first != second and first.is_dir() and second.is_dir()
        assert first.parent == second.parent == Path("reports")
    # a claimed folder that the failed command left empty is removed again
    with pytest.raises(KeyboardInterrupt), output_folder(None, "comparison") as third:
        raise KeyboardInterrupt
    assert not third.exists() and first.is_dir()


def test_a_second_command_on_the_same_out_is_refused_for_the_whole_command(small_runs, tmp_path,
                                                                           small_mnist_dir, capsys):
    """The folder is held from before the work to after the last file: a comparison of
    finished runs and an explanation are refused while another command holds it."""
    out = tmp_path / "shared"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with exclusive(out / OUT_LOCK):
        for args in (["compare", "--runs", str(small_runs["lstm"]), str(small_runs["cnn"])],
                     ["explain", str(small_runs["lstm"]), "--index", "0"]):
            code = main([*args, "--out", str(out), "--data-dir", str(small_mnist_dir)])
            err = capsys.readouterr().err
            assert code == 1 and "another seqmnist command (process" in err, err
        assert sorted(p.name for p in out.iterdir()) == [OUT_LOCK, "mine.txt"]
    assert main(["compare", "--runs", str(small_runs["lstm"]), str(small_runs["cnn"]), "--out",
                 str(out), "--data-dir", str(small_mnist_dir)]) == 0
    assert (out / "report.html").is_file() and (out / "mine.txt").read_text() == "keep"


def test_a_bad_out_is_found_before_any_work(small_runs, tmp_path, capsys):
    """--out under a file: refused at once, before any run is loaded or image explained."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for args in (["explain", str(small_runs["lstm"]), "--index", "0"],
                 ["compare", "--runs", str(small_runs["lstm"])]):
        assert main([*args, "--out", str(blocker / "sub")]) == 2
        assert "cannot make the" in capsys.readouterr().err


# --- 2. A folder where a file should be ----------------------------------------------------------

def test_a_folder_where_a_file_should_be_is_one_line(small_runs, small_mnist, small_mnist_dir,
                                                     tmp_path, capsys):
    folder = tmp_path / "folder.png"
    folder.mkdir()
    good = digit_png(tmp_path / "ok.png", small_mnist)
    # predict answers the good image and names the bad one
    assert main(["predict", str(small_runs["cnn"]), str(folder), str(good)]) == 2
    captured = capsys.readouterr()
    assert "ok.png: " in captured.out and "folder.png: not a regular file (a folder)" in \
        captured.err and "Traceback" not in captured.err
    assert main(["explain", str(small_runs["cnn"]), "--image", str(folder), "--out",
                 str(tmp_path / "e")]) == 2
    assert "folder.png: not a regular file (a folder)" in capsys.readouterr().err
    for name in ("metrics.json", "history.json", "config.json"):
        run = tmp_path / name.split(".")[0]
        shutil.copytree(small_runs["lstm"], run)
        (run / name).unlink()
        (run / name).mkdir()
        code = main(["evaluate", str(run), "--data-dir", str(small_mnist_dir)]) \
            if name != "config.json" else main(["train", "--resume", str(run)])
        err = capsys.readouterr().err
        assert code == 2 and f"{name}: not a regular file (a folder)" in err and "Traceback" not in err, err
    keras = tmp_path / "model.h5"
    keras.mkdir()
    assert main(["import-keras", str(keras), "--out", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err
    assert "model.h5: not a regular file (a folder)" in err and "Traceback" not in err, err


def test_a_slots_config_that_is_a_folder_is_one_line(small_runs, small_mnist_dir, tmp_path,
                                                      capsys):
    out = tmp_path / "cmp"
    run = out / "runs" / "lstm-mnist-rows-seed0" / small_runs["lstm"].name
    shutil.copytree(small_runs["lstm"], run)
    (run / "config.json").unlink()
    (run / "config.json").mkdir()
    code = main(["compare", "lstm", "--out", str(out), "--data-dir", str(small_mnist_dir),
                 *QUICK])
    err = capsys.readouterr().err
    assert code == 2 and "config.json: not a regular file (a folder)" in err and "Traceback" not in err, err
    assert (run / "model.safetensors").is_file()



# --- 3. Runs whose weights are NaN ---------------------------------------------------------------

def nan_copy(run: Path, to: Path) -> Path:
    """A copy of ``run`` with one weight set to NaN (its metadata kept)."""
    import torch
    from safetensors.torch import load_file, safe_open, save_file

    shutil.copytree(run, to)
    weights = to / "model.safetensors"
    with safe_open(weights, framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(weights)
    first = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[first].view(-1)[0] = torch.nan
    save_file(tensors, weights, metadata=meta)
    return to


def test_a_run_with_one_nan_weight_is_refused_by_every_command(small_runs, small_mnist,
                                                                small_mnist_dir, tmp_path, capsys):
    broken = nan_copy(small_runs["lstm"], tmp_path / "broken")
    image = digit_png(tmp_path / "digit.png", small_mnist)
    out = tmp_path / "explained"
    for args in (["evaluate", str(broken), "--data-dir", str(small_mnist_dir)],
                 ["predict", str(broken), str(image)],
                 ["explain", str(broken), "--index", "0", "--out", str(out),
                  "--data-dir", str(small_mnist_dir)],
                 ["export", str(broken), "--out", str(tmp_path / "m.onnx"), "--no-check"],
                 ["compare", "--runs", str(broken), "--out", str(tmp_path / "report")]):
        code = main(args)
        captured = capsys.readouterr()
        assert code == 2 and "weights are not numbers (NaN or infinite)" in captured.err, args
        assert "nan%" not in captured.out and "Traceback" not in captured.err
    assert not out.exists() and not (tmp_path / "report").exists()  # nothing half-written


def test_the_page_serves_the_good_runs_beside_a_broken_one(small_runs, tmp_path, capsys):
    from starlette.testclient import TestClient

    from seqmnist.web import create_app, resolve_runs

    broken = nan_copy(small_runs["lstm"], tmp_path / "broken")
    runs = resolve_runs([broken, small_runs["cnn"]])
    assert [r.config.model for r in runs] == ["cnn"]
    assert "not served" in capsys.readouterr().out
    client = TestClient(create_app(runs), base_url="http://127.0.0.1:8000")
    pixels = {"pixels": np.pad(np.full((20, 20), 255), 4).tolist()}
    for api in ("/api/predict", "/api/explain"):
        assert client.post(api, json=pixels).status_code == 200
    with pytest.raises(Exception, match="no run can be served"):
        resolve_runs([broken])


def test_answers_with_numbers_that_are_not_numbers_are_strict_json(small_runs, tmp_path):
    """A model that gives NaN only for some input (its weights finite) still gets an answer
    per model, never a 500: the live inside view sends null for what is not a number."""
    import torch
    from starlette.testclient import TestClient

    from seqmnist.web import create_app, resolve_runs

    runs = resolve_runs([small_runs["lstm"], small_runs["cnn"]])
    with torch.no_grad():  # after loading: as if this input overflowed the model
        next(runs[0].model.parameters()).fill_(float("nan"))
    client = TestClient(create_app(runs), base_url="http://127.0.0.1:8000")
    resp = client.post("/api/explain", json={"pixels": np.pad(np.full((20, 20), 255), 4).tolist()})
    assert resp.status_code == 200, resp.text
    images = resp.json()["images"]
    assert "not a number" in images[0]["error"] and "probabilities" in images[1]


# --- 4. Pages that swallow their own script ------------------------------------------------------

HOSTILE = ["<!--<script>", "</script><script>alert(1)</script>", "a&b", "]]>", "<!--", "-->"]


@pytest.mark.parametrize("text", HOSTILE)
def test_embedded_data_cannot_change_how_the_page_parses(text):
    import json

    from seqmnist.reports.explain_html import embed_json, render

    data = embed_json({"images": [{"run": text, "classes": [text]}]})
    assert "<" not in data and ">" not in data and "&" not in data
    assert json.loads(data) == {"images": [{"run": text, "classes": [text]}]}
    page = render([{"run": text, "classes": [text]}])
    block = page.split('<script id="explain-data" type="application/json">', 1)[1]
    assert block.split("</script>", 1)[0] == embed_json({"images": [{"run": text,
                                                                        "classes": [text]}],
                                                          "datasets": {}})


# --- 6. Verdicts and labels that say more than the evidence --------------------------------------

def test_a_run_is_explained_only_on_the_dataset_it_was_trained_on(small_runs, tmp_path):
    """A Fashion image would be labelled with a digit class: refused, naming both datasets."""
    from seqmnist.core.errors import UsageError
    from seqmnist.data.datasets import load_dataset
    from seqmnist.reports.explainer import explain, explain_runs

    digits = load_dataset("digits")
    for call in (lambda: explain(small_runs["lstm"], 0, dataset=digits),
                 lambda: explain_runs([small_runs["lstm"]], [0], dataset=digits,
                                      progress=False)):
        with pytest.raises(UsageError, match="trained on mnist, not digits"):
            call()


@pytest.mark.parametrize("image", [True, 1.5, None, [0, 1]])
def test_explain_names_what_an_image_may_be(small_runs, image):
    from seqmnist.core.errors import UsageError
    from seqmnist.reports.explainer import explain

    with pytest.raises(UsageError, match="test-set index"):
        explain(small_runs["lstm"], image)


def test_a_runs_files_that_disagree_are_an_error_naming_both(small_runs, small_mnist_dir, tmp_path,
                                                             capsys):
    """The weights' metadata says columns, config.json says rows: it used to be evaluated one
    way and recorded another (0.1085 against 0.1763) without a word."""
    import json

    from safetensors.torch import load_file, safe_open, save_file

    run = tmp_path / "run"
    shutil.copytree(small_runs["lstm"], run)
    weights = run / "model.safetensors"
    with safe_open(weights, framework="pt") as fh:
        meta = fh.metadata()
    config = json.loads(meta["config"])
    meta["config"] = json.dumps({**config, "view": "columns"})
    save_file(load_file(weights), weights, metadata=meta)
    assert main(["evaluate", str(run), "--data-dir", str(small_mnist_dir)]) == 2
    err = capsys.readouterr().err
    assert "config.json disagrees with the configuration stored in model.safetensors" in err
    assert "view: 'columns' in model.safetensors, 'rows' in config.json" in err


# --- 8. Messages -------------------------------------------------------------------------------

def test_a_prediction_file_of_the_wrong_length_is_named_not_blamed_on_index(small_runs,
                                                                            small_mnist_dir,
                                                                            tmp_path, capsys):
    from seqmnist.runs.storage import load_predictions, save_predictions

    run = tmp_path / "run"
    shutil.copytree(small_runs["lstm"], run)
    p = load_predictions(run)
    save_predictions(run, *(np.concatenate([p[k], p[k]]) for k in ("predictions",
                                                                    "probabilities", "labels")))
    assert main(["explain", str(run), "--out", str(tmp_path / "e"), "--data-dir",
                 str(small_mnist_dir)]) == 2
    err = capsys.readouterr().err
    assert "predictions.npz: holds 2,000 test predictions, the test set has 1,000 images" in err
    assert "--index" not in err


def test_messages_advise_only_what_works(small_runs, tmp_path):
    """A missing prediction file names the command that rebuilds it (`evaluate` does not); a
    refused pickle never repeats PyTorch's advice to load it with weights_only=False."""
    import io
    import os

    import torch

    from seqmnist.core.errors import CheckpointError
    from seqmnist.runs.storage import load_predictions, safe_torch_load

    run = tmp_path / "run"
    shutil.copytree(small_runs["lstm"], run)
    (run / "predictions.npz").unlink()
    with pytest.raises(CheckpointError, match=r"`seqmnist compare --runs .*` computes it") as e:
        load_predictions(run)
    assert "evaluate" not in str(e.value)

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    buf = io.BytesIO()
    torch.save({"model": Evil(), "epoch": 1}, buf)
    (tmp_path / "evil.pt").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="posix.system") as e:
        safe_torch_load(tmp_path / "evil.pt")
    assert "weights_only" not in str(e.value) and "trusted source" not in str(e.value)


def test_options_that_used_to_end_in_tracebacks_or_false_refusals(small_mnist_dir, tmp_path,
                                                                  capsys):
    nested = "[" * 5000 + "]" * 5000
    assert main(["train", "lstm", "--model-option", f"hidden={nested}"]) == 2
    err = capsys.readouterr().err
    assert "nested too deeply" in err and "Traceback" not in err
    # a batch larger than the data is the data: 300 images are one batch of 300, not 6,772 GiB
    assert main(["train", "cnn", "--batch-size", "10000000", "--limit", "300", "--epochs", "1",
                 "--out", str(tmp_path / "runs"), "--data-dir", str(small_mnist_dir),
                 "--no-progress"]) == 0


def test_a_bad_train_out_is_found_before_the_data_is_read(tmp_path, monkeypatch, capsys):
    from seqmnist.runs import train as training

    def never(*_args, **_kwargs):
        raise AssertionError("the data was read before --out was checked")

    monkeypatch.setattr(training, "load_dataset", never)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "lstm", "--out", str(blocker / "runs")]) == 2
    assert "cannot make the folder" in capsys.readouterr().err


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    """mkstemp makes every file 0600: a run's files now get what the user's umask allows."""
    import os
    import stat

    from seqmnist.core.fileio import atomic_write

    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "f.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == mode
