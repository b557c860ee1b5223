"""The three parts of training apart: the step owns the update, the trainer writes no file, the
recorder writes every file of a run (trained or imported) and builds provenance in one place."""

import copy
import json
import platform
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import FIXTURE_DATA
from seqmnist.core.errors import SeqmnistError
from seqmnist.data.datasets import load_dataset
from seqmnist.data.views import to_input
from seqmnist.models.registry import create_model
from seqmnist.runs.recorder import Recorder
from seqmnist.runs.train import train
from seqmnist.training import trainer as training
from seqmnist.training.config import TrainConfig
from seqmnist.training.trainer import Trainer, TrainingInterrupted
from seqmnist.training.update import Update

KERAS = Path(__file__).parent / "fixtures" / "keras"


def quiet(*_):
    pass


def _parts(model="rnn", epochs=2, limit=200, **changes):
    cfg = replace(TrainConfig(model=model, dataset="digits", epochs=epochs, limit=limit,
                              replicas=1, backend="torch", **changes).resolved(), precision="fp32")
    ds = load_dataset("digits").limit(limit)
    torch.manual_seed(cfg.seed)
    net = create_model(cfg.model, (8, 8), ds.num_classes)
    x, y = to_input(ds.x_train, cfg.view, cfg.seed), torch.as_tensor(ds.y_train)
    xt, yt = to_input(ds.x_test, cfg.view, cfg.seed), torch.as_tensor(ds.y_test)
    step = Update(net, cfg, -(-len(x) // cfg.batch_size), torch.get_num_threads())
    return cfg, net, step, (x, y), (xt, yt)


def test_the_step_makes_the_update_and_ticks_the_schedule():
    cfg, net, step, (x, y), _ = _parts(schedule="onecycle", lr=1e-2)
    trainable = [p for p in net.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    lr0 = step.lr
    loss, hits = step(x[:32], y[:32])
    assert float(loss) > 0 and 0 <= int(hits) <= 32
    assert all(not torch.equal(a, b) for a, b in zip(before, trainable))  # Adam moved each one
    assert step.lr != lr0  # the one-cycle schedule ticked once
    assert step.optimizer.state_dict()["state"][0]["step"] == 1


def test_a_step_restored_from_its_state_continues_exactly():
    cfg, net, step, (x, y), _ = _parts(schedule="onecycle")
    step(x[:32], y[:32])
    saved = copy.deepcopy(dict(model=net.state_dict(), **step.state_dict()))
    step(x[32:64], y[32:64])
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    _, net2, step2, _, _ = _parts(schedule="onecycle")
    net2.load_state_dict(saved["model"])
    step2.load_state_dict(saved)
    step2(x[32:64], y[32:64])
    assert all(torch.allclose(expected[k], v, atol=1e-6) for k, v in net2.state_dict().items())
    assert step2.lr == step.lr


def test_the_trainer_writes_no_file_and_hands_each_epoch_to_its_keeper(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, net, step, train_xy, val_xy = _parts(epochs=3)
    kept = []
    trainer = Trainer(net, step, cfg, train_xy, val_xy, progress=False, log=quiet)
    val = trainer.fit(lambda c: kept.append(copy.deepcopy(c)), tmp_path / "nowhere")
    assert list(tmp_path.iterdir()) == []
    assert [k["epoch"] for k in kept] == [1, 2, 3]
    assert [len(k["history"]) for k in kept] == [1, 2, 3]
    assert val is not None and val.accuracy == trainer.history[-1]["val_accuracy"]
    assert set(kept[0]) >= {"model", "optimizer", "scheduler", "rng_dropout", "rng_torch",
                            "rng_shuffle", "config", "best"}


def test_a_trainer_restored_from_a_checkpoint_trains_the_same_next_epoch():
    cfg, net, step, train_xy, val_xy = _parts(epochs=2)
    kept = []
    Trainer(net, step, cfg, train_xy, val_xy, progress=False, log=quiet).fit(
        lambda c: kept.append(copy.deepcopy(c)), Path())
    cfg, net2, step2, _, _ = _parts(epochs=2)
    again = Trainer(net2, step2, cfg, train_xy, val_xy, progress=False, log=quiet)
    again.restore(kept[0])
    again.fit(lambda _: None, Path())
    timed = ("seconds", "elapsed")  # measured time: the rest must be the same numbers
    same = [{k: v for k, v in row.items() if k not in timed}
            for row in (again.history[1], kept[1]["history"][1])]
    assert same[0] == same[1]
    assert again.history[1]["elapsed"] == pytest.approx(
        kept[0]["history"][0]["elapsed"] + again.history[1]["seconds"], abs=2e-3)


def test_a_batch_hook_stops_mid_epoch_and_that_epoch_is_not_kept():
    cfg, net, step, train_xy, val_xy = _parts(epochs=2)
    kept, rows = [], []

    def stop_in_second_epoch(row):
        rows.append((row["epoch"], row["step"]))
        return signal.SIGTERM if row["epoch"] == 1 and row["step"] == 0 else None

    trainer = Trainer(net, step, cfg, train_xy, val_xy, progress=False, log=quiet)
    with training.batch_hook(stop_in_second_epoch), pytest.raises(TrainingInterrupted) as info:
        trainer.fit(kept.append, Path("run"))
    assert info.value.signum == signal.SIGTERM and info.value.epochs_done == 1
    assert [k["epoch"] for k in kept] == [1] and rows[-1] == (1, 0)
    assert training.BATCH_HOOKS == []


def test_a_folder_whose_first_files_cannot_be_written_is_removed(tmp_path, monkeypatch):
    import seqmnist.runs.recorder as recorder

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(recorder, "write_json", full)
    with pytest.raises(SeqmnistError, match="No space left"):
        Recorder.create(tmp_path, TrainConfig(model="rnn", dataset="digits").resolved(), {}, "s")
    assert list(tmp_path.iterdir()) == []


def test_trained_and_imported_runs_have_the_same_provenance_fields(tmp_path, monkeypatch):
    from seqmnist.runs.keras_import import import_keras

    trained = train(TrainConfig(model="rnn", dataset="digits", epochs=1, limit=100),
                    out=tmp_path / "t", log=quiet, progress=False).path
    imported = import_keras(KERAS / "gru.keras", out=tmp_path / "i",
                            data_dir=FIXTURE_DATA / "mnist", log=quiet)
    a = json.loads((trained / "provenance.json").read_text())
    b = json.loads((imported / "provenance.json").read_text())
    assert set(b) - set(a) == {"imported_from"} and set(a) - set(b) == set()
    assert b["recipe"] is None and b["train_images"] is None and a["train_images"] == 100
    assert b["imported_from"]["sha256"] == json.loads(
        (imported / "config.json").read_text())["imported_from"]["sha256"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_real_signal_mid_epoch_stops_after_that_batch_and_resume_says_so(tmp_path, signum):
    """The signal is sent to this process from inside the third batch (so it arrives during
    training by construction): the handler notes it, the epoch in progress is dropped, the run
    keeps the previous epoch's checkpoint, and the resume says where it continues."""
    import os

    sent = []

    def send(row):
        if row["epoch"] == 1 and row["step"] == 2 and not sent:
            sent.append(row["step"])
            os.kill(os.getpid(), signum)

    cfg = TrainConfig(model="rnn", dataset="digits", epochs=3, limit=300)
    with training.batch_hook(send), pytest.raises(TrainingInterrupted) as info:
        train(cfg, out=tmp_path, log=quiet, progress=False)
    assert info.value.signum == signum and info.value.epochs_done == 1 and sent == [2]
    assert info.value.exit_code == 128 + signum
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back
    lines = []
    done = train(resume=info.value.folder, log=lines.append, progress=False)
    assert f"Resuming {info.value.folder} after epoch 1/3" in lines
    assert [h["epoch"] for h in done.history] == [1, 2, 3]


def test_the_step_leaves_every_core_to_one_model_and_one_core_to_each_replica():
    cfg = replace(TrainConfig(model="cnn", dataset="digits").resolved(), replicas=1,
                  backend="torch", precision="fp32")
    assert Update(create_model("cnn", (1, 8, 8), 10), cfg, 1, threads=2).threads == 2
    two = Update(create_model("rnn", (8, 8), 10), replace(cfg, model="rnn", view="rows",
                                                        replicas=2), 1, threads=2)
    assert two.threads == 1
    two.close()


def test_a_finished_run_leaves_no_replica_threads_behind(tmp_path):
    import threading

    train(TrainConfig(model="rnn", dataset="digits", epochs=1, limit=100, replicas=2),
          out=tmp_path, log=quiet, progress=False)
    assert not [t for t in threading.enumerate() if t.name.startswith("replica")]


def test_the_first_lines_say_how_the_run_trains_and_validates(tmp_path):
    lines = []
    train(TrainConfig(model="rnn", dataset="digits", epochs=1, limit=300, replicas=2),
          out=tmp_path / "a", log=lines.append, progress=False)
    assert "validating on the 360 test images after each epoch, as the tutorial does" in lines[0]
    assert "batch split over 2 cores" in lines[0]
    lines.clear()
    train(TrainConfig(model="rnn", dataset="digits", epochs=1, limit=300, replicas=1,
                      protocol="research"), out=tmp_path / "b", log=lines.append,
          progress=False)
    assert "research protocol: validating on the last 30 training images held out" in lines[0]
    assert "batch split" not in lines[0]


def test_a_resume_takes_the_folder_as_text_too(tmp_path):
    cfg = TrainConfig(model="rnn", dataset="digits", epochs=2, limit=100)
    with training.epoch_hook(lambda row: True), pytest.raises(TrainingInterrupted) as info:
        train(cfg, out=tmp_path, log=quiet, progress=False)
    done = train(resume=str(info.value.folder), log=quiet, progress=False)
    assert done.path == info.value.folder and len(done.history) == 2


def test_a_model_without_steps_is_not_read_again_for_anytime_accuracy(monkeypatch):
    """A CNN has no answer after each step: anytime accuracy is None at once, without another
    pass over the test set."""
    from seqmnist.training import metrics as evaluation

    passes = []
    real = evaluation.evaluate_tensors
    monkeypatch.setattr(evaluation, "evaluate_tensors",
                        lambda *a, **k: passes.append(1) or real(*a, **k))
    cnn = create_model("cnn", (1, 8, 8), 10)
    assert evaluation.anytime_accuracy(cnn, torch.zeros(4, 1, 8, 8), torch.zeros(4).long()) \
        is None
    assert passes == []
    rnn = create_model("rnn", (8, 8), 10)
    found = evaluation.anytime_accuracy(rnn, torch.zeros(4, 8, 8), torch.zeros(4).long())
    assert found["steps"] == list(range(1, 9)) and passes == [1]


FAULTS = """
import resource, torch
from seqmnist.models import create_model
from seqmnist.core.system import keep_freed_memory
torch.set_num_threads(1); torch.manual_seed(0)
model, x = create_model("s4d", (784, 1), 10), torch.rand(8, 784, 1)
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model(x).sum().backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults(); default = faults(); took = keep_freed_memory(); faults()
print(default, took, faults())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_training_memory_is_reused_not_faulted_in_again():
    """keep_freed_memory (set by the training commands) makes a step reuse its freed activations: measured
    in a fresh process as page faults over three forward and backward passes at 784 steps,
    before and after (about 20,000 before, a few hundred at most after)."""
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True,
                         check=True).stdout.split()
    default, took, after = int(out[0]), out[1], int(out[2])
    assert took == "True" and default > 2000 and after < default / 10, out


def test_train_leaves_the_callers_process_as_it_found_it(tmp_path, monkeypatch):
    """A notebook calls seqmnist.train with threads and determinism of its own, then runs its
    own PyTorch code: the thread count, the deterministic flag, the hook lists and the C
    allocator are as they were. The command line, whose process it is, keeps freed memory."""
    from seqmnist.cli import main
    from seqmnist.core import system

    asked = []
    monkeypatch.setattr(system, "keep_freed_memory", lambda: asked.append(1))
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              list(training.EPOCH_HOOKS), list(training.BATCH_HOOKS))
    seen = []
    with training.epoch_hook(lambda row: seen.append(
            (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()))):
        train(TrainConfig(model="rnn", dataset="digits", epochs=1, limit=100,
                          threads=before[0] + 1, deterministic=True),
              out=tmp_path, log=quiet, progress=False)
    assert seen == [(before[0] + 1, True)]  # the run itself trained as it was asked
    after = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             list(training.EPOCH_HOOKS), list(training.BATCH_HOOKS))
    assert after == before and asked == []
    assert main(["train", "rnn", "--dataset", "digits", "--epochs", "1", "--limit", "100",
                 "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    assert asked == [1]
