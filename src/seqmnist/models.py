"""Models and their registry: ``create_model(name, input_shape, num_classes, **options)``.

Adding a model is one decorated function. The tutorial presets use Keras's initialisation (Glorot
uniform kernels, orthogonal recurrent kernels, forget-gate bias 1, one bias per gate for LSTM and
SimpleRNN), so the trainable parameter count is Keras's: 36,510 for the LSTM, 3,274,634 for the CNN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import UsageError
from .views import sequence_views


@dataclass
class ModelEntry:
    name: str
    build: Callable[..., nn.Module]
    views: tuple[str, ...]
    defaults: dict = field(default_factory=dict)  # training defaults: lr, view
    description: str = ""


MODELS: dict[str, ModelEntry] = {}
SEQUENCE_VIEWS = sequence_views()


def register_model(name: str, views: tuple[str, ...], description: str = "", **defaults):
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = ModelEntry(name, fn, views, defaults, description or (fn.__doc__ or ""))
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


def set_dropout_generator(model: nn.Module, generator: torch.Generator | None) -> None:
    for m in model.modules():
        if isinstance(m, Dropout):
            m.generator = generator


# ---------------------------------------------------------------------------------------------
# Recurrent models


class Recurrent(nn.Module):
    """One recurrent layer (LSTM, GRU or tanh RNN), returning the sequence or its last step.

    ``kernel`` is how the layer's sequence is computed: ``None`` for PyTorch's module, or a
    function ``kernel(rnn, x) -> (N, T, H)`` that a backend installs (see backends.py). The model
    describes the network; it does not know which kernel computes it."""

    KERAS_NAMES = {"lstm": "LSTM", "gru": "GRU", "rnn": "SimpleRNN"}
    kernel: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None

    def __init__(self, cell: str, in_features: int, hidden: int, bidirectional: bool,
                 return_sequences: bool, keras_init: bool):
        super().__init__()
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.cell, self.hidden, self.return_sequences = cell, hidden, return_sequences
        self.rnn = cls(in_features, hidden, batch_first=True, bidirectional=bidirectional)
        self.keras_name = self.KERAS_NAMES[cell] + (" (bidir.)" if bidirectional else "")
        if keras_init:
            self._keras_init()

    def _keras_init(self) -> None:
        gates = {"lstm": 4, "gru": 3, "rnn": 1}[self.cell]
        for name, p in self.rnn.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p)  # fan_in=features, fan_out=gates*hidden, as Keras
            elif name.startswith("weight_hh"):
                q = torch.empty(self.hidden, gates * self.hidden)  # Keras's kernel layout
                nn.init.orthogonal_(q)
                p.data.copy_(q.t())
            elif name.startswith("bias"):
                nn.init.zeros_(p)
                if self.cell == "lstm" and name.startswith("bias_ih"):
                    p.data[self.hidden:2 * self.hidden] = 1.0  # unit_forget_bias
                if self.cell in ("lstm", "rnn") and name.startswith("bias_hh"):
                    p.requires_grad_(False)  # Keras has one bias per gate: keep this one at zero

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is not None:
            return self.kernel(self.rnn, x)
        return self.rnn(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.sequence(x)
        if self.return_sequences:
            return out
        if self.rnn.bidirectional:  # forward direction ends last, backward direction at step 0
            return torch.cat([out[:, -1, :self.hidden], out[:, 0, self.hidden:]], dim=-1)
        return out[:, -1]


class RecurrentClassifier(nn.Module):
    """Stacked recurrent layers, dropout after each, a dense softmax head (logits out)."""

    def __init__(self, cell: str, input_shape: tuple[int, ...], num_classes: int, hidden: int = 50,
                 layers: int = 2, dropout: float = 0.2, bidirectional: bool = False,
                 keras_init: bool = True):
        super().__init__()
        if len(input_shape) != 2:
            raise UsageError(f"{cell} needs sequence input (steps, features), got {input_shape}")
        if not (1 <= hidden <= 4096 and 1 <= layers <= 64 and 0 <= dropout < 1):
            raise UsageError(f"{cell}: hidden must be 1..4096, layers 1..64 and dropout in "
                             f"[0, 1); got {hidden}, {layers}, {dropout}")
        # Separate one-layer modules (not num_layers=N): Keras's structure, and faster on CPU.
        mods: list[nn.Module] = []
        width = input_shape[1]
        for i in range(layers):
            mods.append(Recurrent(cell, width, hidden, bidirectional, i < layers - 1, keras_init))
            mods.append(Dropout(dropout))
            width = hidden * (2 if bidirectional else 1)
        head = nn.Linear(width, num_classes)
        if keras_init:
            glorot_(head)
        self.net = nn.Sequential(*mods, head)
        self.cell, self.dropout_rate = cell, float(dropout)
        self.last_index = len(mods) - 2  # the last recurrent layer (an index: not a 2nd child)

    @property
    def recurrent_layers(self) -> list[Recurrent]:
        return [m for m in self.net if isinstance(m, Recurrent)]

    @property
    def head(self) -> nn.Linear:
        return self.net[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def forward_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Logits after every step (N, steps, classes): what the model believes row by row."""
        h = x
        for i, m in enumerate(self.net):
            h = m.sequence(h) if i == self.last_index else m(h)
        return h


def glorot_(layer: nn.Module) -> None:
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)


def _recurrent(cell: str):
    def build(input_shape, num_classes, **options):
        return RecurrentClassifier(cell, input_shape, num_classes, **options)
    build.__doc__ = f"2 x {cell.upper()}(50) over rows, dropout 0.2, dense softmax"
    return build


register_model("lstm", SEQUENCE_VIEWS, lr=1e-3, view="rows")(_recurrent("lstm"))
register_model("gru", SEQUENCE_VIEWS, lr=1e-3, view="rows")(_recurrent("gru"))
register_model("rnn", SEQUENCE_VIEWS, lr=1e-3, view="rows")(_recurrent("rnn"))


# ---------------------------------------------------------------------------------------------
# CNN


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


# ---------------------------------------------------------------------------------------------
# Keras-style summary

KERAS_LAYER_NAMES = {nn.Conv2d: "Conv2D", nn.MaxPool2d: "MaxPooling2D", nn.Flatten: "Flatten",
                     nn.Linear: "Dense", nn.Dropout: "Dropout"}


def _layer_name(m: nn.Module) -> str:
    if isinstance(m, Recurrent):
        return m.keras_name
    if isinstance(m, ConvReLU):
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
