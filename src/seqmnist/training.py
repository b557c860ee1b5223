"""The training loop. ``train(TrainConfig(model="lstm"))`` is the tutorial's recipe.

The training set lives as one tensor on the device in the view's layout; each batch is an index
slice of a shuffled permutation (no DataLoader, no worker processes). Recurrent models on CPU split
each batch across one replica per core (see parallel.py).
After every epoch the test set is evaluated (the tutorial's ``validation_data``), and a checkpoint,
the history files and nothing else are written atomically, so a kill never costs more than an epoch.
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

from . import system
from .backends import install_backend, resolve_backend
from .config import TrainConfig, validation_size
from .data import Dataset, check_split, load_dataset
from .errors import CheckpointError, SeqmnistError, UsageError
from .evaluation import Evaluation, anytime_accuracy, evaluate_tensors
from .fileio import atomic_write, read_json, write_json
from .models import check_model, create_model, summary_text, trainable_parameters
from .parallel import Replicas
from .plots import plot_confusion, plot_history
from .storage import (
    PREVIOUS_CHECKPOINT,
    load_checkpoint,
    new_run_dir,
    save_checkpoint,
    save_predictions,
    save_weights,
    write_history,
)
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


@contextmanager
def stop_on_signals():
    """Turn SIGINT/SIGTERM into a flag checked between batches (main thread only)."""
    flag: dict[str, int | None] = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, _frame):
        flag["signum"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
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


@contextmanager
def writing_to(folder: Path):
    """Report a failed write (full disk, quota, permissions) as one clear error."""
    try:
        yield
    except OSError as exc:
        raise SeqmnistError(f"cannot write to {folder}: {exc.strerror or exc}") from None


def make_adam(params, lr: float, eps: float) -> torch.optim.Adam:
    """Adam with the fused kernel where this PyTorch has one (one pass over the weights instead
    of ~10: a third of the CNN's step time on CPU), else the default implementation."""
    try:
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, eps=eps)


def _start_or_resume(cfg: TrainConfig | None, resume: str | Path | None):
    """The config, the run folder and the checkpoint state (None for a new run)."""
    if resume is None:
        cfg = (cfg or TrainConfig()).resolved()
        return cfg, None, None
    folder = Path(resume)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: not a run folder (no config.json)")
    state, warnings = load_checkpoint(folder)
    for w in warnings:
        print(f"warning: {w}; using {PREVIOUS_CHECKPOINT}")
    try:
        trained = TrainConfig.from_dict(state.get("config"))
        saved = TrainConfig.from_dict(read_json(folder / "config.json"))
    except UsageError as exc:
        raise CheckpointError(f"{folder}: {exc}") from None
    if saved != trained:
        changed = [k for k, v in asdict(trained).items() if asdict(saved).get(k) != v]
        raise CheckpointError(f"{folder}: config.json disagrees with the checkpoint it was trained "
                              f"with ({', '.join(changed)}); the checkpoint's settings are the "
                              "run's: restore config.json or start a new run")
    return trained.resolved(), folder, state


def train(config: TrainConfig | None = None, *, out: str | Path = "runs",
          data_dir: str | Path | None = None, resume: str | Path | None = None,
          dataset: Dataset | None = None, progress: bool = True,
          log: Callable[[str], None] = print, tensorboard: bool = False,
          facts: dict | None = None) -> TrainResult:
    """Train a model and write its run folder; ``resume`` continues a run from its checkpoint.
    ``tensorboard``: also write TensorBoard events into RUN/tensorboard (extra
    ``seqmnist[tensorboard]``). ``facts``: more provenance about where the run is made (a sweep
    on Ray gives ``ray_node_id``), kept for a new run and for each resume."""
    cfg, folder, state = _start_or_resume(config, resume)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(cfg.device)
    cfg = replace(cfg, precision=resolve_precision(cfg, device))
    torch.manual_seed(cfg.seed)

    if data_dir is not None:  # stored absolute: a resume from another folder finds the same files
        cfg = replace(cfg, data_dir=str(Path(data_dir).resolve()))
    ds = dataset.limit(cfg.limit) if dataset is not None else \
        load_dataset(cfg.dataset, cfg.data_dir, cfg.limit)
    for split in ("train", "test"):  # also a Dataset built by hand: refuse what cannot train
        check_split(ds.name, split, getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}"),
                    ds.num_classes)
    input_shape = VIEWS[cfg.view].shape(*ds.image_shape)
    # built only once it is known to fit in memory and to read this input: no folder before that
    check_model(cfg.model, input_shape, ds.num_classes, cfg.model_options, cfg.batch_size)
    model = create_model(cfg.model, input_shape, ds.num_classes, **cfg.model_options).to(device)
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
    replicas = Replicas(model, cfg.replicas, cfg.seed, cfg.backend, cfg.precision)
    opt = make_adam(replicas.params[0], cfg.lr, cfg.adam_eps)
    steps = -(-len(x_train) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps) \
        if cfg.schedule == "onecycle" else None
    gen = torch.Generator().manual_seed(cfg.seed)
    history: list[dict] = []
    best: dict | None = None  # research protocol: the best validation epoch's weights

    if state is None:
        folder = new_run_dir(out, cfg)
        provenance = dict(started=_now(), **system.environment(), device=str(device),
                          backend=cfg.backend, precision=cfg.precision, threads=threads,
                          replicas=cfg.replicas, train_images=len(x_train),
                          train_images_total=ds.train_total, test_images=len(x_test),
                          data_source=ds.source, recipe=asdict(cfg), resumed=[], **(facts or {}))
        with writing_to(folder):
            write_json(folder / "config.json", asdict(cfg))
            write_json(folder / "provenance.json", provenance)
            atomic_write(folder / "summary.txt", summary_text(model, input_shape, cfg.model) + "\n")
        start = 0
    else:
        model.load_state_dict(state["model"])
        replicas.sync()
        replicas.set_rng_states(state["rng_dropout"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        gen.set_state(state["rng_shuffle"])
        history, start = list(state["history"]), int(state["epoch"])
        best = state.get("best")
        for stale in folder.glob(".*.tmp"):  # temporary files of a process killed mid-write
            stale.unlink()
        provenance = read_json(folder / "provenance.json", {}) or {}
        provenance.setdefault("resumed", []).append(
            dict(at=_now(), after_epoch=start, **system.environment(), threads=threads,
                 **(facts or {})))
        with writing_to(folder):  # the checkpoint is the truth: its history replaces the files'
            write_history(folder, history)
            write_json(folder / "provenance.json", provenance)
        log(f"Resuming {folder} after epoch {start}/{cfg.epochs}")
    if start == 0:
        lr = f"peak lr {cfg.lr:g} (one-cycle)" if cfg.schedule == "onecycle" else f"lr {cfg.lr:g}"
        validation = (f"validating on the {len(x_test):,} test images after each epoch, as the "
                      "tutorial does" if cfg.protocol == "tutorial" else
                      f"research protocol: validating on the last {len(x_val):,} training images "
                      f"held out, stopping after {cfg.patience} epochs without improvement, the "
                      "test set evaluated once at the end")
        log(f"Training {cfg.model} on {cfg.dataset} ({len(x_train):,} images, view {cfg.view}, "
            f"batch {cfg.batch_size}, {lr}, {plural(cfg.epochs, 'epoch')}, {device}, "
            f"{cfg.precision}, backend {cfg.backend}"
            f"{f', batch split over {len(replicas)} cores' if len(replicas) > 1 else ''}); "
            f"{validation}.")
        log(f"Run folder: {folder}")

    board = TensorBoard(folder, steps) if tensorboard else None
    val: Evaluation | None = None
    with stop_on_signals() as flag:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            # Replicas run one core each; evaluation below uses all the threads again.
            torch.set_num_threads(1 if len(replicas) > 1 else threads)
            loss, acc, complete = _train_epoch(replicas, opt, sched, x_train, y_train, gen, cfg,
                                               epoch, flag, progress, board)
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
            val = evaluate_tensors(model, x_val, y_val, cfg.eval_batch_size, cfg.precision,
                                   anytime=last)
            history.append(dict(epoch=epoch + 1, loss=loss, accuracy=acc, val_loss=val.loss,
                                val_accuracy=val.accuracy, seconds=round(seconds, 3),
                                lr=opt.param_groups[0]["lr"]))
            if cfg.protocol == "research" and (best is None
                                               or val.accuracy > best["val_accuracy"]):
                best = dict(epoch=epoch + 1, val_accuracy=val.accuracy,
                            state={k: v.detach().clone() for k, v in model.state_dict().items()})
            with writing_to(folder):
                save_checkpoint(folder, dict(
                    model=model.state_dict(), optimizer=opt.state_dict(),
                    scheduler=sched.state_dict() if sched is not None else None,
                    rng_torch=torch.get_rng_state(), rng_shuffle=gen.get_state(),
                    rng_dropout=replicas.rng_states(),
                    epoch=epoch + 1, history=history, config=asdict(cfg), best=best))
                write_history(folder, history)
            if board is not None:
                board.epoch(history[-1])
            log(f"Epoch {epoch + 1}/{cfg.epochs} - {seconds:.1f}s - loss: {loss:.4f} - accuracy: "
                f"{acc:.4f} - val_loss: {val.loss:.4f} - val_accuracy: {val.accuracy:.4f}")
            for hook in list(EPOCH_HOOKS):
                stop = hook(dict(history[-1], folder=folder, model=cfg.model, seed=cfg.seed))
                if stop and flag["signum"] is None:
                    flag["signum"] = signal.SIGINT if stop is True else int(stop)
            if flag["signum"] is not None:
                raise TrainingInterrupted(flag["signum"], folder, epoch + 1)
            if best is not None and epoch + 1 - best["epoch"] >= cfg.patience:
                log(f"Early stop: no better validation accuracy than epoch {best['epoch']}'s "
                    f"{best['val_accuracy']:.4f} for {cfg.patience} epochs")
                break

    replicas.close()
    if cfg.protocol == "research":  # the best validation epoch's weights, then the test set once
        if best is not None:
            model.load_state_dict(best["state"])
        val = evaluate_tensors(model, x_test, y_test, cfg.eval_batch_size, cfg.precision,
                               anytime=True)
    elif val is None:  # resumed a run whose last epoch was done but whose outputs were not written
        val = evaluate_tensors(model, x_test, y_test, cfg.eval_batch_size, cfg.precision,
                               anytime=True)
    with writing_to(folder):
        metrics = finish_run(folder, model, cfg, ds, input_shape, history, val, x_test, y_test)
    if board is not None:
        board.finish(np.array(metrics["confusion"]), ds.classes, len(history))
    log(f"Test accuracy {metrics['test_accuracy']:.4f}, test loss {metrics['test_loss']:.4f}, "
        f"{metrics['train_seconds']:.1f}s training. Results in {folder}")
    return TrainResult(folder, cfg, metrics, history, model)


def _best_epoch(cfg: TrainConfig, history: list[dict]) -> int | None:
    """The epoch whose weights the run keeps under the research protocol (best validation)."""
    if cfg.protocol != "research" or not history:
        return None
    return max(history, key=lambda h: (h["val_accuracy"], -h["epoch"]))["epoch"]


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def count_replicas(cfg: TrainConfig, device: torch.device, threads: int) -> int:
    """Data-parallel replicas: as asked, else one per thread for recurrent models on CPU (their
    small matrix products use one core well, two poorly), else one."""
    if cfg.replicas is not None:
        return cfg.replicas
    recurrent = VIEWS[cfg.view].kind == "sequence"
    return max(1, min(threads, cfg.batch_size)) if device.type == "cpu" and recurrent else 1


class TensorBoard:
    """TensorBoard events in RUN/tensorboard with PyTorch's own writer: per epoch loss, accuracy,
    val_loss, val_accuracy and learning rate; the training loss every EVERY batches; the test
    confusion matrix as an image at the end. Open with ``tensorboard --logdir runs``."""

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

    def batch(self, epoch: int, step: int, loss: float) -> None:
        if step % self.EVERY == 0:
            self.writer.add_scalar("batch/loss", loss, epoch * self.steps + step)

    def epoch(self, row: dict) -> None:
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            self.writer.add_scalar(f"epoch/{key}", row[key], row["epoch"])
        self.writer.flush()

    def finish(self, confusion: np.ndarray, classes: list[str], epochs: int) -> None:
        from .plots import confusion_figure

        self.writer.add_figure("test/confusion", confusion_figure(confusion, classes, "test"),
                               epochs, close=False)
        self.writer.close()


def _train_epoch(replicas: Replicas, opt, sched, x, y, gen, cfg: TrainConfig, epoch: int,
                 flag: dict, progress: bool, board: TensorBoard | None = None
                 ) -> tuple[float, float, bool]:
    """One pass over the training set: (mean loss, accuracy, whether every batch ran)."""
    from tqdm.auto import tqdm

    replicas.train()
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    total_loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    seen = 0
    steps = -(-len(x) // cfg.batch_size)
    bar = tqdm(total=steps, desc=f"Epoch {epoch + 1}/{cfg.epochs}", unit="batch",
               disable=None if progress else True, leave=False)
    done = 0
    for step, i in enumerate(range(0, len(x), cfg.batch_size)):
        idx = perm[i:i + cfg.batch_size]
        loss_sum, hits = replicas.forward_backward(x.index_select(0, idx), y.index_select(0, idx))
        opt.step()
        replicas.sync()
        if sched is not None:
            sched.step()
        total_loss += loss_sum
        correct += hits
        seen += len(idx)
        if board is not None:
            board.batch(epoch, step, float(loss_sum) / len(idx))
        if step % 50 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{total_loss.item() / seen:.4f}",
                            acc=f"{correct.item() / seen:.4f}", refresh=False)
        bar.update()
        done = step + 1
        if flag["signum"] is not None:
            break
    bar.close()
    return total_loss.item() / max(seen, 1), correct.item() / max(seen, 1), done == steps


def finish_run(folder: Path, model, cfg: TrainConfig, ds: Dataset, input_shape, history: list,
               val: Evaluation, x_test: torch.Tensor, y_test: torch.Tensor) -> dict:
    """Write weights, per-image test predictions, metrics and plots of a finished run."""
    cm = val.confusion(ds.num_classes)
    anytime = val.anytime if val.anytime is not None else \
        anytime_accuracy(model, x_test, y_test, cfg.eval_batch_size)
    metrics = dict(
        model=cfg.model, dataset=cfg.dataset, view=cfg.view, test_accuracy=val.accuracy,
        test_loss=val.loss, params=trainable_parameters(model),
        train_seconds=round(sum(h["seconds"] for h in history), 3), epochs=len(history),
        seconds_per_epoch=round(sum(h["seconds"] for h in history) / max(len(history), 1), 3),
        inference_images_per_second=round(val.images_per_second, 1),
        per_class_accuracy=dict(zip(ds.classes, val.per_class_accuracy(ds.num_classes))),
        classes=ds.classes, image_shape=list(ds.image_shape), confusion=cm.tolist(),
        misclassified=val.misclassified(),
        train_images=len(ds.x_train), train_images_total=ds.train_total,
        test_images=len(ds.x_test), backend=cfg.backend, precision=cfg.precision,
        protocol=cfg.protocol, validation_images=validation_size(len(ds.x_train))
        if cfg.protocol == "research" else None, best_epoch=_best_epoch(cfg, history),
        anytime=anytime, provenance=read_json(folder / "provenance.json", {}))
    save_predictions(folder, val.predictions, val.probabilities, val.labels)
    save_weights(folder, model.to("cpu", memory_format=torch.contiguous_format), cfg,
                 input_shape, ds.num_classes)
    write_json(folder / "metrics.json", metrics)
    plot_history(history, folder, title=f"{cfg.model} on {cfg.dataset}, {cfg.view} view")
    plot_confusion(cm, ds.classes, folder / "confusion.png",
                   title=f"{cfg.model} on {cfg.dataset}: confusion matrix")
    (folder / PREVIOUS_CHECKPOINT).unlink(missing_ok=True)
    return metrics


def config_from_args(model: str, **kwargs) -> TrainConfig:
    """A TrainConfig from keyword arguments, ignoring ``None`` (the CLI's unset options)."""
    return replace(TrainConfig(model=model), **{k: v for k, v in kwargs.items() if v is not None})
