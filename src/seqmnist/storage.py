"""Run folders on disk: atomic writes, checkpoints, weights, and reloading a finished run.

Every file is written to a temporary name in the same folder, flushed, fsynced and renamed, so a
kill at any moment leaves either the old file or the new one under the final name, never half of one.
Weights are safetensors; checkpoints are loaded with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .backends import inference_backend, install_backend
from .config import TrainConfig
from .errors import CheckpointError, SeqmnistError
from .fileio import atomic_write, read_json, write_json
from .models import create_model

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
WEIGHTS = "model.safetensors"
HISTORY_KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds", "lr")


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
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{cfg.model}-{cfg.dataset}-{cfg.view}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        for i in range(1000):
            folder = out / (base if i == 0 else f"{base}-{i}")
            try:
                folder.mkdir()
                break
            except FileExistsError:
                continue
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
        raise CheckpointError(f"{path}: refused to load: the file holds Python objects other than "
                              f"tensors and plain data, which could run code ({str(exc)[:200]})"
                              ) from None
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


def load_predictions(folder: Path) -> dict:
    """{"predictions", "probabilities", "labels"} arrays of a finished run (no pickles)."""
    import numpy as np

    path = Path(folder) / PREDICTIONS
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {PREDICTIONS} (a run from an older seqmnist? "
                              "evaluate it again or retrain)")
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in ("predictions", "probabilities", "labels")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: unreadable ({str(exc)[:200]})") from None
    n = len(out["labels"])
    if out["predictions"].shape != (n,) or out["probabilities"].ndim != 2 \
            or len(out["probabilities"]) != n:
        raise CheckpointError(f"{path}: arrays of inconsistent shapes")
    return out


@dataclass
class Run:
    """A finished (or resumable) run folder, reloaded."""

    path: Path
    config: TrainConfig
    model: object  # torch.nn.Module, in eval mode, on CPU
    input_shape: tuple[int, ...]
    num_classes: int
    metrics: dict
    history: list[dict]

    @property
    def name(self) -> str:
        return self.path.name


def load_run(path: str | Path) -> Run:
    """Rebuild a run's model from ``model.safetensors`` (its configuration travels inside)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    folder = Path(path)
    weights = folder / WEIGHTS
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; give a run folder made by `seqmnist train`")
    if not weights.is_file():
        hint = " (training did not finish; resume it with `seqmnist train --resume`)" \
            if (folder / CHECKPOINT).exists() else ""
        raise CheckpointError(f"{folder}: not a finished run: no {WEIGHTS}{hint}")
    try:
        with safe_open(weights, framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(weights)
        cfg = TrainConfig.from_dict(json.loads(meta["config"]))
        input_shape = tuple(json.loads(meta["input_shape"]))
        num_classes = int(meta["num_classes"])
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"{weights}: corrupt or not a seqmnist weights file ({exc})") from None
    try:
        model = create_model(cfg.model, input_shape, num_classes, **cfg.model_options)
        model.load_state_dict(state)
    except (RuntimeError, SeqmnistError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{weights}: weights do not fit the model ({str(exc)[:200]})") from None
    install_backend(model, inference_backend(cfg.backend, model))
    model.eval()
    return Run(folder, cfg, model, input_shape, num_classes,
               read_json(folder / "metrics.json", {}), read_json(folder / "history.json", []))


def latest_runs(out: str | Path = "runs") -> dict[str, Path]:
    """The most recent finished run of each model under ``out`` (folder names sort by time)."""
    found: dict[str, Path] = {}
    for weights in sorted(Path(out).glob(f"*/{WEIGHTS}")):
        cfg = read_json(weights.parent / "config.json", {}) or {}
        if "model" in cfg:
            found[cfg["model"]] = weights.parent
    return found
