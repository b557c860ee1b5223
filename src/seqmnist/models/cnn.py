"""The tutorial's CNN: 2 x (conv 5x5 'same' + relu + maxpool 2), dense 1024, dropout, dense."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.errors import UsageError
from .checks import check_sizes
from .layers import Dropout, glorot_
from .registry import register_model


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
        if not (isinstance(channels, (list, tuple)) and 1 <= len(channels) <= 8):
            raise UsageError(f"cnn: channels must be a list of 1 to 8 widths, got {channels!r}")
        for k in channels:
            check_sizes("cnn", channels=(k, 1, 4096))
        check_sizes("cnn", kernel=(kernel, 1, 31), dense=(dense, 1, 65536),
                    dropout=(dropout, 0.0, 0.99))
        if kernel % 2 == 0:
            raise UsageError(f"cnn: kernel must be odd (its 'same' padding keeps the image size), "
                             f"got {kernel}")
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


@register_model("cnn", ("image",), onnx=True, lr=1e-4, view="image",
                presets={"fast": dict(batch_size=128, epochs=2, lr=3e-3, schedule="onecycle")})
def cnn(input_shape, num_classes, **options) -> nn.Module:
    """The tutorial's CNN (3,274,634 parameters on 28x28)."""
    return CNN(input_shape, num_classes, **options)


