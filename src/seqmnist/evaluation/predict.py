"""Predictions for user images (already prepared, ``data.images``): every class's probability,
the top three, and with ``steps`` the belief after every step."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.images import prepare_image
from ..data.views import to_input
from ..models.registry import get_entry
from ..runs.storage import Run, load_run


def predict_arrays(run, images: np.ndarray, steps: bool = False) -> list[dict]:
    """Class probabilities for uint8 images (N, H, W); with ``steps``, also after every step."""
    import torch


    x = to_input(images, run.config.view, run.config.order_seed)
    out = []
    with torch.inference_mode():
        probs = run.model(x).softmax(-1).numpy()
        step_probs = run.model.forward_steps(x).softmax(-1).numpy() \
            if steps and get_entry(run.config.model).steps else None
    classes = run.classes
    for i, p in enumerate(probs):
        top = np.argsort(-p)[:3]
        item = dict(prediction=classes[top[0]], index=int(top[0]), probabilities=p.tolist(),
                    top3=[[classes[k], float(p[k])] for k in top])
        if step_probs is not None:
            item["steps"] = step_probs[i].tolist()
        out.append(item)
    return out


def predict(run, sources: list[str | Path | bytes]) -> list[dict]:
    """Prepare each image the MNIST way and classify it with ``run`` (a Run or a run folder)."""

    if not isinstance(run, Run):
        run = load_run(run)
    size = run.image_shape
    arrays = np.stack([prepare_image(s, size) for s in sources])
    return predict_arrays(run, arrays)
