import numpy as np
import pytest
import torch

from seqmnist.core.errors import UsageError
from seqmnist.data.views import VIEWS, apply_view, permutation, to_input


def test_shapes_and_meaning():
    images = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    rows = apply_view(images, "rows")
    assert rows.shape == (2, 3, 4) and torch.equal(rows[0, 1], images[0, 1])
    cols = apply_view(images, "columns")
    assert cols.shape == (2, 4, 3) and torch.equal(cols[0, 2], images[0, :, 2])
    pixels = apply_view(images, "pixels")
    assert pixels.shape == (2, 12, 1) and pixels[1, 5, 0] == images[1, 1, 1]
    assert apply_view(images, "image").shape == (2, 1, 3, 4)
    for name, view in VIEWS.items():
        assert apply_view(images, name).shape[1:] == view.shape(3, 4)


def test_permuted_is_a_fixed_seeded_permutation():
    images = torch.rand(2, 5, 5)
    a, b = apply_view(images, "permuted", 7), apply_view(images, "permuted", 7)
    assert torch.equal(a, b)
    assert not torch.equal(a, apply_view(images, "permuted", 8))
    perm = permutation(25, 7)
    assert torch.equal(a[:, :, 0], images.reshape(2, 25)[:, perm])
    assert sorted(perm.tolist()) == list(range(25))


def test_to_input_scales_uint8():
    x = to_input(np.full((1, 2, 2), 255, dtype=np.uint8), "rows")
    assert x.dtype == torch.float32 and torch.all(x == 1.0)


def test_unknown_view():
    with pytest.raises(UsageError, match="unknown view"):
        apply_view(torch.rand(1, 2, 2), "diagonal")
