"""The model registry: ``register_model`` (one decorated function per model), ``create_model``,
and the entry that says what each model can do; code asks the entry, never the model object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..core.errors import UsageError
from ..core.registry import add, lookup, origin_of
from ..data.views import sequence_views


@dataclass
class ModelEntry:
    """A registered model and what it can do; code asks these, never the model object."""

    name: str
    build: Callable[..., nn.Module]
    views: tuple[str, ...]  # the views it reads
    defaults: dict = field(default_factory=dict)  # training defaults: lr, view
    description: str = ""
    steps: bool = False  # answers after every step (forward_steps): belief, anytime, explain
    states: bool = False  # says what it holds after every step (forward_states): the explainer
    onnx: bool = False  # exports to ONNX (checked with onnxruntime)
    presets: dict[str, dict] = field(default_factory=dict)  # preset name -> its recipe here

MODELS: dict[str, ModelEntry] = {}

SEQUENCE_VIEWS = sequence_views()


def register_model(name: str, views: tuple[str, ...], description: str = "", *,
                   steps: bool = False, states: bool = False, onnx: bool = False,
                   presets: dict[str, dict] | None = None, replace: bool = False, **defaults):
    """Register ``fn(input_shape, num_classes, **options) -> nn.Module`` as model ``name``:
    the views it reads; whether it answers after every step (``steps``: it then has
    ``forward_steps(x) -> (N, T, classes)``); whether it says what it holds after every step
    (``states``: it then has ``forward_states(x) -> {name: (N, T, units)}``, a name ending in
    ``.attention`` holding (N, T, T) weights over the steps read so far: the explainer and the
    page draw whatever it returns); whether it exports to ONNX; its recipe under each preset
    (``presets``, e.g. ``{"fast": dict(batch_size=256, epochs=6)}``); training defaults (lr,
    view). A name already registered is an error naming both places, unless ``replace=True``."""
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        add(MODELS, name, ModelEntry(name, fn, views, defaults, description or (fn.__doc__ or ""),
                                     steps, states, onnx, dict(presets or {})),
            "model", origin_of(fn), replace)
        return fn
    return wrap


def list_models() -> list[str]:
    return list(MODELS)


def get_entry(name: str) -> ModelEntry:
    return lookup(MODELS, name, "model")


def check_view(model: str, view: str) -> None:
    entry = get_entry(model)
    if view not in entry.views:
        raise UsageError(f"model {model!r} cannot read the {view!r} view; "
                         f"it takes {', '.join(entry.views)}")


def create_model(name: str, input_shape: tuple[int, ...] = (28, 28), num_classes: int = 10,
                 **options) -> nn.Module:
    """Build a registered model for inputs of ``input_shape`` (per sample) and ``num_classes``."""
    entry = get_entry(name)
    try:
        model = entry.build(tuple(input_shape), num_classes, **options)
    except TypeError as exc:
        raise UsageError(f"model {name!r}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"model {name!r}: its factory returned {type(model).__name__}, not a "
                         "torch.nn.Module")
    return model
