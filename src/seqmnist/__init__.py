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
    "load_dataset": "data.datasets", "list_datasets": "data.datasets", "Dataset": "data.datasets",
    "create_model": "models.registry", "list_models": "models.registry",
    "TrainConfig": "training.config",
    "train": "runs.train",
    "evaluate": "evaluation.evaluate",
    "load_run": "runs.storage",
    "compare": "experiments.comparison",
    "prepare_image": "data.images", "predict": "evaluation.predict",
    "explain": "reports.explainer", "explain_runs": "reports.explainer",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'seqmnist' has no attribute {name!r}")
