"""The trainer. Training a run has three parts, each knowing only its own job:
- the **update** (update.py) turns one batch into updated weights: forward and backward on the
  backend's replicas, the optimizer's step, the scheduler's tick;
- the **trainer** (``Trainer``, here) drives updates over epochs: a new shuffled order of the
  training tensor every epoch (index slices of one tensor on the device: no DataLoader, no worker
  processes), evaluation after each epoch (the tutorial's ``validation_data``, or held-out
  training images under the research protocol), early stopping, Ctrl-C and SIGTERM between
  batches, and the events watchers and hooks see. It writes no file;
- the **recorder** (runs/recorder.py) owns the run folder: config, provenance, a checkpoint and
  the history after every epoch (atomically, so a kill never costs more than an epoch), resume,
  and the finished run's files.
``train`` (runs/train.py; ``train(TrainConfig(model="lstm"))`` is the tutorial's recipe) builds
the three from a config and runs them.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from ..core import progress
from ..core.errors import SeqmnistError, UsageError
from ..core.signals import handling
from ..core.units import format_duration
from ..data.views import VIEWS
from .config import TrainConfig
from .metrics import Evaluation, evaluate_tensors
from .update import Update, budget_lr

# A budget run validates, keeps a checkpoint and writes a history row after each tenth of it.
BUDGET_ROUNDS = 10


def clock() -> float:
    """Seconds, for measuring training time (a test replaces it with a clock of its own)."""
    return time.perf_counter()


class TrainingInterrupted(SeqmnistError):
    """Ctrl-C or SIGTERM: the last complete epoch's checkpoint is kept for ``--resume``."""

    def __init__(self, signum: int, folder: Path, epochs_done: int):
        self.signum, self.folder, self.epochs_done = signum, folder, epochs_done
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name} after {epochs_done} "
                         f"complete epoch(s); resume with: seqmnist train --resume {folder}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but PyTorch sees no CUDA GPU")
    return torch.device(name)


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    """``auto``: bf16 autocast for CNNs on hardware with native bf16 (AMX / AVX-512 BF16 CPUs,
    Ampere+ GPUs), measured 1.7x faster per CNN epoch at the same accuracy; fp32 for recurrent
    models, where bf16 measured no faster. Weights and optimizer state stay fp32 either way."""
    if cfg.precision != "auto":
        return cfg.precision
    if VIEWS[cfg.view].kind != "image":
        return "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):  # older PyTorch builds: stay with fp32
        native = False
    return "bf16" if native else "fp32"


# A signal caught by the main thread, for the trainers running in other threads of the process
# (seeds trained side by side): each checks it between batches as it checks its own flag.
SIGNALLED: dict[str, int | None] = {"signum": None}
# Seeding PyTorch's global generator and building a model from it happen under this lock, so
# that runs trained side by side in threads start from the weights they would have alone.
BUILDING = threading.Lock()


@contextmanager
def stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag checked between batches. In the main thread this installs
    the handlers; in another thread it only yields a flag (the main thread's handler notes the
    signal in SIGNALLED, which every trainer watches too)."""
    flag: dict[str, int | None] = {"signum": None}

    def handler(signum, _frame):
        flag["signum"] = signum
        SIGNALLED["signum"] = signum

    with handling((signal.SIGINT, signal.SIGTERM), handler) as installed:
        try:
            yield flag
        finally:
            if installed:
                SIGNALLED["signum"] = None


# Called after every complete epoch (its checkpoint written) with the epoch's history row plus
# "folder", "model" and "seed"; a true return stops the run there as Ctrl-C does (a signal
# number: as that signal does). See ``epoch_hook``.
EPOCH_HOOKS: list[Callable[[dict], bool | int | None]] = []


@contextmanager
def epoch_hook(callback: Callable[[dict], bool | int | None]):
    """Within the block, ``callback(row)`` runs after every complete epoch of every run trained
    (by ``train``, ``compare`` or a sweep in this process): to watch training, or to stop a run
    after an epoch, keeping it resumable, by returning True (or a signal number)."""
    EPOCH_HOOKS.append(callback)
    try:
        yield callback
    finally:
        EPOCH_HOOKS.remove(callback)


# Called after every batch with {"epoch", "step", "loss", "model", "seed"} (epoch counted from
# 0, the batch's mean loss); a true return stops the run there, mid-epoch, as Ctrl-C does (a
# signal number: as that signal does): the epoch is not kept. See ``batch_hook``.
BATCH_HOOKS: list[Callable[[dict], bool | int | None]] = []


@contextmanager
def batch_hook(callback: Callable[[dict], bool | int | None]):
    """Within the block, ``callback(row)`` runs after every batch of every run trained in this
    process (each call costs the loss's transfer from the device: for watching, not for speed)."""
    BATCH_HOOKS.append(callback)
    try:
        yield callback
    finally:
        BATCH_HOOKS.remove(callback)


def _ask_to_stop(flag: dict, answer) -> None:
    """A hook's answer: true stops the run as SIGINT does, a signal number as that signal; the
    first reason to stop is the one kept."""
    if answer and flag["signum"] is None:
        flag["signum"] = signal.SIGINT if answer is True else int(answer)


def _stop_asked(flag: dict) -> bool:
    """Whether this run is to stop: its own flag, or a signal the main thread caught."""
    _ask_to_stop(flag, SIGNALLED["signum"])
    return flag["signum"] is not None


class Trainer:
    """Drives a step over epochs; writes nothing. ``fit`` hands each complete epoch's checkpoint
    (a dict of tensors and plain data) to its ``keep`` callback, which the recorder writes."""

    def __init__(self, model: torch.nn.Module, step: Update, cfg: TrainConfig, train_xy, val_xy,
                 progress: bool = True, log: Callable[[str], None] = print,
                 watchers: list | None = None):
        self.model, self.step, self.cfg = model, step, cfg
        self.x, self.y = train_xy
        self.x_val, self.y_val = val_xy
        self.progress, self.log = progress, log
        self.watchers = list(watchers or [])  # objects with batch(row) and epoch(row)
        self.shuffle = torch.Generator().manual_seed(cfg.seed)
        self.steps_per_epoch = -(-len(self.x) // cfg.batch_size)
        self.history: list[dict] = []
        self.best: dict | None = None  # research protocol: the best validation epoch's weights
        self.epochs_done = 0
        # a budget run's place in its shuffled order of the training set, and its last batch's
        # seconds (the estimate that decides which batch is the last)
        self.order: torch.Tensor | None = None
        self.position = 0
        self.batch_seconds = 0.0

    def checkpoint(self) -> dict:
        """Everything a resume needs to continue exactly where this epoch ended."""
        return dict(model=self.model.state_dict(), **self.step.state_dict(),
                    rng_torch=torch.get_rng_state(), rng_shuffle=self.shuffle.get_state(),
                    epoch=self.epochs_done, history=list(self.history),
                    config=asdict(self.cfg), best=self.best, order=self.order,
                    position=self.position, batch_seconds=self.batch_seconds)

    def restore(self, state: dict) -> None:
        """Continue from ``checkpoint()``'s dict."""
        self.model.load_state_dict(state["model"])
        self.step.load_state_dict(state)
        torch.set_rng_state(state["rng_torch"])
        self.shuffle.set_state(state["rng_shuffle"])
        self.history, self.epochs_done = list(state["history"]), int(state["epoch"])
        self.best = state.get("best")
        order = state.get("order")
        self.order = order.to(self.x.device) if order is not None else None
        self.position = int(state.get("position", 0))
        self.batch_seconds = float(state.get("batch_seconds", 0.0))

    def fit(self, keep: Callable[[dict], None], folder: Path) -> Evaluation | None:
        """Train the remaining epochs (or, with a budget, the remaining rounds: tenths of it);
        after each complete one, ``keep(self.checkpoint())`` (the dict holds the live tensors:
        write it, or copy it, before returning).
        Returns the last epoch's validation (None when no epoch was left to train). ``folder``
        names the run in messages and hook rows only."""
        cfg, val = self.cfg, None
        rounds = BUDGET_ROUNDS if cfg.budget is not None else cfg.epochs
        threads = torch.get_num_threads()
        with stop_on_signals() as flag:
            for epoch in range(self.epochs_done, rounds):
                torch.set_num_threads(self.step.threads)  # evaluation uses every thread again
                try:
                    if cfg.budget is None:
                        loss, acc, complete, seconds, images = self._epoch(epoch, flag)
                    else:
                        loss, acc, complete, seconds, images = self._round(epoch, flag)
                finally:
                    torch.set_num_threads(threads)
                if not complete:  # stopped between batches: this epoch is not kept
                    raise TrainingInterrupted(flag["signum"], folder, epoch)
                if not math.isfinite(loss):
                    raise SeqmnistError(
                        f"training diverged: the loss became {loss} in epoch {epoch + 1}; the run "
                        f"keeps its last good checkpoint (epoch {epoch}) in {folder}. Try a lower "
                        "--lr or another --seed")
                last = cfg.protocol == "tutorial" and epoch + 1 == rounds  # on the test set
                val = evaluate_tensors(self.model, self.x_val, self.y_val, cfg.eval_batch_size,
                                       cfg.precision, anytime=last)
                before = self.history[-1] if self.history else {}
                row = dict(epoch=epoch + 1, loss=loss, accuracy=acc, val_loss=val.loss,
                           val_accuracy=val.accuracy, seconds=round(seconds, 3), lr=self.step.lr,
                           elapsed=round(before.get("elapsed", 0.0) + seconds, 3),
                           images=before.get("images", 0) + images)
                self.history.append(row)
                self.epochs_done = epoch + 1
                if cfg.protocol == "research" and (self.best is None
                                                   or val.accuracy > self.best["val_accuracy"]):
                    self.best = dict(epoch=epoch + 1, val_accuracy=val.accuracy,
                                     state={k: v.detach().clone()
                                            for k, v in self.model.state_dict().items()})
                keep(self.checkpoint())
                for w in self.watchers:
                    w.epoch(row)
                where = (f"Epoch {epoch + 1}/{cfg.epochs} - {seconds:.1f}s" if cfg.budget is None
                         else f"Round {epoch + 1}/{rounds} - {row['elapsed']:.1f}s of "
                              f"{format_duration(cfg.budget)} - {row['images']:,} images")
                self.log(f"{where} - loss: {loss:.4f} - accuracy: {acc:.4f} - val_loss: "
                         f"{val.loss:.4f} - val_accuracy: {val.accuracy:.4f}")
                for hook in list(EPOCH_HOOKS):
                    _ask_to_stop(flag, hook(dict(row, folder=folder, model=cfg.model,
                                                 seed=cfg.seed)))
                if _stop_asked(flag):
                    raise TrainingInterrupted(flag["signum"], folder, epoch + 1)
                if (cfg.budget is None and self.best is not None
                        and epoch + 1 - self.best["epoch"] >= cfg.patience):
                    self.log(f"Early stop: no better validation accuracy than epoch "
                             f"{self.best['epoch']}'s {self.best['val_accuracy']:.4f} for "
                             f"{cfg.patience} epochs")
                    break
        return val

    def _round(self, k: int, flag: dict) -> tuple[float, float, bool, float, int]:
        """A budget run's round ``k``: batches until the training seconds spent reach the end of
        the round's tenth of the budget, the learning rate set before each batch from the share
        of the budget spent (``budget_lr``). In the last round the batch expected to reach the
        budget (the last batch's time as the estimate) is the last one, at the schedule's
        lowest rate: the run ends within one batch of its budget. Batches run through a
        shuffled order of the training set, reshuffled at its end; the order and the place in
        it are part of the checkpoint. Returns (mean loss, accuracy, whether the round ran to
        its end, training seconds, images)."""
        x, y, cfg = self.x, self.y, self.cfg
        budget = cfg.budget
        end = budget * (k + 1) / BUDGET_ROUNDS
        spent = self.history[-1]["elapsed"] if self.history else 0.0
        start = spent
        self.step.train()
        total_loss = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device, dtype=torch.long)
        seen = 0
        watched = bool(BATCH_HOOKS or self.watchers)
        bar = progress.bar(total=round(end - start, 1), unit="s", enabled=self.progress,
                           desc=f"{cfg.model} round {k + 1}/{BUDGET_ROUNDS}", leave=False,
                           bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}")
        step, finished = 0, False
        while spent < end and not finished:
            if self.order is None or self.position >= len(x):
                self.order = torch.randperm(len(x), generator=self.shuffle).to(x.device)
                self.position = 0
            idx = self.order[self.position:self.position + cfg.batch_size]
            finished = k + 1 == BUDGET_ROUNDS and spent + self.batch_seconds >= budget
            self.step.lr = budget_lr(cfg, 1.0 if finished else spent / budget)
            t0 = clock()
            loss_sum, hits = self.step(x.index_select(0, idx), y.index_select(0, idx))
            if x.device.type == "cuda":  # the budget is time the device spent, not queued work
                torch.cuda.synchronize(x.device)
            if watched:
                self._batch_event(dict(epoch=k, step=step, loss=float(loss_sum) / len(idx)), flag)
            self.batch_seconds = clock() - t0
            spent += self.batch_seconds
            self.position += len(idx)
            total_loss += loss_sum
            correct += hits
            seen += len(idx)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}",
                                acc=f"{correct.item() / seen:.4f}", refresh=False)
            bar.update(min(self.batch_seconds, bar.total - bar.n))
            step += 1
            if _stop_asked(flag):
                bar.close()
                return float("nan"), 0.0, False, spent - start, seen
        bar.close()
        return (total_loss.item() / max(seen, 1), correct.item() / max(seen, 1), True,
                spent - start, seen)

    def _epoch(self, epoch: int, flag: dict) -> tuple[float, float, bool, float, int]:
        """One pass over the training set: (mean loss, accuracy, whether every batch ran,
        seconds, images)."""
        x, y, cfg, steps = self.x, self.y, self.cfg, self.steps_per_epoch
        t0 = clock()
        self.step.train()
        perm = torch.randperm(len(x), generator=self.shuffle).to(x.device)
        total_loss = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device, dtype=torch.long)
        seen = done = 0
        watched = bool(BATCH_HOOKS or self.watchers)
        bar = progress.bar(total=steps, desc=f"{cfg.model} epoch {epoch + 1}/{cfg.epochs}",
                           unit="batch", enabled=self.progress, leave=False)
        for step, i in enumerate(range(0, len(x), cfg.batch_size)):
            idx = perm[i:i + cfg.batch_size]
            loss_sum, hits = self.step(x.index_select(0, idx), y.index_select(0, idx))
            total_loss += loss_sum
            correct += hits
            seen += len(idx)
            if watched:
                self._batch_event(dict(epoch=epoch, step=step, loss=float(loss_sum) / len(idx)),
                                  flag)
            if step % 50 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}",
                                acc=f"{correct.item() / seen:.4f}", refresh=False)
            bar.update()
            done = step + 1
            if _stop_asked(flag):
                break
        bar.close()
        return (total_loss.item() / max(seen, 1), correct.item() / max(seen, 1), done == steps,
                clock() - t0, seen)

    def _batch_event(self, row: dict, flag: dict) -> None:
        for w in self.watchers:
            w.batch(row)
        for hook in list(BATCH_HOOKS):
            _ask_to_stop(flag, hook(dict(row, model=self.model, seed=self.cfg.seed)))


