"""Evaluation: loss, accuracy, confusion and throughput on a test set, for a model or a run folder."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..data.datasets import load_dataset
from ..data.views import to_input
from ..kernels.backends import install_backend
from ..runs.storage import Run, load_run
from ..training.metrics import Evaluation, evaluate_tensors


def torch_copy(run: Run) -> Run:
    """The run with a private copy of its model computing with the torch backend, in eval mode
    (gradients and per-step answers need it), leaving the run's own model as it is: a server
    may be predicting with it in another thread."""
    from dataclasses import replace


    return replace(run, model=install_backend(copy.deepcopy(run.model), "torch").eval())


def evaluate(run: Run | str | Path, data_dir: str | Path | None = None,
             dataset: str | None = None) -> Evaluation:
    """Reload a run (or take a loaded one) and evaluate it on its dataset's test set."""

    if not isinstance(run, Run):
        run = load_run(run)
    cfg = run.config
    ds = load_dataset(dataset or cfg.dataset, data_dir)
    x = to_input(ds.x_test, cfg.view, cfg.order_seed)
    precision = cfg.precision if cfg.precision != "auto" else "fp32"
    return evaluate_tensors(run.model, x, torch.as_tensor(ds.y_test), cfg.eval_batch_size, precision)


