"""``train()``: a trainer (training/trainer.py) and a recorder (runs/recorder.py) make one run
folder; a resume continues one. The caller's PyTorch settings are left as they were."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UsageError
from ..core.fileio import writable_folder
from ..core.units import format_duration
from ..data.datasets import Dataset, check_split, load_dataset
from ..data.views import VIEWS, to_input
from ..kernels.backends import install_backend, resolve_backend
from ..models.checks import check_model
from ..models.plugins import plugin_record
from ..models.registry import create_model
from ..models.summary import summary_text
from ..training.config import TrainConfig, validation_size
from ..training.metrics import evaluate_tensors
from ..training.trainer import BUDGET_ROUNDS, BUILDING, Trainer, resolve_device, resolve_precision
from ..training.update import Update
from .recorder import Recorder, TensorBoard, provenance
from .schema import RunMetrics


@dataclass
class TrainResult:
    path: Path
    config: TrainConfig
    metrics: RunMetrics
    history: list[dict]
    model: torch.nn.Module


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
    x_train = to_input(ds.x_train, cfg.view, cfg.order_seed, device)
    if x_train.dim() == 4:  # channels_last: oneDNN's preferred layout, 1.3x faster measured
        model = model.to(memory_format=torch.channels_last)
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    y_train = torch.as_tensor(ds.y_train, device=device)
    x_test = to_input(ds.x_test, cfg.view, cfg.order_seed, device)
    y_test = torch.as_tensor(ds.y_test, device=device)
    if cfg.protocol == "research":  # validate on held-out training images, never on the test set
        held = validation_size(len(x_train), cfg.validation_images)
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
    step = Update(model, cfg, -(-len(x_train) // cfg.batch_size), threads)
    trainer = Trainer(model, step, cfg, (x_train, y_train), (x_val, y_val), progress, log)

    if state is None:
        plugin = plugin_record(cfg.model)  # a model from other people's code: which, exactly
        if plugin is not None:
            facts = {**(facts or {}), "plugin": plugin}
        recorder = Recorder.create(
            out, cfg, provenance(cfg, ds, device=str(device), threads=threads,
                                 train_images=len(x_train), recipe=asdict(cfg), facts=facts),
            summary_text(model, input_shape, cfg.model))
        _announce(cfg, len(x_train), len(x_test), len(x_val), device, len(step.replicas), log)
        log(f"Run folder: {recorder.folder}")
    else:
        trainer.restore(state)
        recorder.resumed(trainer.history, trainer.epochs_done, threads, facts)
        log(f"Resuming {recorder.folder} after " + (
            f"epoch {trainer.epochs_done}/{cfg.epochs}" if cfg.budget is None else
            f"round {trainer.epochs_done}/{BUDGET_ROUNDS} of its {format_duration(cfg.budget)} "
            f"budget ({trainer.history[-1]['elapsed'] if trainer.history else 0:.1f} s spent)"))
    folder = recorder.folder
    board = TensorBoard(folder, trainer.steps_per_epoch) if tensorboard else None
    if board is not None:
        trainer.watchers.append(board)
    try:
        val = trainer.fit(recorder.epoch, folder)
    finally:
        step.close()
    if cfg.protocol == "research" or val is None:
        log(f"Testing on the {len(x_test):,} test images, and how early it knows (anytime "
            "accuracy)...")
    if cfg.protocol == "research":  # the best validation epoch's weights, then the test set once
        if trainer.best is not None:
            model.load_state_dict(trainer.best["state"])
        val = evaluate_tensors(model, x_test, y_test, cfg.eval_batch_size, cfg.precision,
                               anytime=True)
    elif val is None:  # resumed a run whose last epoch was done but whose outputs were not written
        val = evaluate_tensors(model, x_test, y_test, cfg.eval_batch_size, cfg.precision,
                               anytime=True)
    history = trainer.history
    log("Writing its weights, test predictions, metrics and plots...")
    metrics = recorder.finish(model, cfg, ds, input_shape, history, val, x_test, y_test)
    if board is not None:
        board.finish(np.array(metrics.confusion), ds.classes, len(history))
    log(f"Test accuracy {metrics.test_accuracy:.4f}, test loss {metrics.test_loss:.4f}, "
        f"{metrics.train_seconds:.1f}s training. Results in {folder}")
    return TrainResult(folder, cfg, metrics, history, model)


def _announce(cfg: TrainConfig, train_images: int, test_images: int, val_images: int,
              device: torch.device, replicas: int, log) -> None:
    lr = f"peak lr {cfg.lr:g} (one-cycle)" if cfg.schedule == "onecycle" else f"lr {cfg.lr:g}"
    if cfg.budget is not None:
        lr += " over the budget" if cfg.schedule == "onecycle" else \
            ", decaying linearly to a thousandth of it over the budget"
    validation = (f"validating on the {test_images:,} test images after each "
                  f"{'epoch' if cfg.budget is None else 'round'}, as the "
                  "tutorial does" if cfg.protocol == "tutorial" else
                  f"research protocol: validating on the last {val_images:,} training images "
                  f"held out, " + (f"stopping after {cfg.patience} epochs without improvement"
                                   if cfg.budget is None else "keeping the best round's weights")
                  + ", the test set evaluated once at the end")
    length = plural(cfg.epochs, "epoch") if cfg.budget is None else \
        (f"a budget of {format_duration(cfg.budget)} of training, validating after each "
         f"tenth")
    log(f"Training {cfg.model} on {cfg.dataset} ({train_images:,} images, view {cfg.view}, "
        f"batch {cfg.batch_size}, {lr}, {length}, {device}, "
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
