"""A causal Transformer encoder over the steps.

Vaswani et al. 2017, "Attention is all you need", as used on sequential MNIST in the S4 paper's
comparisons (Gu, Goel, Re 2022, "Efficiently modeling long sequences with structured state
spaces", Table 12: Transformer 98.9% sMNIST, 97.9% pMNIST). Steps are projected to ``d_model``,
given learned positions, and read by pre-norm encoder layers under a causal mask, so the features
at step t see steps 1..t only and the model answers after every step. The published runs used
larger models on GPUs; the defaults here (2 layers, d_model 64, 4 heads: 70k parameters) are
sized for a CPU, and ``--model-option layers=4 d_model=128`` moves towards them.
"""

from __future__ import annotations

import torch
from torch import nn

from .checks import check_sizes
from .layers import CausalClassifier, Dropout
from .registry import SEQUENCE_VIEWS, register_model


class CausalTransformer(CausalClassifier):
    """Dropout ``dropout`` on the residual paths and in the feed-forward block, each drawn from
    its own generator (so replicas and side-by-side seeds stay reproducible), and
    ``attention_dropout`` on the attention weights, 0 by default: with it, PyTorch's fused
    causal attention cannot run on a CPU and a step at 784 steps took 7.6x as long (it draws
    and applies a mask over every step x step score: BENCHMARKS.md section 15)."""

    def __init__(self, input_shape, num_classes: int, d_model: int = 64, heads: int = 4,
                 layers: int = 2, ff: int = 128, dropout: float = 0.1,
                 attention_dropout: float = 0.0):
        check_sizes("transformer", d_model=(d_model, 1, 4096), heads=(heads, 1, 64),
                    layers=(layers, 1, 64), ff=(ff, 1, 16384), dropout=(dropout, 0, 0.99),
                    attention_dropout=(attention_dropout, 0, 0.99))
        if d_model % heads:
            raise ValueError(f"d_model {d_model} must be a multiple of heads {heads}")
        super().__init__(input_shape, d_model, num_classes)
        self.embed = nn.Linear(self.features, d_model)
        self.position = nn.Parameter(torch.randn(1, self.steps, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        for each in self.encoder.layers:
            each.self_attn.dropout = float(attention_dropout)
            for name in ("dropout", "dropout1", "dropout2"):
                setattr(each, name, Dropout(dropout))
        self.norm = nn.LayerNorm(d_model)

    # Attention holds (batch x heads x steps x steps) scores: long sequences (784 pixels) are read
    # in slices of the batch so that evaluation in batches of 1,000 fits in memory.
    MAX_SCORES = 1 << 26

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        steps = x.shape[1]
        per_sample = steps * steps * self.encoder.layers[0].self_attn.num_heads
        chunk = max(1, self.MAX_SCORES // per_sample)
        if len(x) > chunk:
            return torch.cat([self.encode(part) for part in x.split(chunk)])
        h = self.embed(x) + self.position[:, :steps]
        mask = self._mask(steps, h)
        for layer in self.encoder.layers:
            h = self._layer(layer, h, mask)
        return self.norm(h)

    @staticmethod
    def _mask(steps: int, h: torch.Tensor) -> torch.Tensor:
        return nn.Transformer.generate_square_subsequent_mask(steps, device=h.device,
                                                              dtype=h.dtype)

    @staticmethod
    def _layer(layer: nn.Module, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Each pre-norm layer written out with its own modules, rather than through
        # nn.TransformerEncoder: the same function, but attention always goes through
        # PyTorch's fused causal kernel. The encoder's inference fast path would use the mask as
        # a mask, 3x slower at 784 steps (a test set read 10 minutes instead of 3).
        a = layer.norm1(h)
        h = h + layer.dropout1(layer.self_attn(a, a, a, attn_mask=mask, need_weights=False,
                                               is_causal=True)[0])
        f = layer.linear1(layer.norm2(h))
        return h + layer.dropout2(layer.linear2(layer.dropout(layer.activation(f))))

    @torch.no_grad()
    def forward_states(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Where the last layer looks: its attention weights, averaged over the heads, from
        each step over the steps read so far, ``layerK.attention`` (N, T, T)."""
        steps = x.shape[1]
        h = self.embed(x) + self.position[:, :steps]
        mask = self._mask(steps, h)
        *first, last = self.encoder.layers
        for layer in first:
            h = self._layer(layer, h, mask)
        a = last.norm1(h)
        _, weights = last.self_attn(a, a, a, attn_mask=mask, need_weights=True,
                                    average_attn_weights=True)
        return {f"layer{len(self.encoder.layers)}.attention": weights}


@register_model("transformer", SEQUENCE_VIEWS, steps=True, states=True, lr=1e-3, view="rows")
def transformer(input_shape, num_classes, **options) -> nn.Module:
    """Causal Transformer encoder (Vaswani et al. 2017): 2 layers, d_model 64, 4 heads."""
    return CausalTransformer(input_shape, num_classes, **options)
