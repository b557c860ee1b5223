"""Run folders on disk: checkpoints, weights, predictions, and reloading a finished run (the
recorder, recorder.py, decides what is written when; this module knows the formats).

Every file goes through ``fileio.atomic_write`` (a kill leaves the old file or the new one, never
half of one). Weights are safetensors; checkpoints are loaded with ``torch.load(weights_only=True)``
only; everything read back is checked before it is used.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import CheckpointError, SeqmnistError
from ..core.fileio import atomic_write, claim_new_folder, read_json, stamp, write_json
from ..data.datasets import get_spec
from ..data.views import get_view
from ..kernels.backends import inference_backend, install_backend
from ..models.plugins import changed_since, missing_plugin_hint
from ..models.registry import create_model, list_models
from ..training.config import TrainConfig
from . import pretrained
from .schema import MAX_SIDE, RunMetrics

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
WEIGHTS = "model.safetensors"
# a row per epoch (a budget run: per tenth of its budget); elapsed: training seconds so far,
# images: training images seen so far (runs made before they were recorded lack both)
HISTORY_KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "lr",
                "elapsed", "images")


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a run (finished, interrupted, or its card), whose own files no
    command other than training may replace."""
    folder = Path(folder)
    return any((folder / name).exists() for name in (WEIGHTS, CHECKPOINT)) or \
        ((folder / "config.json").exists() and (folder / "provenance.json").exists())


def inside_a_run(path: Path) -> Path | None:
    """The run folder ``path`` is (or lies inside), or None."""
    path = Path(path).resolve()
    return next((f for f in (path, *path.parents) if is_run_folder(f)), None)


def write_history(folder: Path, history: list[dict]) -> None:
    write_json(folder / "history.json", history)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_KEYS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k) for k in HISTORY_KEYS})
    atomic_write(folder / "history.csv", buf.getvalue())


def new_run_dir(out: str | Path, cfg: TrainConfig) -> Path:
    """Create a fresh, uniquely named run folder under ``out``, checking that it is writable."""
    out = Path(out)
    try:
        folder = claim_new_folder(out, f"{stamp()}-{cfg.model}-{cfg.dataset}-{cfg.view}")
        probe = folder / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise SeqmnistError(f"cannot write run folder under {out}: {exc.strerror or exc}") from None
    return folder


def save_checkpoint(folder: Path, state: dict) -> None:
    """Write checkpoint.pt atomically, keeping the previous one as checkpoint.prev.pt."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(folder / CHECKPOINT, buf.getvalue(), backup=folder / PREVIOUS_CHECKPOINT)


def safe_torch_load(path: Path) -> dict:
    """``torch.load`` with ``weights_only=True``; every failure becomes a CheckpointError."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # only the object PyTorch names: never its advice to load the file unsafely
        found = re.search(r"((Unsupported|unsupported) [^\n]*?)\.?(\n|$)", str(exc))
        raise CheckpointError(f"{path}: refused to load: the file holds Python objects other than "
                              "tensors and plain data, which could run code"
                              f"{' (' + found[1].strip() + ')' if found else ''}; a checkpoint "
                              "from a stranger is never loaded in full") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({str(exc)[:200]})") from None


def load_checkpoint(folder: Path) -> tuple[dict, list[str]]:
    """The newest readable checkpoint in ``folder``, plus warnings about ones that were not."""
    warnings: list[str] = []
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = folder / name
        if not path.exists():
            continue
        try:
            state = safe_torch_load(path)
            if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
                raise CheckpointError(f"{path}: not a seqmnist checkpoint")
            return state, warnings
        except CheckpointError as exc:
            warnings.append(str(exc))
    raise CheckpointError("\n".join(warnings) or f"{folder}: no checkpoint to resume from")


def save_weights(folder: Path, model, cfg: TrainConfig, input_shape, num_classes: int) -> None:
    from safetensors.torch import save

    meta = {"config": cfg.to_json(), "input_shape": json.dumps(list(input_shape)),
            "num_classes": str(num_classes), "format": "seqmnist-1"}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS, save(tensors, metadata=meta))


PREDICTIONS = "predictions.npz"


def save_predictions(folder: Path, predictions, probabilities, labels) -> None:
    """Per-image test predictions: predicted class, class probabilities and the true label of
    every test image, so finished runs can be compared pairwise without retraining."""
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, predictions=np.asarray(predictions, dtype=np.int16),
                        probabilities=np.asarray(probabilities, dtype=np.float32),
                        labels=np.asarray(labels, dtype=np.int16))
    atomic_write(folder / PREDICTIONS, buf.getvalue())


MAX_TEST_IMAGES = 1_000_000
PREDICTION_KINDS = {"predictions": "iu", "probabilities": "f", "labels": "iu"}


def _npy_header(z: zipfile.ZipFile, key: str, path: Path) -> tuple[tuple[int, ...], object]:
    """Shape and dtype of one array of an .npz, read from its header alone (nothing allocated)."""
    import numpy as np

    try:
        with z.open(f"{key}.npy") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read(fh)
    except KeyError:
        raise CheckpointError(f"{path}: no {key} array") from None
    if dtype.kind not in PREDICTION_KINDS[key] or dtype.fields or dtype.itemsize > 8:
        raise CheckpointError(f"{path}: {key} are {dtype}, not "
                              f"{'numbers' if key == 'probabilities' else 'class indices'}")
    return tuple(shape), dtype


def load_predictions(folder: Path, num_classes: int | None = None,
                     images: int | None = None) -> dict:
    """{"predictions", "probabilities", "labels"} arrays of a finished run (no pickles), each
    checked before it is used: shapes and types from the headers first (an array claiming 5e10
    entries is refused before any allocation), then every class in 0..num_classes-1 and every
    probability a finite number in [0, 1]. ``images``: the test set's size, if known."""
    import numpy as np

    path = Path(folder) / PREDICTIONS
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {PREDICTIONS} (a run from an older seqmnist?); "
                              f"`seqmnist compare --runs {folder}` computes it from the weights "
                              "and saves it beside them")
    try:
        with zipfile.ZipFile(path) as z:
            shapes = {k: _npy_header(z, k, path)[0] for k in PREDICTION_KINDS}
        n = shapes["labels"][0] if len(shapes["labels"]) == 1 else -1
        classes = shapes["probabilities"][1] if len(shapes["probabilities"]) == 2 else -1
        if not (0 < n <= MAX_TEST_IMAGES and shapes["predictions"] == (n,)
                and 1 <= classes <= MAX_CLASSES and shapes["probabilities"] == (n, classes)):
            raise CheckpointError(f"{path}: arrays of inconsistent shapes {shapes}")
        if images is not None and n != images:
            raise CheckpointError(f"{path}: holds {n:,} test predictions, the test set has "
                                  f"{images:,} images")
        if num_classes is not None and classes != num_classes:
            raise CheckpointError(f"{path}: probabilities for {classes} classes, the model has "
                                  f"{num_classes}")
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in PREDICTION_KINDS}
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, SyntaxError,
            MemoryError) as exc:
        raise CheckpointError(f"{path}: unreadable ({str(exc)[:200]})") from None
    for key in ("predictions", "labels"):
        if out[key].min() < 0 or out[key].max() >= classes:
            raise CheckpointError(f"{path}: {key} outside the classes 0..{classes - 1}")
    p = out["probabilities"]
    if not (np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1):
        raise CheckpointError(f"{path}: probabilities must be finite numbers in [0, 1]")
    return out


@dataclass
class Run:
    """A finished (or resumable) run folder, reloaded."""

    path: Path
    config: TrainConfig
    model: object  # torch.nn.Module, in eval mode, on CPU
    input_shape: tuple[int, ...]
    num_classes: int
    metrics: RunMetrics  # metrics.json, typed (fields None where an older run lacks them)
    history: list[dict]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def image_shape(self) -> tuple[int, int]:
        """The images it reads, (height, width): as metrics.json records them, else (a run
        without metrics) its dataset's."""
        shape = self.metrics.image_shape
        return tuple(shape) if shape else tuple(get_spec(self.config.dataset).image_shape)

    @property
    def classes(self) -> list[str]:
        """Its classes' names: as metrics.json records them, else numbers."""
        found = self.metrics.classes
        return list(found) if found else [str(i) for i in range(self.num_classes)]


MAX_CLASSES = 10_000


def _shapes_and_meta(weights: Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """The weights file's metadata and tensor shapes, read from its header only."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(weights, framework="pt") as fh:
            meta = fh.metadata() or {}
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: corrupt or not a seqmnist weights file ({exc})") from None
    return meta, shapes


def _check_meta(weights: Path, meta: dict) -> tuple[TrainConfig, tuple[int, ...], int]:
    try:
        cfg = TrainConfig.from_dict(json.loads(meta["config"]))
        input_shape = json.loads(meta["input_shape"])
        num_classes = json.loads(meta["num_classes"])
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"{weights}: corrupt or not a seqmnist weights file ({exc})") from None
    if not (isinstance(input_shape, list) and 1 <= len(input_shape) <= 3
            and all(type(d) is int and 1 <= d <= MAX_SIDE * MAX_SIDE for d in input_shape)):
        raise CheckpointError(f"{weights}: input shape {input_shape!r} is not a shape seqmnist makes")
    if type(num_classes) is not int or not 1 <= num_classes <= MAX_CLASSES:
        raise CheckpointError(f"{weights}: {num_classes!r} classes is not a class count")
    return cfg, tuple(input_shape), num_classes


def check_metrics(folder: Path, metrics, num_classes: int) -> RunMetrics:
    """metrics.json as the commands read it (``record.RunMetrics``), or a CheckpointError naming
    the bad field."""
    return RunMetrics.from_dict(metrics, num_classes, f"{folder}/metrics.json")


def check_config_agrees(folder: Path, cfg: TrainConfig) -> None:
    """The configuration inside the weights (the one they were trained with) and config.json
    beside them must agree: a run whose files disagree (a view changed in one of them) would
    be read one way and evaluated another, so it is refused naming both and what differs."""
    stored = read_json(folder / "config.json")
    if stored is None:  # an older or exported folder without it: the weights' own is used
        return
    try:
        beside = TrainConfig.from_dict(stored)
    except SeqmnistError as exc:
        raise CheckpointError(f"{folder}/config.json: {exc}") from None
    differ = [f"{k}: {v!r} in {WEIGHTS}, {getattr(beside, k)!r} in config.json"
              for k, v in vars(cfg).items() if getattr(beside, k) != v]
    if differ:
        raise CheckpointError(f"{folder}: config.json disagrees with the configuration stored in "
                              f"{WEIGHTS} ({'; '.join(differ[:3])}); the weights' own is what "
                              "they were trained with: restore config.json, or retrain")


def check_finite(weights: Path, tensors: dict) -> None:
    """A run whose weights hold NaN or infinity answers nothing meaningful (every probability
    NaN): refused when loaded, naming the tensors, instead of printing "nan%" answers."""
    import torch

    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in tensors.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())}
    if bad:
        where = ", ".join(f"{k} ({n:,})" for k, n in list(bad.items())[:3])
        raise CheckpointError(f"{weights}: {sum(bad.values()):,} weights are not numbers (NaN or "
                              f"infinite) in {where}{' and more' if len(bad) > 3 else ''}: the "
                              "run is broken (its training diverged, or the file was changed); "
                              "retrain it")


def find_run(path: str | Path) -> Path:
    """The run folder ``path`` names: itself, or, for a folder holding exactly one finished run
    one level down (a comparison's or a sweep's slot, ``OUT/runs/lstm-mnist-rows-seed0``),
    that run; ``pretrained:NAME``, the shipped pretrained run of that name."""
    path = pretrained.resolve(path)
    if (path / WEIGHTS).exists() or not path.is_dir() or path.is_symlink():
        return path
    inside = [p for p in sorted(path.iterdir())
              if p.is_dir() and not p.is_symlink() and (p / WEIGHTS).is_file()]
    return inside[0] if len(inside) == 1 else path


def load_run(path: str | Path) -> Run:
    """Rebuild a run's model from ``model.safetensors`` (its configuration travels inside);
    ``path`` is a run folder, or a slot holding one (``find_run``).

    Nothing is built from a file's word alone: the stored configuration and shapes are checked,
    the model is first laid out on PyTorch's meta device (no memory) and its tensor shapes
    compared with the file's, and only then built and filled."""
    import torch
    from safetensors.torch import load_file

    folder = find_run(path)
    weights = folder / WEIGHTS
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; give a run folder made by `seqmnist train`")
    if not weights.is_file():
        hint = " (training did not finish; resume it with `seqmnist train --resume`)" \
            if (folder / CHECKPOINT).exists() else ""
        raise CheckpointError(f"{folder}: not a finished run: no {WEIGHTS}{hint}")
    meta, shapes = _shapes_and_meta(weights)
    facts = read_json(folder / "provenance.json", {})  # a plug-in's model: which plug-in
    try:
        cfg, input_shape, num_classes = _check_meta(weights, meta)
        cfg.resolved()
        check_config_agrees(folder, cfg)
        metrics = check_metrics(folder, read_json(folder / "metrics.json", {}), num_classes)
        image = metrics.image_shape
        if image is not None and get_view(cfg.view).shape(*image) != input_shape:
            raise CheckpointError(f"{weights}: input shape {list(input_shape)} does not match "
                                  f"{cfg.view} view of {image[0]}x{image[1]} images")
        with torch.device("meta"):
            layout = create_model(cfg.model, input_shape, num_classes, **cfg.model_options)
    except (SeqmnistError, TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        hint = missing_plugin_hint(facts) if cfg.model not in list_models() else ""
        raise CheckpointError(f"{weights}: the stored configuration does not describe a model "
                              f"({str(exc)[:200]}){hint}") from None
    changed = changed_since(facts)
    expected = {k: tuple(v.shape) for k, v in layout.state_dict().items()}
    if expected != shapes:
        diff = sorted(k for k in expected.keys() | shapes.keys()
                      if expected.get(k) != shapes.get(k))
        first = diff[0]
        raise CheckpointError(f"{weights}: weights do not fit the stored configuration "
                              f"({first}: file {shapes.get(first)}, model {expected.get(first)})"
                              f"{'; ' + changed if changed else ''}")
    if changed:  # the weights still fit: say so, and go on
        logging.getLogger("seqmnist").warning("warning: %s: %s", folder, changed)
    try:
        tensors = load_file(weights)
        model = create_model(cfg.model, input_shape, num_classes, **cfg.model_options)
        model.load_state_dict(tensors)
    except (RuntimeError, SeqmnistError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{weights}: weights do not fit the model ({str(exc)[:200]})") from None
    check_finite(weights, tensors)
    install_backend(model, inference_backend(cfg.backend, model))
    model.eval()
    history = read_json(folder / "history.json", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise CheckpointError(f"{folder}/history.json: not a list of epochs")
    return Run(folder, cfg, model, input_shape, num_classes, metrics, history)


def latest_runs(out: str | Path = "runs") -> dict[str, Path]:
    """The most recent finished run of each model under ``out`` (folder names sort by time),
    also one level down (a sweep's or comparison's slots: ``runs/<slot>/<run>``)."""
    found: dict[str, Path] = {}
    weights_files = [*Path(out).glob(f"*/{WEIGHTS}"), *Path(out).glob(f"*/*/{WEIGHTS}")]
    for weights in sorted(weights_files, key=lambda w: w.parent.name):
        cfg = read_json(weights.parent / "config.json", {}) or {}
        if "model" in cfg:
            found[cfg["model"]] = weights.parent
    return found
