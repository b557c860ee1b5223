"""The recorder: the one owner of a run folder's files.

Training, the Keras import, ``compare`` and sweeps all make their runs through it: it creates the
folder, writes config.json, provenance.json (built here and nowhere else) and summary.txt, writes
the checkpoint and history after every epoch, reopens a folder for ``--resume``, and finishes the
run (weights, per-image predictions, metrics.json, plots). The trainer (training/trainer.py) writes
nothing itself. The low-level formats (safetensors, checkpoints, predictions) are in storage.py;
every write is atomic (core/fileio.atomic_write).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..core import system
from ..core.errors import CheckpointError, SeqmnistError, UsageError
from ..core.fileio import atomic_write, read_json, write_json
from ..data.datasets import Dataset
from ..models.layers import trainable_parameters
from ..training.config import TrainConfig, validation_size
from ..training.metrics import Evaluation, anytime_accuracy
from . import pretrained
from .plots import confusion_figure, plot_confusion, plot_history
from .schema import Provenance, RunMetrics
from .storage import (
    PREVIOUS_CHECKPOINT,
    load_checkpoint,
    new_run_dir,
    save_checkpoint,
    save_predictions,
    save_weights,
    write_history,
)


def now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextmanager
def writing_to(folder: Path):
    """Report a failed write (full disk, quota, permissions) as one clear error."""
    try:
        yield
    except OSError as exc:
        raise SeqmnistError(f"cannot write to {folder}: {exc.strerror or exc}") from None


def provenance(cfg: TrainConfig, ds: Dataset, *, device: str, threads: int,
               train_images: int | None, recipe: dict | None, facts: dict | None = None) -> dict:
    """provenance.json of a new run (``record.Provenance``): the machine and software, the
    device, backend, precision and threads, the data it saw; ``facts``: more (a sweep on Ray
    gives its node, an import the file it came from, a comparison how its seeds trained)."""
    return Provenance(started=now(), device=device, backend=cfg.backend,
                      precision=cfg.precision, threads=threads, replicas=cfg.replicas or 1,
                      train_images=train_images, train_images_total=ds.train_total,
                      test_images=len(ds.x_test), data_source=ds.source, recipe=recipe,
                      environment=system.environment(), facts=dict(facts or {})).to_dict()


def best_epoch(cfg: TrainConfig, history: list[dict]) -> int | None:
    """The epoch whose weights the run keeps under the research protocol (best validation)."""
    if cfg.protocol != "research" or not history:
        return None
    return max(history, key=lambda h: (h["val_accuracy"], -h["epoch"]))["epoch"]


class Recorder:
    """The files of one run folder. ``Recorder.create`` makes a new one; ``Recorder.reopen``
    an interrupted one for a resume."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @classmethod
    def create(cls, out: str | Path, cfg: TrainConfig, facts: dict, summary: str,
               config_extra: dict | None = None) -> Recorder:
        """A new, uniquely named folder under ``out`` with config.json, provenance.json
        (``facts``, from ``provenance``) and summary.txt."""
        rec = cls(new_run_dir(out, cfg))
        try:
            with writing_to(rec.folder):
                write_json(rec.folder / "config.json", asdict(cfg) | (config_extra or {}))
                write_json(rec.folder / "provenance.json", facts)
                atomic_write(rec.folder / "summary.txt", summary + "\n")
        except (Exception, KeyboardInterrupt):  # no folder without its config: remove it again
            rec.discard()
            raise
        return rec

    @classmethod
    def reopen(cls, folder: str | Path, log=print) -> tuple[Recorder, TrainConfig, dict]:
        """An interrupted run: (its recorder, the config it trains with, its newest readable
        checkpoint). The checkpoint's config is the run's; config.json must agree with it."""
        folder = pretrained.resolve(folder)  # pretrained:NAME, to be refused by its folder
        if pretrained.is_pretrained(folder):
            raise CheckpointError(f"{folder}: a pretrained run shipped with seqmnist is finished "
                                  "and read-only; train your own with `seqmnist train MODEL`")
        if not os.path.lexists(folder / "config.json"):
            raise CheckpointError(f"{folder}: not a run folder (no config.json)")
        read_json(folder / "config.json")  # a folder or a pipe there: one line naming it
        state, warnings = load_checkpoint(folder)
        for w in warnings:
            log(f"warning: {w}; using {PREVIOUS_CHECKPOINT}")
        try:
            trained = TrainConfig.from_dict(state.get("config"))
            saved = TrainConfig.from_dict(read_json(folder / "config.json"))
        except UsageError as exc:
            raise CheckpointError(f"{folder}: {exc}") from None
        if saved != trained:
            changed = [k for k, v in asdict(trained).items() if asdict(saved).get(k) != v]
            raise CheckpointError(f"{folder}: config.json disagrees with the checkpoint it was "
                                  f"trained with ({', '.join(changed)}); the checkpoint's "
                                  "settings are the run's: restore config.json or start a new run")
        return cls(folder), trained.resolved(), state

    def resumed(self, history: list[dict], after_epoch: int, threads: int,
                facts: dict | None = None) -> None:
        """Note the resume in provenance.json and put back the checkpoint's history (the
        checkpoint is the truth: a kill between it and the history files leaves them behind)."""
        for stale in self.folder.glob(".*.tmp"):  # temporary files of a process killed mid-write
            stale.unlink()
        facts_now = read_json(self.folder / "provenance.json", {}) or {}
        facts_now.setdefault("resumed", []).append(
            dict(at=now(), after_epoch=after_epoch, **system.environment(), threads=threads,
                 **(facts or {})))
        with writing_to(self.folder):
            write_history(self.folder, history)
            write_json(self.folder / "provenance.json", facts_now)

    def epoch(self, checkpoint: dict) -> None:
        """After a complete epoch: the checkpoint (the previous one kept) and the history."""
        with writing_to(self.folder):
            save_checkpoint(self.folder, checkpoint)
            write_history(self.folder, checkpoint["history"])

    def finish(self, model, cfg: TrainConfig, ds: Dataset, input_shape, history: list,
               val: Evaluation, x_test: torch.Tensor, y_test: torch.Tensor) -> RunMetrics:
        """Weights, per-image test predictions, metrics.json and plots of a finished run; the
        previous checkpoint goes (the last one stays, for a look at the optimizer's state)."""
        folder = self.folder
        cm = val.confusion(ds.num_classes)
        anytime = val.anytime if val.anytime is not None else \
            anytime_accuracy(model, x_test, y_test, cfg.eval_batch_size)
        seconds = sum(h["seconds"] for h in history)
        # images trained on (a budget run's rounds are not epochs: its epoch is computed)
        seen = history[-1].get("images", len(ds.x_train) * len(history)) if history else 0
        passes = seen / max(len(ds.x_train), 1) if cfg.budget is not None else len(history)
        metrics = RunMetrics(
            model=cfg.model, dataset=cfg.dataset, view=cfg.view, test_accuracy=val.accuracy,
            test_loss=val.loss, params=trainable_parameters(model),
            train_seconds=round(seconds, 3), epochs=len(history),
            seconds_per_epoch=round(seconds / max(passes, 1e-9), 3) if history else 0.0,
            images_seen=seen,
            inference_images_per_second=round(val.images_per_second, 1),
            per_class_accuracy=dict(zip(ds.classes, val.per_class_accuracy(ds.num_classes))),
            classes=list(ds.classes), image_shape=list(ds.image_shape), confusion=cm.tolist(),
            misclassified=val.misclassified(),
            train_images=len(ds.x_train), train_images_total=ds.train_total,
            test_images=len(ds.x_test), backend=cfg.backend, precision=cfg.precision,
            protocol=cfg.protocol, validation_images=validation_size(len(ds.x_train),
                                                               cfg.validation_images)
            if cfg.protocol == "research" else None, best_epoch=best_epoch(cfg, history),
            anytime=anytime, provenance=read_json(folder / "provenance.json", {}))
        with writing_to(folder):
            save_predictions(folder, val.predictions, val.probabilities, val.labels)
            save_weights(folder, model.to("cpu", memory_format=torch.contiguous_format), cfg,
                         input_shape, ds.num_classes)
            write_json(folder / "metrics.json", metrics.to_dict())
            plot_history(history, folder, title=f"{cfg.model} on {cfg.dataset}, {cfg.view} view")
            plot_confusion(cm, ds.classes, folder / "confusion.png",
                           title=f"{cfg.model} on {cfg.dataset}: confusion matrix")
            (folder / PREVIOUS_CHECKPOINT).unlink(missing_ok=True)
        return metrics

    def discard(self) -> None:
        """Remove the folder and everything in it (a run that must not stay half-written)."""
        shutil.rmtree(self.folder, ignore_errors=True)


class TensorBoard:
    """TensorBoard events in RUN/tensorboard with PyTorch's own writer: per epoch loss, accuracy,
    val_loss, val_accuracy and learning rate; the training loss every EVERY batches; the test
    confusion matrix as an image at the end. Open with ``tensorboard --logdir runs``. The
    trainer calls ``batch`` and ``epoch`` as it calls any watcher."""

    EVERY = 50

    def __init__(self, folder: Path, steps_per_epoch: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SeqmnistError("--tensorboard needs its extra: pip install "
                                "'seqmnist[tensorboard]'") from None
        where = folder / "tensorboard"
        if where.exists() and not where.is_dir():
            raise SeqmnistError(f"{where} is a file, not a folder: TensorBoard's events cannot go "
                                "there (remove or rename it, or leave out --tensorboard)")
        try:
            self.writer = SummaryWriter(log_dir=str(where))
        except OSError as exc:
            raise SeqmnistError(f"cannot write TensorBoard events to {where}: "
                                f"{exc.strerror or exc}") from None
        self.steps = steps_per_epoch

    def batch(self, row: dict) -> None:
        if row["step"] % self.EVERY == 0:
            self.writer.add_scalar("batch/loss", row["loss"],
                                   row["epoch"] * self.steps + row["step"])

    def epoch(self, row: dict) -> None:
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            self.writer.add_scalar(f"epoch/{key}", row[key], row["epoch"])
        self.writer.flush()

    def finish(self, confusion: np.ndarray, classes: list[str], epochs: int) -> None:

        self.writer.add_figure("test/confusion", confusion_figure(confusion, classes, "test"),
                               epochs, close=False)
        self.writer.close()
