"""Progress where output is not a terminal: a line every few seconds of work, on a clock of the
test's own (nothing here waits for real time to pass)."""

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from seqmnist.core import progress
from seqmnist.core.progress import Lines


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_interval_of_work_and_the_last_when_it_closes():
    clock, lines = Clock(), []
    bar = Lines(total=100, desc="lstm epoch 1/6", unit="batch", interval=5, clock=clock,
                write=lines.append)
    for _ in range(100):
        clock.now += 0.12  # 12 s of work in all
        bar.update()
        bar.set_postfix(loss="0.2500")
    bar.close()
    assert len(lines) == 3  # after 5 s, after 10 s, and the last
    assert lines[0].startswith("lstm epoch 1/6: 42/100 batch (42%), 5 s, loss=0.2500")
    assert lines[-1].startswith("lstm epoch 1/6: 100/100 batch (100%), 12 s")
    bar.close()  # closing twice says nothing more
    assert len(lines) == 3


def test_a_step_shorter_than_the_interval_prints_nothing():
    clock, lines = Clock(), []
    with Lines(total=10, desc="evaluate", interval=5, clock=clock, write=lines.append) as bar:
        for _ in range(10):
            clock.now += 0.1
            bar.update()
    assert lines == []


def test_time_passing_without_updates_still_gives_a_line():
    clock, lines = Clock(), []
    bar = Lines(total=10, desc="runs", unit="run", interval=5, clock=clock, write=lines.append)
    bar.set_postfix(training="lstm seed 0")
    clock.now = 6
    bar.refresh()
    assert lines == ["runs: 0/10 run (0%), 6 s, training=lstm seed 0"]


def test_the_kind_of_bar_follows_where_output_goes(monkeypatch):
    from tqdm import tqdm

    monkeypatch.setattr(progress, "in_notebook", lambda: False)
    monkeypatch.setattr(progress, "on_terminal", lambda stream=None: False)
    assert isinstance(progress.bar(10, "x"), Lines)  # a file or a pipe: lines
    silent = progress.bar(10, "x", enabled=False)
    assert isinstance(silent, tqdm) and silent.disable
    monkeypatch.setattr(progress, "on_terminal", lambda stream=None: True)
    shown = progress.bar(10, "x", leave=False)
    assert isinstance(shown, tqdm) and not shown.disable
    shown.close()
    # a notebook without ipywidgets: lines, not tqdm's "IProgress not found" warning
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    monkeypatch.setitem(__import__("sys").modules, "ipywidgets", None)
    assert isinstance(progress.bar(10, "x"), Lines)


def test_training_with_output_to_a_file_prints_progress_lines(monkeypatch, capsys, tmp_path):
    """The trainer's bar, where stderr is not a terminal (as under pytest), is lines: with
    an interval of 0 every batch gives one, naming the model and the epoch."""
    pytest.importorskip("sklearn")
    from seqmnist import TrainConfig, train

    monkeypatch.setattr(progress, "INTERVAL", 0.0)
    monkeypatch.setattr(progress, "in_notebook", lambda: False)
    monkeypatch.setattr(progress, "on_terminal", lambda stream=None: False)
    train(TrainConfig(model="gru", dataset="digits", epochs=1, batch_size=256), out=tmp_path,
          progress=True, log=lambda *_: None)
    err = capsys.readouterr().err
    assert "gru epoch 1/1: 1/6 batch (17%)" in err
    assert "gru epoch 1/1: 6/6 batch (100%)" in err


def test_a_comparison_waiting_for_its_runs_names_those_in_training(monkeypatch):
    """While one run trains and another has finished, a line names the one still training.
    The blocked run is let go by that very line, so nothing here waits for time to pass."""
    import sys

    from seqmnist.experiments.comparison import _collect
    from seqmnist.training.config import TrainConfig

    monkeypatch.setattr(progress, "INTERVAL", 0.0)
    monkeypatch.setattr(progress, "in_notebook", lambda: False)
    monkeypatch.setattr(progress, "on_terminal", lambda stream=None: False)
    release = threading.Event()
    written = []

    class Stderr:
        def write(self, text):
            written.append(text)
            if "1/2 run (50%)" in text and "training=lstm seed 0" in text:
                release.set()

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stderr", Stderr())
    configs = [TrainConfig(model="lstm", seed=0), TrainConfig(model="cnn", seed=1)]

    def slow():
        release.wait(60)
        return "trained", "runs/a", 2.0

    lines = []
    with ThreadPoolExecutor(2) as pool:
        futures = {pool.submit(slow): 0}
        futures[pool.submit(lambda: ("trained", "runs/b", 1.0))] = 1
        paths = [Path()] * 2
        _collect(futures, configs, paths, lines.append, progress=True)
    assert release.is_set()  # the line naming the run still in training was written
    assert paths == [Path("runs/a"), Path("runs/b")]
    assert lines[0].startswith("trained cnn, seed 1 (1 of 2)")
    assert lines[1].startswith("trained lstm, seed 0 (2 of 2)")


def test_a_line_written_beside_a_bar_starts_on_a_cleared_line(monkeypatch):
    """Any writer (here print, as a logger would) inside ``beside`` finds the terminal's bar
    cleared, so its line does not glue onto the bar, and the bar is drawn again after it. Fails
    if ``beside`` leaves a tqdm bar as it is (as ``Lines``, which needs nothing)."""
    import io
    import sys

    from tqdm import tqdm

    terminal = io.StringIO()  # stdout and stderr mixed, as on a terminal
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    with tqdm(total=3, desc="runs", file=sys.stderr, mininterval=0) as bar:
        bar.update()
        with progress.beside(bar):
            print("trained lstm, seed 0")
        bar.update()
    before, after = terminal.getvalue().split("trained lstm, seed 0\n")
    assert "runs" in before and before.endswith("\r")  # the bar, then cleared
    assert "runs" in after  # drawn again
