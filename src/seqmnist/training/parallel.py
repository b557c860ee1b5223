"""Data parallelism across CPU cores for one training step.

A batch of 64 through a 50-unit LSTM is made of tiny matrix products that one core runs nearly as
fast as two, so two threads inside each product gain little. Instead each batch is split across
model replicas, each running forward and backward in its own thread on one core; their gradients
are summed into the first replica (each loss is divided by the whole batch size, so the sum is
exactly the full batch's gradient), the optimizer updates that replica, and the others copy it.
Each replica draws dropout masks from its own seeded generator, so runs stay reproducible.
Each replica's forward and backward is the backend's training step (backends.py): autograd for
``torch``, one ``lstm_kernel.ClassifierStep`` for ``native`` (C, releasing the GIL, so the two
cores work truly in parallel).
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import torch

from ..kernels.backends import training_step
from ..models.layers import set_dropout_generator


def dropout_generator(seed: int, replica: int) -> torch.Generator:
    """The generator replica ``replica`` of a run with ``seed`` draws its dropout masks from."""
    return torch.Generator().manual_seed(seed * 7919 + replica + 1)


class Replicas:
    def __init__(self, model: torch.nn.Module, n: int, seed: int, backend: str = "torch",
                 precision: str = "fp32"):
        self.models = [model] + [copy.deepcopy(model) for _ in range(n - 1)]
        self.generators = [dropout_generator(seed, i) for i in range(n)]
        for m, g in zip(self.models, self.generators):
            set_dropout_generator(m, g)
        self.params = [[p for p in m.parameters() if p.requires_grad] for m in self.models]
        self.steps = [training_step(m, backend, precision, g)
                      for m, g in zip(self.models, self.generators)]
        # OpenMP keeps the thread count per calling thread: set it in each worker too.
        self.pool = ThreadPoolExecutor(n - 1, thread_name_prefix="replica",
                                       initializer=torch.set_num_threads, initargs=(1,)) \
            if n > 1 else None

    def __len__(self) -> int:
        return len(self.models)

    def train(self) -> None:
        for m in self.models:
            m.train()

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor):
        """Gradients of the mean loss over the batch in replica 0; returns (loss sum, correct),
        tensors or numbers."""
        if self.pool is None:
            return self.steps[0].forward_backward(x, y, len(y))
        xs, ys = x.tensor_split(len(self)), y.tensor_split(len(self))
        # The calling thread runs replica 0 itself (with one thread, as the pool's workers do).
        jobs = [self.pool.submit(self.steps[i].forward_backward, xs[i], ys[i], len(y))
                for i in range(1, len(self)) if len(ys[i])]
        results = [self.steps[0].forward_backward(xs[0], ys[0], len(y))] + \
            [job.result() for job in jobs]
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
