"""The tutorial's CNN: 2 x (conv 5x5 'same' + relu + maxpool 2), dense 1024, dropout, dense."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UsageError
from . import Dropout, glorot_, register_model


class ConvReLU(nn.Sequential):
    """A layer with its activation, one row in a Keras summary."""


class CNN(nn.Module):
    """The tutorial's CNN: 2 x (conv 5x5 'same' + relu + maxpool 2), dense 1024, dropout, dense."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: tuple = (32, 64),
                 kernel: int = 5, dense: int = 1024, dropout: float = 0.5, keras_init: bool = True):
        super().__init__()
        if len(input_shape) != 3:
            raise UsageError(f"cnn needs image input (channels, height, width), got {input_shape}")
        c, h, w = input_shape
        if not (1 <= len(channels) <= 8 and all(1 <= k <= 4096 for k in channels)
                and 1 <= kernel <= 31 and 1 <= dense <= 65536 and 0 <= dropout < 1):
            raise UsageError("cnn: at most 8 conv layers of 1..4096 channels, kernel 1..31, "
                             "dense 1..65536, dropout in [0, 1)")
        mods: list[nn.Module] = []
        for out in channels:
            mods += [ConvReLU(nn.Conv2d(c, out, kernel, padding=kernel // 2), nn.ReLU()),
                     nn.MaxPool2d(2, 2, ceil_mode=True)]  # ceil_mode = Keras padding='same'
            c, h, w = out, math.ceil(h / 2), math.ceil(w / 2)
        mods += [nn.Flatten(), ConvReLU(nn.Linear(c * h * w, dense), nn.ReLU()),
                 Dropout(dropout), nn.Linear(dense, num_classes)]
        self.net = nn.Sequential(*mods)
        if keras_init:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    glorot_(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_model("cnn", ("image",), lr=1e-4, view="image")
def cnn(input_shape, num_classes, **options) -> nn.Module:
    """The tutorial's CNN (3,274,634 parameters on 28x28)."""
    return CNN(input_shape, num_classes, **options)


