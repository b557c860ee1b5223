"""The Keras-style summary: each layer's output shape and parameters, as Keras prints them."""

from __future__ import annotations

import torch
from torch import nn

from .layers import trainable_parameters

KERAS_LAYER_NAMES = {nn.Conv2d: "Conv2D", nn.MaxPool2d: "MaxPooling2D", nn.Flatten: "Flatten",
                     nn.Linear: "Dense", nn.Dropout: "Dropout"}


def _layer_name(m: nn.Module) -> str:
    if getattr(m, "keras_name", None):
        return m.keras_name
    if isinstance(m, nn.Sequential) and len(m) and type(m).__name__ == "ConvReLU":
        return _layer_name(m[0])
    return next((name for cls, name in KERAS_LAYER_NAMES.items() if isinstance(m, cls)),
                type(m).__name__)


def keras_shape(shape: tuple[int, ...]) -> str:
    """An output shape as Keras prints it: batch as None, images channels-last (H, W, C)."""
    dims = list(shape[1:])
    if len(dims) == 3:  # PyTorch's (C, H, W) -> Keras's (H, W, C)
        dims = dims[1:] + dims[:1]
    return "(None, " + ", ".join(str(d) for d in dims) + ")"


def summary_rows(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, str, int]]:
    """(layer, output shape, trainable parameters) for each top-level layer, as Keras lists them
    (the children of ``model.net`` where the model keeps its layers there, else of the model)."""
    rows: list[tuple[str, str, int]] = []
    hooks = []
    layers = list(getattr(model, "net", model).children()) or [model]
    for m in layers:
        def hook(mod, _inp, out, mod_name=_layer_name(m)):
            out = out[0] if isinstance(out, tuple) else out
            rows.append((mod_name, keras_shape(tuple(out.shape)), trainable_parameters(mod)))
        hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, *input_shape, device=p.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def summary_text(model: nn.Module, input_shape: tuple[int, ...], title: str = "") -> str:
    """A Keras-style ``model.summary()`` table."""
    rows = summary_rows(model, input_shape)
    width = [28, 24, 12]
    line = "=" * sum(width)
    out = [f'Model: "{title}"'] if title else []
    out.append(f"{'Layer (type)':<{width[0]}}{'Output Shape':<{width[1]}}{'Param #':>{width[2]}}")
    out.append(line)
    for name, shape, params in rows:
        out.append(f"{name:<{width[0]}}{shape:<{width[1]}}{params:>{width[2]},}")
    out.append(line)
    total = trainable_parameters(model)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    out.append(f"Total params: {total:,}")
    out.append(f"Trainable params: {total:,}")
    out.append("Non-trainable params: 0" + (f" (plus {frozen:,} fixed zero biases PyTorch "
                                             "keeps for Keras's single-bias layout)" if frozen else ""))
    out.append("Output shapes in Keras's order (images channels-last: height, width, channels; "
               "PyTorch computes them channels-first).")
    return "\n".join(out)
