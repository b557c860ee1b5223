"""Data parallelism across CPU cores for one training step.

A batch of 64 through a 50-unit LSTM is made of tiny matrix products that one core runs nearly as
fast as two, so two threads inside each product gain little. Instead each batch is split across
model replicas, each running forward and backward in its own thread on one core; their gradients
are summed into the first replica (each loss is divided by the whole batch size, so the sum is
exactly the full batch's gradient), the optimizer updates that replica, and the others copy it.
Each replica draws dropout masks from its own seeded generator, so runs stay reproducible.
For the LSTM classifiers on CPUs with AVX-512, each replica's forward and backward is one
``lstm_kernel.ClassifierStep`` (C, releasing the GIL), so the two cores work truly in parallel.
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.nn import functional as F

from .evaluation import autocast
from .lstm_kernel import ClassifierStep
from .models import set_dropout_generator


class Replicas:
    def __init__(self, model: torch.nn.Module, n: int, seed: int):
        self.models = [model] + [copy.deepcopy(model) for _ in range(n - 1)]
        self.generators = [torch.Generator().manual_seed(seed * 7919 + i + 1) for i in range(n)]
        for m, g in zip(self.models, self.generators):
            set_dropout_generator(m, g)
        self.params = [[p for p in m.parameters() if p.requires_grad] for m in self.models]
        # LSTM classifiers on AVX-512 CPUs: the whole step in seqmnist's kernels (lstm_kernel.py).
        self.kernel_steps = [ClassifierStep(m, g) for m, g in zip(self.models, self.generators)] \
            if ClassifierStep.supports(model) else None
        # OpenMP keeps the thread count per calling thread: set it in each worker too.
        self.pool = ThreadPoolExecutor(n - 1, thread_name_prefix="replica",
                                       initializer=torch.set_num_threads, initargs=(1,)) \
            if n > 1 else None

    def __len__(self) -> int:
        return len(self.models)

    def train(self) -> None:
        for m in self.models:
            m.train()

    def uses_kernel(self, precision: str) -> bool:
        """Whether steps at this precision run in seqmnist's LSTM kernel (float32 only)."""
        return self.kernel_steps is not None and precision == "fp32"

    def _one(self, i: int, x: torch.Tensor, y: torch.Tensor, total: int, precision: str):
        if self.uses_kernel(precision):
            return self.kernel_steps[i].forward_backward(x, y, total)
        model = self.models[i]
        with autocast(x.device, precision):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        model.zero_grad(set_to_none=True)
        (loss / total).backward()
        return loss.detach(), (logits.argmax(-1) == y).sum()

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, precision: str):
        """Gradients of the mean loss over the batch in replica 0; returns (loss sum, correct),
        tensors or numbers."""
        if self.pool is None:
            return self._one(0, x, y, len(y), precision)
        xs, ys = x.tensor_split(len(self)), y.tensor_split(len(self))
        # The calling thread runs replica 0 itself (with one thread, as the pool's workers do).
        jobs = [self.pool.submit(self._one, i, xs[i], ys[i], len(y), precision)
                for i in range(1, len(self)) if len(ys[i])]
        results = [self._one(0, xs[0], ys[0], len(y), precision)] + [job.result() for job in jobs]
        main = self.params[0]
        for params in self.params[1:len(results)]:
            torch._foreach_add_([p.grad for p in main], [q.grad for q in params])
        return sum(r[0] for r in results), sum(r[1] for r in results)

    @torch.no_grad()
    def sync(self) -> None:
        """Copy the updated weights of replica 0 into the others."""
        for params in self.params[1:]:
            if hasattr(torch, "_foreach_copy_"):  # one call instead of one per tensor
                torch._foreach_copy_(params, self.params[0])
            else:
                for q, p in zip(params, self.params[0]):
                    q.copy_(p)

    def rng_states(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self.generators]

    def set_rng_states(self, states: list[torch.Tensor]) -> None:
        for g, s in zip(self.generators, states):
            g.set_state(s)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
