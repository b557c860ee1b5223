"""Evaluation: loss, accuracy, confusion and throughput on a test set, for a model or a run folder."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from .backends import autocast
from .storage import Run, load_run


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    predictions: np.ndarray  # predicted class per test image
    confidence: np.ndarray  # probability of the predicted class
    labels: np.ndarray
    seconds: float
    probabilities: np.ndarray | None = None  # (images, classes), float32
    anytime: dict | None = None  # anytime accuracy, when computed in the same pass

    @property
    def images_per_second(self) -> float:
        return len(self.labels) / self.seconds if self.seconds > 0 else float("nan")

    def confusion(self, num_classes: int) -> np.ndarray:
        cm = np.zeros((num_classes, num_classes), dtype=np.int64)
        np.add.at(cm, (self.labels, self.predictions), 1)
        return cm

    def per_class_accuracy(self, num_classes: int) -> list[float]:
        cm = self.confusion(num_classes)
        totals = cm.sum(axis=1)
        return [float(cm[i, i] / totals[i]) if totals[i] else float("nan")
                for i in range(num_classes)]

    def misclassified(self, limit: int = 100) -> list[list]:
        """[index, true, predicted, confidence] for the most confident mistakes."""
        wrong = np.flatnonzero(self.predictions != self.labels)
        wrong = wrong[np.argsort(-self.confidence[wrong])][:limit]
        return [[int(i), int(self.labels[i]), int(self.predictions[i]),
                 round(float(self.confidence[i]), 4)] for i in wrong]


@torch.inference_mode()
def evaluate_tensors(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int = 1000, precision: str = "fp32",
                     anytime: bool = False) -> Evaluation:
    """Evaluate ``model`` on inputs already in the view's layout, in eval mode, in big batches.
    With ``anytime``, a model that answers after every step is read once with ``forward_steps``:
    its last step is the answer evaluated, and the earlier ones give anytime accuracy in the same
    pass (``Evaluation.anytime``)."""
    was_training = model.training
    model.eval()
    one_pass = anytime and x.dim() == 3 and getattr(model, "answers_every_step", False)
    ks = anytime_steps(x.shape[1]) if one_pass else []
    index = torch.tensor([k - 1 for k in ks], device=x.device, dtype=torch.long)
    correct = torch.zeros(len(ks), dtype=torch.long)
    total_loss, all_probs = 0.0, []
    start = time.perf_counter()
    for i in range(0, len(x), batch_size):
        with autocast(x.device, precision):
            if one_pass:
                steps = model.forward_steps(x[i:i + batch_size]).float()
                logits = steps[:, -1]
                picked = steps.index_select(1, index).argmax(-1)
                correct += (picked == y[i:i + batch_size, None]).sum(0).cpu()
            else:
                logits = model(x[i:i + batch_size]).float()
        total_loss += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
        all_probs.append(logits.softmax(-1).cpu())
    seconds = time.perf_counter() - start
    model.train(was_training)
    probs = torch.cat(all_probs).numpy() if all_probs else np.zeros((0, 1), dtype=np.float32)
    predictions = probs.argmax(-1) if len(probs) else np.zeros(0, dtype=np.int64)
    labels = y.cpu().numpy()
    n = max(len(labels), 1)
    found = dict(steps=ks, accuracy=(correct.double() / n).tolist(), of=int(x.shape[1])) \
        if one_pass else None
    return Evaluation(total_loss / n, float((predictions == labels).sum() / n), predictions,
                      probs.max(-1) if len(probs) else np.zeros(0), labels, seconds, probs,
                      found)


def anytime_steps(steps: int, points: int = 28) -> list[int]:
    """The step counts at which anytime accuracy is measured: every step up to ``points``
    steps (rows, columns), else ``points`` evenly spaced ones ending at the last (pixels)."""
    if steps <= points:
        return list(range(1, steps + 1))
    return sorted({max(1, round(steps * k / points)) for k in range(1, points + 1)})


def anytime_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int = 1000, precision: str = "fp32") -> dict | None:
    """Test accuracy when a causal sequence model has read only its first k steps, for the
    ``anytime_steps`` k: {"steps": [...], "accuracy": [...], "of": total steps}. None for
    models that do not answer step by step (a CNN), at once. The same pass as
    ``evaluate_tensors``'s."""
    if not getattr(model, "answers_every_step", False) or x.dim() != 3:
        return None  # nothing to read: no pass over the test set for it
    return evaluate_tensors(model, x, y, batch_size, precision, anytime=True).anytime


def torch_copy(run: Run) -> Run:
    """The run with a private copy of its model computing with the torch backend, in eval mode
    (gradients and per-step answers need it), leaving the run's own model as it is: a server
    may be predicting with it in another thread."""
    from dataclasses import replace

    from .backends import install_backend

    return replace(run, model=install_backend(copy.deepcopy(run.model), "torch").eval())


def evaluate(run: Run | str | Path, data_dir: str | Path | None = None,
             dataset: str | None = None) -> Evaluation:
    """Reload a run (or take a loaded one) and evaluate it on its dataset's test set."""
    from .data import load_dataset
    from .views import to_input

    if not isinstance(run, Run):
        run = load_run(run)
    cfg = run.config
    ds = load_dataset(dataset or cfg.dataset, data_dir)
    x = to_input(ds.x_test, cfg.view, cfg.seed)
    precision = cfg.precision if cfg.precision != "auto" else "fp32"
    return evaluate_tensors(run.model, x, torch.as_tensor(ds.y_test), cfg.eval_batch_size, precision)


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


def dataset_view(run: Run, ds, images: int = 1000, per_class: int = 20) -> dict | None:
    """How a sequence model reads the test set: per class, the median step at which it knows
    (over the images of that class it reads right); the mean importance of each stretch of steps
    per class (occlusion of blocks of steps, at most 28 blocks, on ``per_class`` images of each
    class); and its final features of ``images`` test images projected to 2-D by PCA (numpy's
    SVD), with the basis kept so that an image's path through the map can be drawn. None for a
    model without steps (the CNN)."""
    from .models import MODELS
    from .views import VIEWS, to_input

    cfg = run.config
    if VIEWS[cfg.view].kind != "sequence" or not MODELS[cfg.model].steps:
        return None
    model = torch_copy(run).model
    classes = run.metrics.get("classes") or [str(i) for i in range(run.num_classes)]
    n = min(images, len(ds.x_test))
    x = to_input(ds.x_test[:n], cfg.view, cfg.seed)
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
