"""Training: ``train(TrainConfig(model="lstm"))`` is the tutorial's recipe.

Three parts, each knowing only its own job:
- the **step** (steps.py) turns one batch into updated weights: forward and backward on the
  backend's replicas, the optimizer update, the scheduler's tick;
- the **trainer** (``Trainer``, here) drives steps over epochs: a new shuffled order of the
  training tensor every epoch (index slices of one tensor on the device: no DataLoader, no worker
  processes), evaluation after each epoch (the tutorial's ``validation_data``, or held-out
  training images under the research protocol), early stopping, Ctrl-C and SIGTERM between
  batches, and the events watchers and hooks see. It writes no file;
- the **recorder** (recorder.py) owns the run folder: config, provenance, a checkpoint and the
  history after every epoch (atomically, so a kill never costs more than an epoch), resume, and
  the finished run's files.
``train`` builds the three from a config and runs them.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .backends import install_backend, resolve_backend
from .config import TrainConfig, validation_size
from .data import Dataset, check_split, load_dataset
from .errors import SeqmnistError, UsageError
from .evaluation import Evaluation, evaluate_tensors
from .fileio import writable_folder
from .models import check_model, create_model, summary_text
from .recorder import Recorder, TensorBoard, provenance
from .steps import Step
from .views import VIEWS, to_input


class TrainingInterrupted(SeqmnistError):
    """Ctrl-C or SIGTERM: the last complete epoch's checkpoint is kept for ``--resume``."""

    def __init__(self, signum: int, folder: Path, epochs_done: int):
        self.signum, self.folder, self.epochs_done = signum, folder, epochs_done
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name} after {epochs_done} "
                         f"complete epoch(s); resume with: seqmnist train --resume {folder}")


@dataclass
class TrainResult:
    path: Path
    config: TrainConfig
    metrics: dict
    history: list[dict]
    model: torch.nn.Module


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
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, _frame):
        flag["signum"] = signum
        SIGNALLED["signum"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        SIGNALLED["signum"] = None
        for s, h in old.items():
            signal.signal(s, h)


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

    def __init__(self, model: torch.nn.Module, step: Step, cfg: TrainConfig, train_xy, val_xy,
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

    def checkpoint(self) -> dict:
        """Everything a resume needs to continue exactly where this epoch ended."""
        return dict(model=self.model.state_dict(), **self.step.state_dict(),
                    rng_torch=torch.get_rng_state(), rng_shuffle=self.shuffle.get_state(),
                    epoch=self.epochs_done, history=list(self.history),
                    config=asdict(self.cfg), best=self.best)

    def restore(self, state: dict) -> None:
        """Continue from ``checkpoint()``'s dict."""
        self.model.load_state_dict(state["model"])
        self.step.load_state_dict(state)
        torch.set_rng_state(state["rng_torch"])
        self.shuffle.set_state(state["rng_shuffle"])
        self.history, self.epochs_done = list(state["history"]), int(state["epoch"])
        self.best = state.get("best")

    def fit(self, keep: Callable[[dict], None], folder: Path) -> Evaluation | None:
        """Train the remaining epochs; after each complete one, ``keep(self.checkpoint())`` (the
        dict holds the live tensors: write it, or copy it, before returning).
        Returns the last epoch's validation (None when no epoch was left to train). ``folder``
        names the run in messages and hook rows only."""
        cfg, val = self.cfg, None
        threads = torch.get_num_threads()
        with stop_on_signals() as flag:
            for epoch in range(self.epochs_done, cfg.epochs):
                t0 = time.perf_counter()
                torch.set_num_threads(self.step.threads)  # evaluation uses every thread again
                try:
                    loss, acc, complete = self._epoch(epoch, flag)
                finally:
                    torch.set_num_threads(threads)
                if not complete:  # stopped between batches: this epoch is not kept
                    raise TrainingInterrupted(flag["signum"], folder, epoch)
                if not math.isfinite(loss):
                    raise SeqmnistError(
                        f"training diverged: the loss became {loss} in epoch {epoch + 1}; the run "
                        f"keeps its last good checkpoint (epoch {epoch}) in {folder}. Try a lower "
                        "--lr or another --seed")
                seconds = time.perf_counter() - t0
                last = cfg.protocol == "tutorial" and epoch + 1 == cfg.epochs  # on the test set
                val = evaluate_tensors(self.model, self.x_val, self.y_val, cfg.eval_batch_size,
                                       cfg.precision, anytime=last)
                row = dict(epoch=epoch + 1, loss=loss, accuracy=acc, val_loss=val.loss,
                           val_accuracy=val.accuracy, seconds=round(seconds, 3), lr=self.step.lr)
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
                self.log(f"Epoch {epoch + 1}/{cfg.epochs} - {seconds:.1f}s - loss: {loss:.4f} - "
                         f"accuracy: {acc:.4f} - val_loss: {val.loss:.4f} - "
                         f"val_accuracy: {val.accuracy:.4f}")
                for hook in list(EPOCH_HOOKS):
                    _ask_to_stop(flag, hook(dict(row, folder=folder, model=cfg.model,
                                                 seed=cfg.seed)))
                if _stop_asked(flag):
                    raise TrainingInterrupted(flag["signum"], folder, epoch + 1)
                if self.best is not None and epoch + 1 - self.best["epoch"] >= cfg.patience:
                    self.log(f"Early stop: no better validation accuracy than epoch "
                             f"{self.best['epoch']}'s {self.best['val_accuracy']:.4f} for "
                             f"{cfg.patience} epochs")
                    break
        return val

    def _epoch(self, epoch: int, flag: dict) -> tuple[float, float, bool]:
        """One pass over the training set: (mean loss, accuracy, whether every batch ran)."""
        from tqdm.auto import tqdm

        x, y, cfg, steps = self.x, self.y, self.cfg, self.steps_per_epoch
        self.step.train()
        perm = torch.randperm(len(x), generator=self.shuffle).to(x.device)
        total_loss = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device, dtype=torch.long)
        seen = done = 0
        watched = bool(BATCH_HOOKS or self.watchers)
        bar = tqdm(total=steps, desc=f"Epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                   disable=None if self.progress else True, leave=False)
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
        return total_loss.item() / max(seen, 1), correct.item() / max(seen, 1), done == steps

    def _batch_event(self, row: dict, flag: dict) -> None:
        for w in self.watchers:
            w.batch(row)
        for hook in list(BATCH_HOOKS):
            _ask_to_stop(flag, hook(dict(row, model=self.model, seed=self.cfg.seed)))


def train(config: TrainConfig | None = None, *, out: str | Path = "runs",
          data_dir: str | Path | None = None, resume: str | Path | None = None,
          dataset: Dataset | None = None, progress: bool = True,
          log: Callable[[str], None] = print, tensorboard: bool = False,
          facts: dict | None = None) -> TrainResult:
    """Train a model and write its run folder; ``resume`` continues a run from its checkpoint.
    ``tensorboard``: also write TensorBoard events into RUN/tensorboard (extra
    ``seqmnist[tensorboard]``). ``facts``: more provenance about where the run is made (a sweep
    on Ray gives ``ray_node_id``), kept for a new run and for each resume."""
    if resume is None:
        recorder, state = None, None
        cfg = (config or TrainConfig()).resolved()
        writable_folder(out)  # before any work: a bad --out is found at once
    else:
        recorder, cfg, state = Recorder.reopen(resume, log)
    with torch_settings(cfg):
        return _train(cfg, recorder, state, out, data_dir, dataset, progress, log, tensorboard,
                      facts)


@contextmanager
def torch_settings(cfg: TrainConfig):
    """PyTorch's thread count and deterministic-algorithms flag as ``cfg`` asks, for the block
    only: a caller's own PyTorch code after ``train()`` runs with its own settings again.
    (Process-wide settings that cannot be undone, such as the allocator's, belong to the
    command line: ``cli.main``.)"""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _train(cfg: TrainConfig, recorder: Recorder | None, state: dict | None, out, data_dir,
           dataset: Dataset | None, progress: bool, log, tensorboard: bool,
           facts: dict | None) -> TrainResult:
    device = resolve_device(cfg.device)
    cfg = replace(cfg, precision=resolve_precision(cfg, device))

    if data_dir is not None:  # stored absolute: a resume from another folder finds the same files
        cfg = replace(cfg, data_dir=str(Path(data_dir).resolve()))
    ds = dataset.limit(cfg.limit) if dataset is not None else \
        load_dataset(cfg.dataset, cfg.data_dir, cfg.limit)
    for split in ("train", "test"):  # also a Dataset built by hand: refuse what cannot train
        check_split(ds.name, split, getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}"),
                    ds.num_classes)
    input_shape = VIEWS[cfg.view].shape(*ds.image_shape)
    # built only once it is known to fit in memory and to read this input: no folder before that
    with BUILDING:
        torch.manual_seed(cfg.seed)
        # a batch holds at most every training image: 10,000,000 asked of 300 images is 300
        check_model(cfg.model, input_shape, ds.num_classes, cfg.model_options,
                    min(cfg.batch_size, len(ds.x_train)))
        model = create_model(cfg.model, input_shape, ds.num_classes,
                             **cfg.model_options).to(device)
    x_train = to_input(ds.x_train, cfg.view, cfg.seed, device)
    if x_train.dim() == 4:  # channels_last: oneDNN's preferred layout, 1.3x faster measured
        model = model.to(memory_format=torch.channels_last)
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    y_train = torch.as_tensor(ds.y_train, device=device)
    x_test = to_input(ds.x_test, cfg.view, cfg.seed, device)
    y_test = torch.as_tensor(ds.y_test, device=device)
    if cfg.protocol == "research":  # validate on held-out training images, never on the test set
        held = validation_size(len(x_train))
        if held >= len(x_train):
            raise UsageError(f"the research protocol needs more than {len(x_train)} training "
                             "images (it holds some out for validation)")
        x_val, y_val = x_train[-held:], y_train[-held:]
        x_train, y_train = x_train[:-held], y_train[:-held]
    else:  # the tutorial's protocol: validation_data=(x_test, y_test)
        x_val, y_val = x_test, y_test

    threads = torch.get_num_threads()
    # The backend is decided here, once, and stored; a resume must run the same one.
    cfg = replace(cfg, replicas=count_replicas(cfg, device, threads),  # stored: resume matches
                  backend=resolve_backend(cfg.backend, model, device, cfg.precision))
    install_backend(model, cfg.backend)
    step = Step(model, cfg, -(-len(x_train) // cfg.batch_size), threads)
    trainer = Trainer(model, step, cfg, (x_train, y_train), (x_val, y_val), progress, log)

    if state is None:
        recorder = Recorder.create(
            out, cfg, provenance(cfg, ds, device=str(device), threads=threads,
                                 train_images=len(x_train), recipe=asdict(cfg), facts=facts),
            summary_text(model, input_shape, cfg.model))
        _announce(cfg, len(x_train), len(x_test), len(x_val), device, len(step.replicas), log)
        log(f"Run folder: {recorder.folder}")
    else:
        trainer.restore(state)
        recorder.resumed(trainer.history, trainer.epochs_done, threads, facts)
        log(f"Resuming {recorder.folder} after epoch {trainer.epochs_done}/{cfg.epochs}")
    folder = recorder.folder
    board = TensorBoard(folder, trainer.steps_per_epoch) if tensorboard else None
    if board is not None:
        trainer.watchers.append(board)
    try:
        val = trainer.fit(recorder.epoch, folder)
    finally:
        step.close()
    if cfg.protocol == "research":  # the best validation epoch's weights, then the test set once
        if trainer.best is not None:
            model.load_state_dict(trainer.best["state"])
        val = evaluate_tensors(model, x_test, y_test, cfg.eval_batch_size, cfg.precision,
                               anytime=True)
    elif val is None:  # resumed a run whose last epoch was done but whose outputs were not written
        val = evaluate_tensors(model, x_test, y_test, cfg.eval_batch_size, cfg.precision,
                               anytime=True)
    history = trainer.history
    metrics = recorder.finish(model, cfg, ds, input_shape, history, val, x_test, y_test)
    if board is not None:
        board.finish(np.array(metrics["confusion"]), ds.classes, len(history))
    log(f"Test accuracy {metrics['test_accuracy']:.4f}, test loss {metrics['test_loss']:.4f}, "
        f"{metrics['train_seconds']:.1f}s training. Results in {folder}")
    return TrainResult(folder, cfg, metrics, history, model)


def _announce(cfg: TrainConfig, train_images: int, test_images: int, val_images: int,
              device: torch.device, replicas: int, log) -> None:
    lr = f"peak lr {cfg.lr:g} (one-cycle)" if cfg.schedule == "onecycle" else f"lr {cfg.lr:g}"
    validation = (f"validating on the {test_images:,} test images after each epoch, as the "
                  "tutorial does" if cfg.protocol == "tutorial" else
                  f"research protocol: validating on the last {val_images:,} training images "
                  f"held out, stopping after {cfg.patience} epochs without improvement, the "
                  "test set evaluated once at the end")
    log(f"Training {cfg.model} on {cfg.dataset} ({train_images:,} images, view {cfg.view}, "
        f"batch {cfg.batch_size}, {lr}, {plural(cfg.epochs, 'epoch')}, {device}, "
        f"{cfg.precision}, backend {cfg.backend}"
        f"{f', batch split over {replicas} cores' if replicas > 1 else ''}); {validation}.")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def count_replicas(cfg: TrainConfig, device: torch.device, threads: int) -> int:
    """Data-parallel replicas: as asked, else one per thread for recurrent models on CPU (their
    small matrix products use one core well, two poorly), else one."""
    if cfg.replicas is not None:
        return cfg.replicas
    recurrent = VIEWS[cfg.view].kind == "sequence"
    return max(1, min(threads, cfg.batch_size)) if device.type == "cpu" and recurrent else 1


def config_from_args(model: str, **kwargs) -> TrainConfig:
    """A TrainConfig from keyword arguments, ignoring ``None`` (the CLI's unset options)."""
    return replace(TrainConfig(model=model), **{k: v for k, v in kwargs.items() if v is not None})
