"""Models and their registry: ``create_model(name, input_shape, num_classes, **options)``.

Adding a model is one decorated function (``@register_model``) in a module of this package (or in
your own code). The tutorial's models use Keras's initialisation (Glorot uniform kernels,
orthogonal recurrent kernels, forget-gate bias 1, one bias per gate for LSTM and SimpleRNN), so the
trainable parameter count is Keras's: 36,510 for the LSTM, 3,274,634 for the CNN.

    recurrent.py    LSTM / GRU / tanh RNN stacks (the tutorial's LSTM)
    cnn.py          the tutorial's CNN
    transformer.py  a causal Transformer encoder over the steps
    tcn.py          a temporal convolutional network (dilated causal convolutions)
    s4d.py          diagonal state-space layers (S4D)
    lru.py          the linear recurrent unit (LRU)

Sequence models answer after every step (``forward_steps``): the page's row-by-row belief and the
report's anytime accuracy use it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UsageError
from ..registry import add, origin_of
from ..views import sequence_views


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
    try:
        return MODELS[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}; choose from {', '.join(MODELS)}") from None


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
        return entry.build(tuple(input_shape), num_classes, **options)
    except TypeError as exc:
        raise UsageError(f"model {name!r}: {exc}") from None


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


def check_model(name: str, input_shape: tuple[int, ...], num_classes: int, options: dict,
                batch_size: int = 64) -> int:
    """Check that ``name`` with ``options`` makes a model for ``input_shape`` that fits in this
    machine's memory and to read that input, before anything is written: the model is first laid
    out on PyTorch's meta device (no memory) and its parameters counted (with their gradients
    and Adam's two moments); then it is built, two blank inputs go through it (a kernel that
    does not fit the image, heads that do not divide the width) and its activations are counted
    and scaled to a batch. The caller's random state is left as it was. UsageError naming the
    problem, with the estimate when it is memory. Returns the parameter count."""
    reserved = sorted(set(options) & set(RESERVED_OPTIONS))
    if reserved:
        raise UsageError(f"model {name!r}: {', '.join(reserved)} come from the dataset and the "
                         "view, not from a model option")
    what = f"model {name!r}" + (f" with {options}" if options else "")

    def fits(params: int, activations: int) -> None:
        # activations kept for the backward pass and their gradients, 4 bytes each
        per_batch = activations * batch_size // 2
        _too_big(what, 16 * params + 8 * per_batch,
                 f"{params:,} parameters, {per_batch:,} activations per batch of {batch_size}")

    try:
        with torch.device("meta"):
            layout = create_model(name, input_shape, num_classes, **options)
        params = sum(p.numel() for p in layout.parameters())
        _too_big(what, 16 * params, f"{params:,} parameters")
        try:  # shapes alone, on the meta device: nothing is allocated for a model far too big
            fits(params, _activations(layout, torch.zeros(2, *input_shape, device="meta")))
        except UsageError:
            raise
        except Exception:  # noqa: BLE001 - an operation meta tensors cannot run: counted below
            pass
        with torch.random.fork_rng(devices=[]):
            model = create_model(name, input_shape, num_classes, **options)
            activations = _activations(model, torch.zeros(2, *input_shape))
    except UsageError:
        raise
    except (AssertionError, TypeError, ValueError, RuntimeError, IndexError, ZeroDivisionError,
            OverflowError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UsageError(f"{what} cannot be built for {list(input_shape)} inputs: {reason}"
                         ) from None
    fits(params, activations)
    return params


def _activations(model: nn.Module, x: torch.Tensor) -> int:
    """Numbers in the outputs of ``model``'s leaf modules for the input ``x`` (no gradients)."""
    total = 0

    def count(_module, _inputs, output):
        nonlocal total
        for out in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(out, torch.Tensor):
                total += out.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return total


def trainable_parameters(model: nn.Module) -> int:
    """Parameter count as Keras reports it (frozen zero biases are not parameters there)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Dropout(nn.Dropout):
    """Dropout drawing its mask from its own generator when given one (``generator``), so that
    model replicas trained in parallel threads stay reproducible; else from the global RNG.
    Comparing uniform noise with p is also about twice as fast on CPU as ``bernoulli_``, and the
    mask takes the input's memory layout (the LSTM kernel's time-major output stays so)."""

    generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = torch.empty_like(x).uniform_(generator=self.generator).ge_(self.p)
        return x * mask.mul_(1.0 / (1.0 - self.p))


def draws_from_global_rng(model: nn.Module) -> bool:
    """Whether training ``model`` draws random numbers from PyTorch's process-wide generator
    (dropout other than ``Dropout``'s, attention dropout): such a model trained beside another
    in the same process would not get the draws it gets alone."""
    return any((isinstance(m, nn.Dropout) and not isinstance(m, Dropout) and m.p > 0)
               or (isinstance(m, nn.MultiheadAttention) and m.dropout > 0)
               for m in model.modules())


def set_dropout_generator(model: nn.Module, generator: torch.Generator | None) -> None:
    for m in model.modules():
        if isinstance(m, Dropout):
            m.generator = generator



def glorot_(layer: nn.Module) -> None:
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)


class CausalClassifier(nn.Module):
    """A sequence model that answers after every step: ``encode`` maps (N, T, F) to causal
    features (N, T, d) (step t sees steps 1..t only); the head reads the last step's features,
    and ``forward_steps`` gives the logits after every step."""

    answers_every_step = True  # forward_steps' last step is forward's answer

    def __init__(self, input_shape: tuple[int, ...], width: int, num_classes: int):
        super().__init__()
        if len(input_shape) != 2:
            raise UsageError(f"{type(self).__name__} needs sequence input (steps, features), "
                             f"got {input_shape}")
        self.steps, self.features = input_shape
        self.head = nn.Linear(width, num_classes)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encode(x)[:, -1])

    @torch.no_grad()
    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Logits after every step (N, steps, classes)."""
        return self.head(self.encode(x))


class BlockStack(CausalClassifier):
    """Steps projected to ``d_model``, ``layers`` residual blocks made by ``make_block`` (each
    ``block(x, recurrent)``: a convolution for training, a step-by-step recurrence when asked;
    ``block.states(x)``: the size of its state after every step), a final LayerNorm. The
    convolution is causal, so its output at step t is already the answer
    after t steps: ``forward_steps`` uses it (one pass over the sequence); the recurrence, the
    same numbers one step at a time, is there for streaming (``recurrent=True``)."""

    def __init__(self, input_shape, num_classes: int, d_model: int, layers: int,
                 make_block: Callable[[], nn.Module]):
        super().__init__(input_shape, d_model, num_classes)
        self.embed = nn.Linear(self.features, d_model)
        self.blocks = nn.ModuleList(make_block() for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)

    def encode(self, x: torch.Tensor, recurrent: bool = False) -> torch.Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, recurrent)
        return self.norm(h)

    @torch.no_grad()
    def forward_steps(self, x: torch.Tensor, recurrent: bool = False) -> torch.Tensor:
        """Logits after every step (N, steps, classes): by the causal convolution in one pass,
        or with ``recurrent`` by the step-by-step recurrence (equal up to rounding)."""
        return self.head(self.encode(x, recurrent=recurrent))

    @torch.no_grad()
    def forward_states(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each block's state after every step, ``layerK.state`` (N, T, units): what its
        ``states(x)`` says of the input it reads (the registry's ``states``)."""
        h, out = self.embed(x), {}
        for k, block in enumerate(self.blocks, 1):
            out[f"layer{k}.state"] = block.states(h)
            h = block(h)
        return out


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




# ---------------------------------------------------------------------------------------------
# Keras-style summary

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


# The model modules register themselves when imported (after the registry above exists), in the
# order the command line lists them.
for _module in ("recurrent", "cnn", "transformer", "tcn", "s4d", "lru"):
    importlib.import_module(f".{_module}", __name__)
from .cnn import CNN, ConvReLU  # noqa: E402, F401
from .recurrent import Recurrent, RecurrentClassifier  # noqa: E402, F401
