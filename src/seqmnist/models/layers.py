"""What several models share: the causal classifier (answers after every step), residual block
stacks, dropout drawn from its own generator, Keras-style initialisation, parameter counts."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..core.errors import UsageError


def trainable_parameters(model: nn.Module) -> int:
    """Parameter count as Keras reports it (frozen zero biases are not parameters there)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Dropout(nn.Dropout):
    """Dropout drawing its mask from its own generator when given one (``generator``), so that
    model replicas trained in parallel threads stay reproducible; else from the global RNG.
    Comparing uniform noise with p is also about twice as fast on CPU as ``bernoulli_``, and the
    mask takes the input's memory layout (the LSTM kernel's time-major output stays so)."""

    generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = torch.empty_like(x).uniform_(generator=self.generator).ge_(self.p)
        return x * mask.mul_(1.0 / (1.0 - self.p))


def draws_from_global_rng(model: nn.Module) -> bool:
    """Whether training ``model`` draws random numbers from PyTorch's process-wide generator
    (dropout other than ``Dropout``'s, attention dropout): such a model trained beside another
    in the same process would not get the draws it gets alone."""
    return any((isinstance(m, nn.Dropout) and not isinstance(m, Dropout) and m.p > 0)
               or (isinstance(m, nn.MultiheadAttention) and m.dropout > 0)
               for m in model.modules())


def set_dropout_generator(model: nn.Module, generator: torch.Generator | None) -> None:
    for m in model.modules():
        if isinstance(m, Dropout):
            m.generator = generator


def glorot_(layer: nn.Module) -> None:
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)


class CausalClassifier(nn.Module):
    """A sequence model that answers after every step: ``encode`` maps (N, T, F) to causal
    features (N, T, d) (step t sees steps 1..t only); the head reads the last step's features,
    and ``forward_steps`` gives the logits after every step."""

    answers_every_step = True  # forward_steps' last step is forward's answer

    def __init__(self, input_shape: tuple[int, ...], width: int, num_classes: int):
        super().__init__()
        if len(input_shape) != 2:
            raise UsageError(f"{type(self).__name__} needs sequence input (steps, features), "
                             f"got {input_shape}")
        self.steps, self.features = input_shape
        self.head = nn.Linear(width, num_classes)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x)[:, -1])

    @torch.no_grad()
    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Logits after every step (N, steps, classes)."""
        return self.head(self.encode(x))


class BlockStack(CausalClassifier):
    """Steps projected to ``d_model``, ``layers`` residual blocks made by ``make_block`` (each
    ``block(x, recurrent)``: a convolution for training, a step-by-step recurrence when asked;
    ``block.states(x)``: the size of its state after every step), a final LayerNorm. The
    convolution is causal, so its output at step t is already the answer
    after t steps: ``forward_steps`` uses it (one pass over the sequence); the recurrence, the
    same numbers one step at a time, is there for streaming (``recurrent=True``)."""

    def __init__(self, input_shape, num_classes: int, d_model: int, layers: int,
                 make_block: Callable[[], nn.Module]):
        super().__init__(input_shape, d_model, num_classes)
        self.embed = nn.Linear(self.features, d_model)
        self.blocks = nn.ModuleList(make_block() for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)

    def encode(self, x: torch.Tensor, recurrent: bool = False) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, recurrent)
        return self.norm(h)

    @torch.no_grad()
    def forward_steps(self, x: torch.Tensor, recurrent: bool = False) -> torch.Tensor:
        """Logits after every step (N, steps, classes): by the causal convolution in one pass,
        or with ``recurrent`` by the step-by-step recurrence (equal up to rounding)."""
        return self.head(self.encode(x, recurrent=recurrent))

    @torch.no_grad()
    def forward_states(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each block's state after every step, ``layerK.state`` (N, T, units): what its
        ``states(x)`` says of the input it reads (the registry's ``states``)."""
        h, out = self.embed(x), {}
        for k, block in enumerate(self.blocks, 1):
            out[f"layer{k}.state"] = block.states(h)
            h = block(h)
        return out
