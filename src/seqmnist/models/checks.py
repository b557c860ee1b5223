"""Checked before a model is built: every option in its range, and the memory it needs to train
(laid out on the meta device first, so a model far too big is never built)."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..core.errors import UsageError
from .registry import create_model

RESERVED_OPTIONS = ("input_shape", "num_classes")  # set by the data, never by an option

MEMORY_SHARE = 0.8  # of the machine's memory one training run may plan to use


def machine_memory() -> int | None:
    """Bytes of physical memory, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _too_big(what: str, need: int, detail: str) -> None:
    total = machine_memory()
    if total and need > MEMORY_SHARE * total:
        raise UsageError(f"{what} needs about {need / 2**30:,.1f} GiB to train ({detail}), more "
                         f"than this machine's {total / 2**30:,.1f} GiB: choose smaller sizes")


def check_options(name: str, input_shape: tuple[int, ...], num_classes: int,
                  options: dict) -> nn.Module:
    """UsageError unless ``name`` with ``options`` can be laid out for ``input_shape`` (on the meta
    device: no memory, no weights): every option's type and range, the one place they are
    checked (a training configuration's ``resolved()`` asks before anything is read). Returns
    the layout, on the meta device."""
    reserved = sorted(set(options) & set(RESERVED_OPTIONS))
    if reserved:
        raise UsageError(f"model {name!r}: {', '.join(reserved)} come from the dataset and the "
                         "view, not from a model option")
    try:
        with torch.device("meta"):
            return create_model(name, input_shape, num_classes, **options)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any model's failure, other people's too: one line
        what = f"model {name!r}" + (f" with {options}" if options else "")
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(f"{what} cannot be built for {list(input_shape)} inputs: {reason}"
                         ) from None


def check_model(name: str, input_shape: tuple[int, ...], num_classes: int, options: dict,
                batch_size: int = 64) -> int:
    """Check that ``name`` with ``options`` makes a model for ``input_shape`` that fits in this
    machine's memory and to read that input, before anything is written: the model is first laid
    out on PyTorch's meta device (no memory) and its parameters counted (with their gradients
    and Adam's two moments); then it is built, two blank inputs go through it (a kernel that
    does not fit the image, heads that do not divide the width) and its activations are counted
    and scaled to a batch. The caller's random state is left as it was. UsageError naming the
    problem, with the estimate when it is memory. Returns the parameter count."""
    layout = check_options(name, input_shape, num_classes, options)
    what = f"model {name!r}" + (f" with {options}" if options else "")

    def fits(params: int, activations: int) -> None:
        # activations kept for the backward pass and their gradients, 4 bytes each
        per_batch = activations * batch_size // 2
        _too_big(what, 16 * params + 8 * per_batch,
                 f"{params:,} parameters, {per_batch:,} activations per batch of {batch_size}")

    try:
        params = sum(p.numel() for p in layout.parameters())
        _too_big(what, 16 * params, f"{params:,} parameters")
        try:  # shapes alone, on the meta device: nothing is allocated for a model far too big
            fits(params, _activations(layout, torch.zeros(2, *input_shape, device="meta"))[0])
        except UsageError:
            raise
        except Exception:  # noqa: BLE001 - an operation meta tensors cannot run: counted below
            pass
        with torch.random.fork_rng(devices=[]):
            model = create_model(name, input_shape, num_classes, **options)
            activations, out = _activations(model, torch.zeros(2, *input_shape))
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any model's failure, other people's too: one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(f"{what} cannot be built for {list(input_shape)} inputs: "
                         f"{type(exc).__name__}: {reason}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(f"{what} answers {got} for a batch of 2 inputs of {list(input_shape)}; "
                         f"a model answers (batch, {num_classes}): one logit per class")
    fits(params, activations)
    return params


def _activations(model: nn.Module, x: torch.Tensor) -> tuple[int, object]:
    """Numbers in the outputs of ``model``'s leaf modules for the input ``x`` (no gradients),
    and the model's output."""
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        for out in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(out, torch.Tensor):
                total += out.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return total, out


def check_sizes(name: str, **sizes) -> None:
    """UsageError unless every option is in its range ({option: (value, low, high)}): a whole
    number where the range is of whole numbers (64.5 is not a width, true is not a count), any
    number where it is of floats."""
    for key, (value, low, high) in sizes.items():
        whole = isinstance(low, int) and isinstance(high, int)
        kind = int if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise UsageError(f"{name}: {key} must be {'a whole number' if whole else 'a number'}"
                             f", got {value!r}")
        if not low <= value <= high:
            raise UsageError(f"{name}: {key} must be in {low}..{high}, got {value!r}")
