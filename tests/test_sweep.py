"""Sweeps on this machine: the spec checked before anything runs, the grid, skipped pairs, the
reports, and a rerun that skips finished runs and resumes interrupted ones."""

import json
import signal
from pathlib import Path

import pytest

from conftest import stop_after_each_epoch
from seqmnist.cli import main
from seqmnist.core.errors import UsageError
from seqmnist.experiments.comparison import compare
from seqmnist.experiments.sweep import parse_spec, sweep

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
    ("a = " + "[" * 2000 + "]" * 2000, "nested too deeply"),
    ('models = ["rnn", "gru", "lstm"]\ndatasets = ["digits", "mnist"]\nseeds = '
     + str(list(range(2000))), "up to 12,000 runs, more than the 10,000"),
] + [  # recipe values checked with the command line's rules, before anything runs
    (f'models = ["lstm"]\ndatasets = ["digits"]\nseeds = [0]\n[recipe]\n{setting}', message)
    for setting, message in [
        ("epochs = 1.5", "'epochs' must be a whole number, got '1.5'"),
        ('epochs = "1"', "'epochs' must be a whole number"),
        ("batch_size = 64.5", "'batch_size' must be a whole number"),
        ("limit = 100.5", "'limit' must be a whole number"),
        ("threads = 1.5", "'threads' must be a whole number"),
        ("threads = 100000", "threads must be from 1 to 1024"),
        ("adam_eps = -1.0", "adam_eps must be a positive number"),
        ("lr = nan", "'lr' must be a number"),
        ("lr = true", "'lr' must be a number"),
        ("patience = 2.5", "'patience' must be a whole number"),
        ('deterministic = "no"', "'deterministic' must be true or false"),
        ('precision = "fp16"', "unknown precision 'fp16'"),
    ]
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
    from seqmnist.training import trainer as training

    out = tmp_path / "sweep"
    # Interrupt the second run in the middle of its (only) epoch: the sweep stops there.
    models = []

    def interrupted_second(row):
        if not any(m is row["model"] for m in models):
            models.append(row["model"])
        return signal.SIGTERM if len(models) == 2 else None

    with training.batch_hook(interrupted_second), pytest.raises(training.TrainingInterrupted):
        sweep(parse_spec(GRID), out=out, progress=False, log=quiet)
    assert len(models) == 2
    lines = []
    monkeypatch.setattr("seqmnist.experiments.sweep.print_beside",
                        lambda bar, line: lines.append(line))
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
    from seqmnist.training import trainer as training

    spec = parse_spec('models = ["rnn"]\ndatasets = ["digits"]\nseeds = [0]\n[recipe]\nepochs = 2')
    undo = stop_after_each_epoch(monkeypatch)
    with pytest.raises(training.TrainingInterrupted):
        sweep(spec, out=tmp_path, progress=False, log=quiet)
    undo()
    lines = []
    monkeypatch.setattr("seqmnist.experiments.sweep.print_beside",
                        lambda bar, line: lines.append(line))
    sweep(spec, out=tmp_path, progress=False, log=quiet)
    assert lines[0].startswith("resumed")
    (run,) = (tmp_path / "runs" / "rnn-digits-rows-seed0").iterdir()
    assert len(json.loads((run / "history.json").read_text())) == 2
    assert "| rnn | rows | digits | 1 | " in (tmp_path / "sweep.md").read_text()
    assert "% (one seed: no spread) |" in (tmp_path / "sweep.md").read_text()  # not "± 0.00"


SMALL = 'models = ["rnn"]\ndatasets = ["digits"]\nseeds = [0]\n[recipe]\nepochs = {epochs}\n'


def test_a_run_of_another_recipe_in_a_slot_is_an_error_not_a_result(tmp_path, capsys):
    """Rerunning on the same --out with another recipe, or a foreign run dropped into a slot,
    never counts as done: the error names the difference."""
    import shutil

    out = tmp_path / "sweep"
    sweep(parse_spec(SMALL.format(epochs=1)), out=out, progress=False, log=quiet)
    with pytest.raises(UsageError, match="not the run this spec asks for \\(epochs 1, not 2\\)"):
        sweep(parse_spec(SMALL.format(epochs=2)), out=out, progress=False, log=quiet)
    spec = tmp_path / "gru.toml"
    spec.write_text(SMALL.format(epochs=1).replace('"rnn"', '"gru"'))
    (run,) = (out / "runs" / "rnn-digits-rows-seed0").iterdir()
    shutil.copytree(run, out / "runs" / "gru-digits-rows-seed0" / run.name)  # a foreign run
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "model 'rnn', not 'gru'" in err and "another --out" in err
    sweep(parse_spec(SMALL.format(epochs=1)), out=out, progress=False, log=quiet)  # still fine


HOLDER = """
import sys
from seqmnist.core.fileio import exclusive
with exclusive(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # held until the test closes our stdin
"""


def _hold(path):
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"  # held from here on, by construction
    return child


def test_a_second_sweep_on_the_same_folder_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    spec = tmp_path / "s.toml"
    spec.write_text(SMALL.format(epochs=1))
    holder = _hold(out / ".seqmnist.lock")
    try:
        assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert f"another seqmnist command (process {holder.pid}) is writing into {out}" in err
        assert not (out / "runs").exists()  # nothing of the second sweep was written
    finally:
        holder.communicate("")
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0  # lock released


def test_a_grid_slot_is_exclusive_a_second_writer_waits(tmp_path):
    """A retried task whose first worker still writes into the run waits for it instead of
    writing beside it: the slot's lock is held here by another process, the run waits (it says
    so), writes nothing, and goes on once the holder is gone."""
    import threading

    from seqmnist.experiments.sweep import run_one
    from seqmnist.runs.slots import LOCKS

    (grid_run,) = parse_spec(SMALL.format(epochs=1)).runs
    (tmp_path / LOCKS).mkdir()
    holder = _hold(tmp_path / LOCKS / f"{grid_run.key}.lock")
    said, waiting, result = [], threading.Event(), {}

    def log(line):
        said.append(line)
        if "waiting for process" in line:
            waiting.set()

    worker = threading.Thread(target=lambda: result.update(done=run_one(grid_run, tmp_path,
                                                                         log=log)))
    worker.start()
    try:
        assert waiting.wait(60), said
        assert f"waiting for process {holder.pid}" in said[0]
        assert list((tmp_path / "runs" / grid_run.key).iterdir()) == []
    finally:
        holder.communicate("")
        worker.join(120)
    assert result["done"][0] == "trained"


def test_a_huge_grid_needs_yes_and_says_how_long(tmp_path, capsys):
    spec = tmp_path / "big.toml"
    spec.write_text('models = ["rnn"]\ndatasets = ["digits"]\nseeds = ' + str(list(range(501)))
                    + "\n[recipe]\nepochs = 1\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "501 runs: about" in err and "of training on one core" in err and "--yes" in err
    assert not (tmp_path / "out").exists()
    assert main(["sweep", str(spec), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("501 runs (about ")


def test_compare_with_out_resumes_like_a_sweep(tmp_path, monkeypatch):
    """compare --out DIR killed after its first run finished (the second stopped mid-run with a
    checkpoint), then run again: the first is skipped, the second resumed, every model and seed
    present once, and the report's links to the run folders resolve."""
    import re

    from seqmnist.training import trainer as training

    out = tmp_path / "cmp"
    settings = dict(dataset="digits", epochs=2, out=out, log=quiet, progress=False)
    # the first run's two epochs, then the second run's first: there it stops (the epoch hook)
    with training.epoch_hook(lambda row: row["model"] == "gru" and signal.SIGTERM):
        with pytest.raises(training.TrainingInterrupted):
            compare(["rnn", "gru"], **settings)
    said = []
    summary = compare(["rnn", "gru"], **{**settings, "log": said.append})
    assert any(line.startswith("skipped") and "rnn-digits-rows-seed0" in line for line in said)
    slots = sorted(p.name for p in (out / "runs").iterdir())
    assert slots == ["gru-digits-rows-seed0", "rnn-digits-rows-seed0"]
    for slot in slots:
        (run,) = (out / "runs" / slot).iterdir()  # each once
        assert [h["epoch"] for h in json.loads((run / "history.json").read_text())] == [1, 2]
    (gru,) = (out / "runs" / "gru-digits-rows-seed0").iterdir()
    assert json.loads((gru / "provenance.json").read_text())["resumed"][0]["after_epoch"] == 1
    assert {g["model"] for g in summary["groups"]} == {"rnn", "gru"}
    links = re.findall(r"\]\(([^)]+)\)", (out / "report.md").read_text())
    folders = [link for link in links if "runs/" in link]
    assert len(folders) == 2 and all((out / link).is_dir() for link in folders)


def test_seeds_side_by_side_train_exactly_as_alone_and_say_so(tmp_path):
    """Two seeds of two models trained side by side in threads of one process: each seed's
    weights are bit for bit those of the same seed trained alone (one thread, as each side-by-
    side run has), and its provenance says how it was trained."""
    import torch
    from safetensors.torch import load_file

    from seqmnist import TrainConfig, train

    summary = compare(["gru", "s4d"], seeds=2, epochs=1, limit=200, dataset="digits", jobs=2,
                      out=tmp_path / "together", progress=False, log=quiet)
    for g in summary["groups"]:
        for seed, path in zip(g["seeds"], g["runs"]):
            facts = json.loads((Path(path) / "provenance.json").read_text())
            assert facts["trained_together"] == dict(runs=4, at_once=2, threads_each=1,
                                                     how="threads of one process")
            alone = train(TrainConfig(model=g["model"], dataset="digits", epochs=1, limit=200,
                                      seed=seed, threads=1), out=tmp_path / "alone",
                          progress=False, log=quiet).path
            a, b = load_file(Path(path) / "model.safetensors"), load_file(alone / "model.safetensors")
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), g["model"]


def test_a_signal_stops_every_run_side_by_side_and_the_rerun_finishes_them(tmp_path):
    """SIGTERM sent from inside a run trained in a worker thread (during its second epoch, by
    construction): the main thread's handler stops every run between batches, each keeps its
    last complete epoch, and the same comparison again resumes them and finishes."""
    import os

    from seqmnist.training import trainer as training

    out = tmp_path / "cmp"
    settings = dict(dataset="digits", epochs=2, seeds=2, jobs=2, out=out, log=quiet,
                    progress=False)
    sent = []

    def send(row):
        if row["epoch"] == 1 and not sent:
            sent.append(row["seed"])
            os.kill(os.getpid(), signal.SIGTERM)

    with training.batch_hook(send), pytest.raises(training.TrainingInterrupted) as info:
        compare(["rnn"], **settings)
    assert info.value.signum == signal.SIGTERM and len(sent) == 1
    assert training.SIGNALLED["signum"] is None  # cleared for whatever runs next
    summary = compare(["rnn"], **settings)
    (g,) = summary["groups"]
    assert g["seeds"] == [0, 1]
    for path in g["runs"]:
        assert [h["epoch"] for h in json.loads((Path(path) / "history.json").read_text())] \
            == [1, 2]
