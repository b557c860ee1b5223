"""Views: how an image (N, H, W) becomes model input. One registry entry per view holds both its
per-sample input shape and its transform.

Sequence views give (N, steps, features); the image view gives (N, 1, H, W). A view is applied once
to the whole dataset tensor, so training batches are plain index slices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..core.registry import add, lookup, origin_of


@dataclass(frozen=True)
class View:
    name: str
    kind: str  # "sequence" or "image"
    description: str
    input_shape: Callable[[int, int], tuple[int, ...]]  # (height, width) -> per-sample shape
    transform: Callable[[torch.Tensor, int], torch.Tensor]  # (images (N, H, W), seed) -> input
    unit: str | None = None  # what one step reads, for people: "row", "pixel" (None: no steps)
    scrambled: bool = False  # the reading order is not the picture's own (show it laid out)

    def shape(self, height: int, width: int) -> tuple[int, ...]:
        """Per-sample input shape for an image of ``height`` x ``width``."""
        return self.input_shape(height, width)

    def read_at(self, height: int, width: int, seed: int = 0) -> np.ndarray | None:
        """The reading order, for the pages: an (H, W) array holding the step (from 0) at which
        each pixel is read, found by passing the pixels' own indices through the view (so it is
        the transform's order by construction). None for the image view (no steps)."""
        if self.kind != "sequence":
            return None
        index = torch.arange(height * width, dtype=torch.float64).reshape(1, height, width)
        seq = self.transform(index, seed)[0]  # (steps, features): which pixel is where
        at = np.empty(height * width, dtype=np.int64)
        steps = torch.arange(seq.shape[0]).unsqueeze(1).expand_as(seq)
        at[seq.reshape(-1).long().numpy()] = steps.reshape(-1).numpy()
        return at.reshape(height, width)


VIEWS: dict[str, View] = {}


def register_view(name: str, kind: str, description: str,
                  input_shape: Callable[[int, int], tuple[int, ...]], unit: str | None = None,
                  scrambled: bool = False, replace: bool = False):
    """Decorator: register ``transform(images, seed)`` as the view ``name``; ``unit``: what
    one step reads, as the pages name it; ``scrambled``: its order is not the picture's (the
    pages also lay the pixels out in reading order). A name already registered is an error
    naming both places, unless ``replace=True``."""
    def wrap(transform):
        add(VIEWS, name, View(name, kind, description, input_shape, transform, unit, scrambled),
            "view", origin_of(transform), replace)
        return transform
    return wrap


def sequence_views() -> tuple[str, ...]:
    return tuple(n for n, v in VIEWS.items() if v.kind == "sequence")


def get_view(name: str) -> View:
    return lookup(VIEWS, name, "view")


def permutation(num_pixels: int, seed: int) -> torch.Tensor:
    """The ``permuted`` view's pixel order number ``seed``: PyTorch's ``randperm`` from a
    generator seeded with it. A run's order is its configuration's ``order_seed`` (its
    permutation, 0 by default, the same for every seed)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(num_pixels, generator=gen)


@register_view("rows", "sequence", "one step per row, the row's pixels as features (the tutorial)",
               lambda h, w: (h, w), unit="row")
def _rows(images: torch.Tensor, seed: int) -> torch.Tensor:
    return images


@register_view("columns", "sequence", "one step per column, left to right", lambda h, w: (w, h),
               unit="column")
def _columns(images: torch.Tensor, seed: int) -> torch.Tensor:
    return images.transpose(1, 2)


@register_view("pixels", "sequence", "one pixel per step in reading order (sequential MNIST)",
               lambda h, w: (h * w, 1), unit="pixel")
def _pixels(images: torch.Tensor, seed: int) -> torch.Tensor:
    return images.reshape(len(images), -1, 1)


@register_view("permuted", "sequence", "one pixel per step in one fixed random order (--permutation)",
               lambda h, w: (h * w, 1), unit="pixel", scrambled=True)
def _permuted(images: torch.Tensor, seed: int) -> torch.Tensor:
    flat = images.reshape(len(images), -1)
    return flat[:, permutation(flat.shape[1], seed).to(images.device)].unsqueeze(-1)


@register_view("image", "image", "the 2-D image with one channel, for CNNs",
               lambda h, w: (1, h, w))
def _image(images: torch.Tensor, seed: int) -> torch.Tensor:
    return images.unsqueeze(1)


def apply_view(images: torch.Tensor, view: str, perm_seed: int = 0) -> torch.Tensor:
    """Turn float images (N, H, W) into the view's layout, contiguous."""
    return get_view(view).transform(images, perm_seed).contiguous()


def to_input(images_uint8, view: str, perm_seed: int = 0, device: str | torch.device = "cpu"
             ) -> torch.Tensor:
    """uint8 images (numpy or tensor) -> scaled float tensor in the view's layout on ``device``."""
    x = torch.tensor(images_uint8, device=device, dtype=torch.float32).div_(255.0)
    return apply_view(x, view, perm_seed)
