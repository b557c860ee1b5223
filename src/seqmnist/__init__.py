"""seqmnist: read an image as a sequence. Train LSTMs and CNNs on MNIST and compare them honestly.

    from seqmnist import load_dataset, create_model, train, evaluate, load_run, TrainConfig
    result = train(TrainConfig(model="lstm", epochs=1, limit=6000))
    print(result.metrics["test_accuracy"])

Attributes are imported lazily so that ``seqmnist --help`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib

from ._version import __version__  # noqa: F401 (the package version, re-exported)

_API = {
    "load_dataset": "data", "list_datasets": "data", "Dataset": "data",
    "create_model": "models", "list_models": "models",
    "TrainConfig": "config",
    "train": "training",
    "evaluate": "evaluation",
    "load_run": "storage",
    "compare": "comparison",
    "prepare_image": "images", "predict": "images",
    "explain": "explainer", "explain_runs": "explainer",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'seqmnist' has no attribute {name!r}")
