"""Metrics while training and after: accuracy, loss, confusion, throughput over tensors already
in memory, and anytime accuracy (the accuracy after each number of steps read)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ..kernels.backends import autocast


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


# A batch of sequences longer than this holds at most as many steps in all as ``batch_size``
# sequences of this many (28 rows): 1,000 images of 784 pixels are read 35 at a time. Memory then
# stays that of 1,000 rows-long images (a minGRU's states over 1,000 images of 784 steps are
# gigabytes; a Transformer's attention over them more).
BOUND_STEPS = 28


@torch.inference_mode()
def evaluate_tensors(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     batch_size: int = 1000, precision: str = "fp32",
                     anytime: bool = False) -> Evaluation:
    """Evaluate ``model`` on inputs already in the view's layout, in eval mode, in big batches
    (``batch_size`` images; fewer for long sequences, ``BOUND_STEPS``).
    With ``anytime``, a model that answers after every step is read once with ``forward_steps``:
    its last step is the answer evaluated, and the earlier ones give anytime accuracy in the same
    pass (``Evaluation.anytime``)."""
    was_training = model.training
    model.eval()
    if x.dim() == 3 and x.shape[1] > BOUND_STEPS:
        batch_size = max(1, batch_size * BOUND_STEPS // x.shape[1])
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
