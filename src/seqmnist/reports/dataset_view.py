"""A sequence run's view of the test set for the explainer's page: each image's features after
every step, projected on the run's PCA map, and when each class is decided."""

from __future__ import annotations

import numpy as np
import torch

from ..data.views import VIEWS, to_input
from ..evaluation.evaluate import torch_copy
from ..models.registry import MODELS
from ..runs.storage import Run


def step_features(model, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """What the head reads after every step (N, T, d): the last layer's hidden state for a
    recurrent model, the encoder's features for the others (captured from ``forward_steps``)."""
    head = model.head
    found: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inp, _out: found.append(inp[0].detach()))
    try:
        with torch.inference_mode():
            for part in x.split(batch):
                model.forward_steps(part)
    finally:
        hook.remove()
    return torch.cat(found)


def reads_steps(cfg) -> bool:
    """Whether a run's model reads a sequence and answers after every step (what
    ``dataset_view`` looks at)."""
    return VIEWS[cfg.view].kind == "sequence" and MODELS[cfg.model].steps


def dataset_view(run: Run, ds, images: int = 1000, per_class: int = 20) -> dict | None:
    """How a sequence model reads the test set: per class, the median step at which it knows
    (over the images of that class it reads right); the mean importance of each stretch of steps
    per class (occlusion of blocks of steps, at most 28 blocks, on ``per_class`` images of each
    class); and its final features of ``images`` test images projected to 2-D by PCA (numpy's
    SVD), with the basis kept so that an image's path through the map can be drawn. None for a
    model without steps (the CNN)."""

    cfg = run.config
    if not reads_steps(cfg):
        return None
    model = torch_copy(run).model
    classes = run.classes
    n = min(images, len(ds.x_test))
    x = to_input(ds.x_test[:n], cfg.view, cfg.order_seed)
    y = np.asarray(ds.y_test[:n])
    features = step_features(model, x)
    with torch.inference_mode():
        belief = model.head(features).argmax(-1).numpy()  # (n, T) top class after each step
    final = belief[:, -1]
    wrong = belief != final[:, None]
    last_wrong = np.where(wrong.any(1), wrong.shape[1] - np.argmax(wrong[:, ::-1], 1), 0)
    median = {}
    for c, name in enumerate(classes):
        mine = last_wrong[(y == c) & (final == c)]
        median[name] = float(np.median(mine)) if len(mine) else None
    steps = x.shape[1]
    blocks = min(steps, 28)
    size = -(-steps // blocks)
    blocks = -(-steps // size)
    importance = np.zeros((blocks, len(classes)))
    for c in range(len(classes)):
        picked = np.flatnonzero(y == c)[:per_class]
        if not len(picked):
            continue
        xc = x[picked]
        with torch.inference_mode():
            p = model(xc).softmax(-1)[:, c]
            for b in range(blocks):
                hidden = xc.clone()
                hidden[:, b * size:(b + 1) * size] = 0
                importance[b, c] = float((p - model(hidden).softmax(-1)[:, c]).mean())
    last = features[:, -1].double().numpy()
    mean = last.mean(0)
    _, sv, basis = np.linalg.svd(last - mean, full_matrices=False)
    points = (last - mean) @ basis[:2].T
    explained = (sv[:2] ** 2).sum() / max((sv ** 2).sum(), 1e-12)
    return dict(run=str(run.path), model=cfg.model, view=cfg.view, steps=steps, classes=classes,
                images=n, median_decided_at=median, block=size, importance=importance,
                pca=dict(points=points, labels=y.tolist(), explained=float(explained)),
                basis=dict(mean=mean, axes=basis[:2]))
