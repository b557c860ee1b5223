"""Sweeps on this machine: the spec checked before anything runs, the grid, skipped pairs, the
reports, and a rerun that skips finished runs and resumes interrupted ones."""

import json
import signal

import pytest

from conftest import stop_after_each_epoch
from seqmnist.cli import main
from seqmnist.comparison import compare
from seqmnist.errors import UsageError
from seqmnist.sweep import parse_spec, sweep

GRID = """
models = ["rnn", "cnn"]
views = ["rows", "image"]
datasets = ["digits"]
seeds = [0, 1]
[recipe]
epochs = 1
[overrides.cnn]
batch_size = 32
"""


def quiet(*_):
    pass


@pytest.mark.parametrize("text, message", [
    ("models = [", "not valid TOML"),
    ('models = []\ndatasets = ["digits"]\nseeds = [0]', "models must be a non-empty list"),
    ('models = ["lstmm"]\ndatasets = ["digits"]\nseeds = [0]', "unknown model 'lstmm'"),
    ('models = ["lstm"]\ndatasets = ["cifar"]\nseeds = [0]', "unknown dataset 'cifar'"),
    ('models = ["lstm"]\ndatasets = ["digits"]\nseeds = ["a"]', "every entry of seeds must be"),
    ('models = ["lstm"]\ndatasets = ["digits"]', "needs seeds"),
    ('models = ["lstm"]\ndatasets = ["digits"]\nseeds = [0]\n[recipe]\nepoch = 2',
     "unknown settings \\['epoch'\\]"),
    ('models = ["lstm"]\ndatasets = ["digits"]\nseeds = [0]\n[recipe]\nepochs = 0',
     "epochs must be at least 1"),
    ('models = ["cnn"]\nviews = ["rows"]\ndatasets = ["digits"]\nseeds = [0]', "grid is empty"),
    ('models = ["lstm"]\ndatasets = ["digits"]\nseeds = [0]\nmodel = "x"', "unknown keys"),
])
def test_a_bad_spec_is_one_clear_error_before_anything_runs(text, message):
    with pytest.raises(UsageError, match=message):
        parse_spec(text)


def test_the_grid_and_its_skipped_pairs(tmp_path, capsys):
    spec = parse_spec(GRID)
    assert [r.key for r in spec.runs] == ["rnn-digits-rows-seed0", "rnn-digits-rows-seed1",
                                          "cnn-digits-image-seed0", "cnn-digits-image-seed1"]
    assert spec.skipped == ["rnn x image: rnn cannot read the image view",
                            "cnn x rows: cnn cannot read the rows view"]
    assert [r.config.batch_size for r in spec.runs] == [64, 64, 32, 32]  # per-model override
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    assert main(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("4 runs:") and "skipped: cnn x rows" in out
    default_views = parse_spec('models = ["lstm", "cnn"]\ndatasets = ["digits"]\nseeds = [3]')
    assert [r.key for r in default_views.runs] == ["lstm-digits-rows-seed3",
                                                   "cnn-digits-image-seed3"]


def test_a_tiny_sweep_reports_like_compare_and_a_rerun_skips_what_is_done(tmp_path,
                                                                         monkeypatch):
    from seqmnist import training

    out = tmp_path / "sweep"
    # Interrupt the second run in the middle of its (only) epoch: the sweep stops there.
    calls, real = [], training._train_epoch

    def interrupted_second(*args):
        calls.append(1)
        loss, acc, complete = real(*args)
        if len(calls) == 2:
            args[8]["signum"] = signal.SIGTERM
            return loss, acc, False
        return loss, acc, complete

    monkeypatch.setattr(training, "_train_epoch", interrupted_second)
    with pytest.raises(training.TrainingInterrupted):
        sweep(parse_spec(GRID), out=out, progress=False, log=quiet)
    monkeypatch.setattr(training, "_train_epoch", real)
    lines = []
    monkeypatch.setattr("tqdm.auto.tqdm.write", lambda line, *a, **k: lines.append(line))
    summary = sweep(parse_spec(GRID), out=out, progress=False, log=quiet)
    what = [line.split()[0] for line in lines]
    assert what == ["skipped", "trained", "trained", "trained"]  # the killed one had no checkpoint
    data = json.loads((out / "sweep.json").read_text())
    assert [(r["model"], r["view"], len(r["seeds"])) for r in data["rows"]] == [
        ("rnn", "rows", 2), ("cnn", "image", 2)]
    assert (out / "report-digits" / "report.html").is_file()
    assert "| rnn | rows | digits | 2 |" in (out / "sweep.md").read_text()
    assert "one seed" not in (out / "sweep.md").read_text()
    runs = sorted((out / "runs").glob("*/*"))
    assert len(runs) == 4
    same = compare(runs=runs, out=tmp_path / "compare", log=quiet)
    report = json.loads((out / "report-digits" / "comparison.json").read_text())
    assert same["verdict"] == report["verdict"] and summary["reports"]["digits"]
    lines.clear()
    sweep(parse_spec(GRID), out=out, progress=False, log=quiet)
    assert [line.split()[0] for line in lines] == ["skipped"] * 4


def test_an_interrupted_run_with_a_checkpoint_is_resumed(tmp_path, monkeypatch):
    from seqmnist import training

    spec = parse_spec('models = ["rnn"]\ndatasets = ["digits"]\nseeds = [0]\n[recipe]\nepochs = 2')
    undo = stop_after_each_epoch(monkeypatch)
    with pytest.raises(training.TrainingInterrupted):
        sweep(spec, out=tmp_path, progress=False, log=quiet)
    undo()
    lines = []
    monkeypatch.setattr("tqdm.auto.tqdm.write", lambda line, *a, **k: lines.append(line))
    sweep(spec, out=tmp_path, progress=False, log=quiet)
    assert lines[0].startswith("resumed")
    (run,) = (tmp_path / "runs" / "rnn-digits-rows-seed0").iterdir()
    assert len(json.loads((run / "history.json").read_text())) == 2
    assert "| rnn | rows | digits | 1 | " in (tmp_path / "sweep.md").read_text()
    assert "% (one seed: no spread) |" in (tmp_path / "sweep.md").read_text()  # not "± 0.00"
