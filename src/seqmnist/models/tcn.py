"""A temporal convolutional network: residual blocks of dilated causal convolutions.

Bai, Kolter, Koltun 2018, "An empirical evaluation of generic convolutional and recurrent
networks for sequence modeling", Table 1: TCN 99.0% on sequential MNIST, 97.2% on permuted MNIST,
with 8 levels of 25 channels, kernel 7, dropout 0.05 (about 70k parameters): these are the
defaults here. Each level doubles the dilation (1, 2, 4, ...), so 8 levels of kernel 7 see 3,061
steps, more than the 784 pixels; the left-only padding makes it causal (step t sees 1..t). The
paper's weight normalisation is left out.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .checks import check_sizes
from .layers import CausalClassifier, Dropout
from .registry import SEQUENCE_VIEWS, register_model


class TemporalBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv1 = nn.Conv1d(cin, cout, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(cout, cout, kernel, dilation=dilation)
        self.drop = Dropout(dropout)  # its own generator per replica: reproducible in threads
        self.down = nn.Conv1d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, T)
        y = self.drop(F.relu(self.conv1(F.pad(x, (self.pad, 0)))))
        y = self.drop(F.relu(self.conv2(F.pad(y, (self.pad, 0)))))
        return F.relu(y + (x if self.down is None else self.down(x)))


class TCN(CausalClassifier):
    def __init__(self, input_shape, num_classes: int, levels: int = 8, channels: int = 25,
                 kernel: int = 7, dropout: float = 0.05):
        check_sizes("tcn", levels=(levels, 1, 16), channels=(channels, 1, 4096),
                    kernel=(kernel, 2, 64), dropout=(dropout, 0, 0.99))
        super().__init__(input_shape, channels, num_classes)
        blocks, width = [], self.features
        for level in range(levels):
            blocks.append(TemporalBlock(width, channels, kernel, 2 ** level, dropout))
            width = channels
        self.blocks = nn.Sequential(*blocks)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x.transpose(1, 2)).transpose(1, 2)


# Permuted MNIST on a CPU (README, "A published number on a CPU"): the paper's architecture, a
# one-cycle schedule over 18 epochs, research protocol: 97.55% in 81 min on 2 Xeon cores.
PMNIST = dict(view="permuted", epochs=18, lr=3e-3, schedule="onecycle", protocol="research")


@register_model("tcn", SEQUENCE_VIEWS, steps=True, lr=2e-3, view="rows",
                presets={"pmnist": PMNIST})
def tcn(input_shape, num_classes, **options) -> nn.Module:
    """Temporal convolutional network (Bai et al. 2018): 8 levels x 25 channels, kernel 7."""
    return TCN(input_shape, num_classes, **options)
