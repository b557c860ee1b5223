"""One update: everything that turns one batch into updated weights (the optimizer's step; a
"step" elsewhere in seqmnist is a position in the sequence a model reads).

``update(x, y)`` runs forward and backward (on the backend's replicas, parallel.py), the
optimizer update, the copy of the updated weights into the other replicas, and the
learning-rate scheduler's tick, and returns (summed loss, correct answers). The trainer
(trainer.py) calls it once per batch and knows nothing else about how the update is made, so
another way of making it (a compiled step, a whole-step CUDA graph, several seeds stacked in one
update) is another class with the same four methods: ``__call__``, ``train``, ``state_dict`` /
``load_state_dict`` and ``close``, plus ``threads`` (how many threads the batch loop should leave
each OpenMP call) and ``lr`` (the learning rate the next batch is trained with).
"""

from __future__ import annotations

import math
import time

import torch

from .config import TrainConfig
from .parallel import Replicas


def make_adam(params, lr: float, eps: float) -> torch.optim.Adam:
    """Adam with the fused kernel where this PyTorch has one (one pass over the weights instead
    of ~10: a third of the CNN's step time on CPU), else the default implementation."""
    try:
        return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, eps=eps)


def step_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
                 tries: int = 3) -> float:
    """The fastest of ``tries`` forward and backward passes of ``model`` on ``x`` (the first
    warms up): a training step's cost without the optimizer. The loss is cross-entropy against
    ``y``, or with no labels the outputs' sum."""
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        out = model(x)
        (out.sum() if y is None else torch.nn.functional.cross_entropy(out, y)).backward()
        best = min(best, time.perf_counter() - start)
    return best


def budget_lr(cfg: TrainConfig, done: float) -> float:
    """The learning rate of a budget run once ``done`` (0..1) of its budget is spent: one-cycle
    over time for the one-cycle recipes (PyTorch's OneCycleLR's shape: up from lr/25 over the
    first 30%, cosine down to lr/25/1e4), else a linear decay to lr/1000. Its lowest value,
    ``budget_lr(cfg, 1)``, is the rate of the last step."""
    done = min(max(done, 0.0), 1.0)
    if cfg.schedule == "onecycle":
        start, top = cfg.lr / 25, cfg.lr
        end = start / 1e4
        if done < 0.3:
            return _cosine(start, top, done / 0.3)
        return _cosine(top, end, (done - 0.3) / 0.7)
    return cfg.lr * (1 - done * 0.999)


def _cosine(a: float, b: float, t: float) -> float:
    return b + (a - b) * (1 + math.cos(math.pi * t)) / 2


class Update:
    """One model's update per batch: its replicas (one per core for recurrent models on CPU), Adam
    over replica 0's weights, and the one-cycle schedule when the recipe asks for it."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, steps_per_epoch: int,
                 threads: int):
        self.replicas = Replicas(model, cfg.replicas, cfg.seed, cfg.backend, cfg.precision)
        self.optimizer = make_adam(self.replicas.params[0], cfg.lr, cfg.adam_eps)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch) \
            if cfg.schedule == "onecycle" and cfg.budget is None else None
        # Replicas run one core each (their own threads); one model uses all of them.
        self.threads = 1 if len(self.replicas) > 1 else threads

    def __call__(self, x: torch.Tensor, y: torch.Tensor):
        """Train on one batch; returns (summed loss, correct answers), tensors or numbers."""
        loss_sum, hits = self.replicas.forward_backward(x, y)
        self.optimizer.step()
        self.replicas.sync()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss_sum, hits

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        """A budget run's schedule sets the rate itself, batch by batch (``budget_lr``)."""
        for group in self.optimizer.param_groups:
            group["lr"] = value

    def train(self) -> None:
        self.replicas.train()

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue this step exactly (the model's weights apart)."""
        return dict(optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
                    rng_dropout=self.replicas.rng_states())

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``'s keys of a checkpoint, once the model's weights are
        loaded (they are copied into the other replicas here)."""
        self.replicas.sync()
        self.replicas.set_rng_states(state["rng_dropout"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])

    def close(self) -> None:
        self.replicas.close()
