"""Views: how an image (N, H, W) becomes model input.

Sequence views give (N, steps, features); the image view gives (N, 1, H, W). A view is applied once
to the whole dataset tensor, so training batches are plain index slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UsageError


@dataclass(frozen=True)
class View:
    name: str
    kind: str  # "sequence" or "image"
    description: str

    def shape(self, height: int, width: int) -> tuple[int, ...]:
        """Per-sample input shape for an image of ``height`` x ``width``."""
        return {
            "rows": (height, width),
            "columns": (width, height),
            "pixels": (height * width, 1),
            "permuted": (height * width, 1),
            "image": (1, height, width),
        }[self.name]


VIEWS = {v.name: v for v in [
    View("rows", "sequence", "one step per row, the row's pixels as features (the tutorial)"),
    View("columns", "sequence", "one step per column, left to right"),
    View("pixels", "sequence", "one pixel per step in reading order (sequential MNIST)"),
    View("permuted", "sequence", "one pixel per step under a fixed seeded permutation"),
    View("image", "image", "the 2-D image with one channel, for CNNs"),
]}


def get_view(name: str) -> View:
    try:
        return VIEWS[name]
    except KeyError:
        raise UsageError(f"unknown view {name!r}; choose from {', '.join(VIEWS)}") from None


def permutation(num_pixels: int, seed: int) -> torch.Tensor:
    """The fixed pixel order of the ``permuted`` view, drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(num_pixels, generator=gen)


def apply_view(images: torch.Tensor, view: str, perm_seed: int = 0) -> torch.Tensor:
    """Turn float images (N, H, W) into the view's layout, contiguous."""
    n, h, w = images.shape
    if view == "rows":
        out = images
    elif view == "columns":
        out = images.transpose(1, 2)
    elif view == "pixels":
        out = images.reshape(n, h * w, 1)
    elif view == "permuted":
        out = images.reshape(n, h * w)[:, permutation(h * w, perm_seed).to(images.device)]
        out = out.unsqueeze(-1)
    elif view == "image":
        out = images.unsqueeze(1)
    else:
        get_view(view)  # raises the UsageError
    return out.contiguous()


def to_input(images_uint8, view: str, perm_seed: int = 0, device: str | torch.device = "cpu"
             ) -> torch.Tensor:
    """uint8 images (numpy or tensor) -> scaled float tensor in the view's layout on ``device``."""
    x = torch.tensor(images_uint8, device=device, dtype=torch.float32).div_(255.0)
    return apply_view(x, view, perm_seed)
