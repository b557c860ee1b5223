"""The command line end to end, on small slices of real MNIST."""

import io
import json
import os
import subprocess
import sys
from html import escape

import pytest
from PIL import Image

from seqmnist.cli import main

CMD = [sys.executable, "-m", "seqmnist"]


def run_cli(*args, env=None, timeout=300):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*CMD, *map(str, args)], capture_output=True, text=True, env=full_env,
                          timeout=timeout)


def test_help_does_not_import_torch_or_any_extra():
    heavy = ["torch", "ray", "onnx", "onnxruntime", "h5py", "starlette", "scipy", "statsmodels",
             "matplotlib", "tensorboard", "sklearn"]
    code = ("import sys; from seqmnist.cli import build_parser; build_parser().format_help(); "
            f"loaded = [m for m in {heavy!r} if m in sys.modules]; assert not loaded, loaded")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = run_cli("--help")
    assert out.returncode == 0 and "compare" in out.stdout and "train" in out.stdout


def test_summary_prints_keras_count(capsys):
    assert main(["summary", "lstm"]) == 0
    assert "Total params: 36,510" in capsys.readouterr().out
    assert main(["summary", "cnn"]) == 0
    assert "Total params: 3,274,634" in capsys.readouterr().out


@pytest.fixture(scope="module")
def lstm_run(small_mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "lstm", "--epochs", "1", "--data-dir", str(small_mnist_dir),
                 "--out", str(out), "--no-progress"]) == 0
    (run,) = out.iterdir()
    return run


def test_train_writes_a_named_run_folder(lstm_run):
    assert "lstm-mnist-rows" in lstm_run.name
    assert (lstm_run / "model.safetensors").is_file()


def test_evaluate(lstm_run, small_mnist_dir, capsys):
    assert main(["evaluate", str(lstm_run), "--data-dir", str(small_mnist_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = json.loads((lstm_run / "metrics.json").read_text())
    assert result["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert result["images"] == 1000


def test_predict_on_rendered_test_images(lstm_run, small_mnist, tmp_path, capsys):
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(255 - small_mnist.x_test[i]).resize((90, 90)).save(path)
        paths.append(str(path))
    assert main(["predict", str(lstm_run), *paths, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 3
    for r in results:
        assert len(r["top3"]) == 3 and r["prediction"] == r["top3"][0][0]
        probs = [p for _, p in r["top3"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert main(["predict", str(lstm_run), paths[0]]) == 0
    assert "%" in capsys.readouterr().out


def test_compare_writes_report(small_mnist_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", "lstm", "cnn", "--epochs", "1", "--limit", "500", "--data-dir",
                 str(small_mnist_dir), "--out", str(out), "--runs-dir", str(tmp_path / "runs"),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    data = json.loads((out / "comparison.json").read_text())
    html = (out / "report.html").read_text()
    assert data["verdict"] in text and escape(data["verdict"]) in html
    assert "lstm (rows)" in data["verdict"] and "cnn (image)" in data["verdict"]
    md = (out / "report.md").read_text()
    assert "| lstm (rows) | 1 |" in md and "| cnn (image) | 1 |" in md
    # Reusing finished runs, no training.
    runs = sorted((tmp_path / "runs").iterdir())
    assert main(["compare", "--runs", *map(str, runs), "--out", str(tmp_path / "again"),
                 "--data-dir", str(small_mnist_dir)]) == 0
    assert (tmp_path / "again" / "report.html").is_file()


@pytest.mark.parametrize("args, message", [
    (["train", "mlp"], "unknown model 'mlp'"),
    (["train", "lstmm"], "unknown model 'lstmm'; did you mean 'lstm'?"),
    (["compare", "lstmm"], "unknown model 'lstmm'; did you mean 'lstm'?"),
    (["summary", "cnnn"], "unknown model 'cnnn'; did you mean 'cnn'?"),
    (["train", "lstm", "--view", "row"], "unknown view 'row'; did you mean 'rows'?"),
    (["train", "lstm", "--backend", "nativ"], "unknown backend 'nativ'; did you mean 'native'?"),
    (["train", "lstm", "--threads", "100000"], "threads must be from 1 to 1024, got 100000"),
    (["train", "lstm", "--seed", "1e23"], "expected a whole number"),
    (["train", "lstm", "--hidden", "100000"], "hidden must be in 1..4096, got 100000"),
    (["serve", "--port", "70000"], "must be at most 65,535"),
    (["train", "lstm", "--epochs", "-3"], "must be at least 1"),
    (["train", "lstm", "--epochs", "ten"], "expected a whole number"),
    (["train", "lstm", "--lr", "0"], "must be a positive number"),
    (["train", "lstm", "--dataset", "cifar"], "unknown dataset 'cifar'"),
    (["train", "lstm", "--view", "image", "--dataset", "digits"], "cannot read the 'image' view"),
    (["train", "cnn", "--view", "rows", "--dataset", "digits"], "cannot read the 'rows' view"),
    (["compare", "mamba", "--dataset", "digits"], "unknown model 'mamba'"),
    (["evaluate", "."], "not a finished run"),
    (["evaluate", "no/such/run"], "not a folder"),
    (["train", "--resume", "."], "not a run folder"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    out = run_cli(*args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr  # one line, no usage dump
    assert "Traceback" not in out.stderr


def test_missing_data_is_clear_and_exit_2(tmp_path):
    env = {"SEQMNIST_DATA": str(tmp_path / "nothing"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "SEQMNIST_MIRRORS": "http://127.0.0.1:9/{name}/"}
    out = run_cli("train", "lstm", "--epochs", "1", env=env)
    assert out.returncode == 2
    assert "dataset 'mnist' not found" in out.stderr and "Looked in:" in out.stderr
    assert "--dataset digits" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "cache" / "seqmnist" / "mnist").exists()  # no empty folder left
    out = run_cli("train", "lstm", "--epochs", "1", "--data-dir", tmp_path / "empty", env=env)
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_data_list_and_verify(small_mnist_dir, capsys):
    assert main(["data"]) == 0
    listing = capsys.readouterr().out
    assert "mnist" in listing and "fashion-mnist" in listing and "digits" in listing
    from conftest import data_root

    real = data_root() / "mnist"
    if real.is_dir():
        assert main(["data", "verify", "mnist", "--data-dir", str(real)]) == 0
        assert capsys.readouterr().out.count(": ok") == 4
    # The small slice has other content than the canonical files: verify must say so.
    assert main(["data", "verify", "mnist", "--data-dir", str(small_mnist_dir)]) == 2
    assert "MISMATCH" in capsys.readouterr().out


def test_python_api_example_in_the_readme_runs(tmp_path, monkeypatch):
    """The README's Python block, run as written, with "mnist" being the shipped fixture."""
    from conftest import FIXTURE_DATA, REPO

    text = (REPO / "README.md").read_text()
    start = text.index("```python", text.index("## Python API")) + len("```python")
    code = text[start:text.index("```", start)]
    monkeypatch.setenv("SEQMNIST_DATA", str(FIXTURE_DATA))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert 0 < namespace["result"].metrics["test_accuracy"] <= 1
    assert namespace["run"].config.model == "lstm"
    assert list((tmp_path / "reports").glob("*/report.html"))


def test_report_gallery_image(tmp_path):
    import numpy as np

    from seqmnist.reports.report import gallery_figure

    fig = gallery_figure(np.zeros((5, 28, 28), dtype=np.uint8), [[0, 1, 2, 0.9], [3, 4, 5, 0.8]],
                         [str(i) for i in range(10)], "mistakes")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_a_new_model_is_one_decorated_function(tmp_path, small_mnist_dir, capsys, monkeypatch):
    """Register a throwaway model and nothing else: summary, train --limit and evaluate work on
    it through the command line, and its name is offered among the choices."""
    import math

    from torch import nn

    from seqmnist import models

    monkeypatch.setattr(models.registry, "MODELS", dict(models.MODELS))  # leave the registry as it was

    @models.register_model("throwaway", views=models.SEQUENCE_VIEWS, lr=1e-2, view="rows")
    def throwaway(input_shape, num_classes, **options):
        """A linear layer over the whole image (a test model)."""
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))

    assert main(["summary", "throwaway"]) == 0
    assert "Total params: 7,850" in capsys.readouterr().out
    out = tmp_path / "runs"
    assert main(["train", "throwaway", "--limit", "300", "--epochs", "1", "--view", "columns",
                 "--data-dir", str(small_mnist_dir), "--out", str(out), "--no-progress"]) == 0
    (run,) = out.iterdir()
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data-dir", str(small_mnist_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "throwaway" and result["view"] == "columns"
    assert result["test_accuracy"] > 0.3  # a linear model learns something in one epoch
    assert main(["train", "--help"]) == 0
    assert "throwaway" in capsys.readouterr().out


def test_every_option_has_help_that_shows_its_default():
    from seqmnist.cli import build_parser

    parser = build_parser(everything=True)
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.dest} has no help"
            if action.option_strings:
                assert "default" in action.help, f"{name} {action.option_strings} hides its default"


def test_resume_refuses_settings_it_would_ignore_and_a_tensorboard_file(tmp_path, capsys,
                                                                        monkeypatch):
    pytest.importorskip("tensorboard")
    from conftest import stop_after_each_epoch

    undo = stop_after_each_epoch(monkeypatch)
    out = tmp_path / "runs"
    assert main(["train", "rnn", "--dataset", "digits", "--epochs", "2", "--out", str(out),
                 "--no-progress"]) == 130
    undo()
    (run,) = out.iterdir()
    capsys.readouterr()
    for extra in (["--epochs", "3"], ["--lr", "0.1"], ["--hidden", "8"],
                  ["--model-option", "dropout=0.1"]):
        assert main(["train", "--resume", str(run), *extra]) == 2
        err = capsys.readouterr().err
        assert f"{extra[0]} would be ignored" in err and err.count("\n") == 1
    (run / "tensorboard").write_text("not a folder")
    assert main(["train", "--resume", str(run), "--tensorboard", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "tensorboard is a file, not a folder" in err and "Traceback" not in err
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # nothing was lost
    assert (run / "model.safetensors").is_file()
