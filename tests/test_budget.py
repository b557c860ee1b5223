"""Training budgets: a run trains for a given amount of training time, its learning rate
following the schedule over time, and resumes with the time it has left. Time here is a clock
of the test's own (each batch costs exactly BATCH seconds), so nothing depends on how fast this
machine is."""

import json
import subprocess
import sys

import pytest

from seqmnist.core.errors import UsageError
from seqmnist.core.units import format_duration, parse_duration
from seqmnist.runs.storage import load_checkpoint, load_run
from seqmnist.runs.train import train
from seqmnist.training import trainer
from seqmnist.training.config import TrainConfig
from seqmnist.training.update import budget_lr

BATCH = 0.5  # seconds each batch costs on the test's clock
BUDGET = 20.0  # 40 batches, 4 per round


def quiet(*_):
    pass


@pytest.fixture
def test_clock(monkeypatch):
    """A clock that moves BATCH at each reading: the trainer reads it once before and once
    after every batch of a budget run, so every batch takes BATCH seconds."""
    now = {"t": 0.0}

    def clock():
        now["t"] += BATCH
        return now["t"]

    monkeypatch.setattr(trainer, "clock", clock)
    return now


def budget_config(**kw):
    return TrainConfig(model="gru", dataset="digits", budget=BUDGET, batch_size=64,
                       model_options={"hidden": 16}, **kw)


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("2h", 7200),
                                           ("1h30m", 5400), ("45", 45), ("0.5m", 30), (12, 12)])
def test_durations_are_read_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "m", "-5m", "0", "1h-3m", "31d", "5 minutes", "nan"])
def test_a_bad_duration_says_what_is_accepted(text):
    with pytest.raises(UsageError, match="duration"):
        parse_duration(text)


def test_durations_print_as_they_are_written():
    assert [format_duration(s) for s in (12.5, 90, 300, 7200, 5400)] == \
        ["12.5s", "1m30s", "5m", "2h", "1h30m"]


@pytest.mark.parametrize("schedule", ["onecycle", "constant"])
def test_the_schedule_over_time_ends_at_its_lowest_rate(schedule):
    cfg = budget_config(schedule=schedule, lr=1e-2).resolved()
    rates = [budget_lr(cfg, i / 100) for i in range(101)]
    assert rates[-1] == min(rates) and rates[-1] < cfg.lr / 100
    if schedule == "onecycle":  # up to the peak at 30%, then down
        assert max(rates) == pytest.approx(cfg.lr) and rates.index(max(rates)) == 30
        assert rates[0] == pytest.approx(cfg.lr / 25)
    else:
        assert rates[0] == cfg.lr and all(a > b for a, b in zip(rates, rates[1:]))


@pytest.mark.parametrize("schedule", ["onecycle", "constant"])
def test_a_budget_run_stops_within_one_batch_of_its_budget_at_the_lowest_rate(
        tmp_path, test_clock, schedule):
    result = train(budget_config(schedule=schedule), out=tmp_path, log=quiet, progress=False)
    h = result.history
    assert len(h) == trainer.BUDGET_ROUNDS
    assert BUDGET <= h[-1]["elapsed"] <= BUDGET + BATCH
    assert h[-1]["lr"] == budget_lr(result.config, 1.0)  # the last step at the lowest rate
    # a round ends once its tenth of the budget is spent; the rate follows the time spent
    for k, row in enumerate(h[:-1], 1):
        assert k * BUDGET / 10 <= row["elapsed"] < k * BUDGET / 10 + BATCH
        assert row["lr"] == pytest.approx(budget_lr(result.config, row["elapsed"] / BUDGET
                                                    - BATCH / BUDGET))
    assert sum(r["seconds"] for r in h) == pytest.approx(h[-1]["elapsed"])
    batches = round(h[-1]["elapsed"] / BATCH)
    passes, rest = divmod(batches, -(-1437 // 64))  # 23 batches per pass over 1,437 images
    assert h[-1]["images"] == passes * 1437 + rest * 64
    metrics = load_run(result.path).metrics
    assert metrics.images_seen == h[-1]["images"] and metrics.train_seconds == h[-1]["elapsed"]
    assert json.loads((result.path / "config.json").read_text())["budget"] == BUDGET


def test_an_interrupted_budget_run_resumes_with_the_time_it_has_left(tmp_path, test_clock):
    whole = train(budget_config(), out=tmp_path / "whole", log=quiet, progress=False)
    test_clock["t"] = 0.0
    batches = {"n": 0}

    def stop_in_round_four(row):
        batches["n"] += 1
        return batches["n"] == 14  # rounds are 4 batches: this is round 4's second

    with trainer.batch_hook(stop_in_round_four), pytest.raises(trainer.TrainingInterrupted):
        train(budget_config(), out=tmp_path / "cut", log=quiet, progress=False)
    folder = next((tmp_path / "cut").iterdir())
    state, _ = load_checkpoint(folder)
    assert len(state["history"]) == 3 and state["history"][-1]["elapsed"] == 3 * BUDGET / 10
    resumed = train(resume=folder, log=quiet, progress=False)
    # the time already spent counts: the run trains only what is left, and ends as the
    # uninterrupted run did, row for row
    assert [r["elapsed"] for r in resumed.history] == [r["elapsed"] for r in whole.history]
    assert [r["images"] for r in resumed.history] == [r["images"] for r in whole.history]
    assert [r["val_accuracy"] for r in resumed.history] == pytest.approx(
        [r["val_accuracy"] for r in whole.history], abs=1e-9)


def test_a_bad_budget_on_the_command_line_is_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "seqmnist", "train", "gru", "--budget", "ten",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--budget" in proc.stderr and "10m" in proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())


def test_a_budget_in_a_sweep_spec_is_read_as_on_the_command_line():
    from seqmnist.experiments.sweep import parse_spec

    spec = parse_spec('models = ["gru"]\nviews = ["rows"]\ndatasets = ["digits"]\nseeds = [0]\n'
                      '[recipe]\nbudget = "2m"\n')
    assert [r.config.budget for r in spec.runs] == [120.0]
    with pytest.raises(UsageError, match="budget"):
        parse_spec('models = ["gru"]\nviews = ["rows"]\ndatasets = ["digits"]\nseeds = [0]\n'
                   '[recipe]\nbudget = "soon"\n')
