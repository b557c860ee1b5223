"""Stacked recurrent classifiers: LSTM, GRU and tanh RNN layers, dropout after each, a dense
softmax head. The tutorial's LSTM is ``lstm`` with its defaults (2 x LSTM(50), dropout 0.2)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..core.errors import UsageError
from .checks import check_sizes
from .layers import Dropout, glorot_
from .registry import SEQUENCE_VIEWS, register_model


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
        check_sizes(cell, hidden=(hidden, 1, 4096), layers=(layers, 1, 64),
                    dropout=(dropout, 0.0, 0.99))
        if not isinstance(bidirectional, bool):
            raise UsageError(f"{cell}: bidirectional must be true or false, got {bidirectional!r}")
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
        # a bidirectional stack reads the whole sequence before its first step's answer
        self.answers_every_step = not bidirectional
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

    SHOWN = ("h", "c", "input_gate", "forget_gate", "output_gate", "reset_gate", "update_gate")

    @torch.no_grad()
    def forward_states(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """What each layer holds after every step (the registry's ``states``): its hidden state
        ``layerK.h``, and the cell state and gates where the cell has them, each (N, T, units),
        computed on the layer's own weights one step at a time (forward direction only for a
        bidirectional layer). The next layer reads the whole output, both directions."""
        out: dict[str, list[torch.Tensor]] = {}
        for seq in x:
            for k, layer in enumerate(self.recurrent_layers, 1):
                found = stepwise(layer.cell, layer.rnn, seq)
                for name in self.SHOWN:
                    if name in found:
                        out.setdefault(f"layer{k}.{name}", []).append(found[name])
                seq = layer.rnn(seq[None])[0][0]
        return {k: torch.stack(v) for k, v in out.items()}


def stepwise(kind: str, rnn: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A one-layer nn.LSTM / nn.GRU / nn.RNN run one step at a time on its own weights: its
    hidden state (and cell state, and gates) after every step, for one sequence x (T, F)."""
    w_ih, w_hh = rnn.weight_ih_l0, rnn.weight_hh_l0
    b_ih, b_hh = rnn.bias_ih_l0, rnn.bias_hh_l0
    h = torch.zeros(rnn.hidden_size)
    c = torch.zeros(rnn.hidden_size)
    out: dict[str, list] = {}

    def keep(name, value):
        out.setdefault(name, []).append(value)

    for t in range(x.shape[0]):
        gi = w_ih @ x[t] + b_ih
        gh = w_hh @ h + b_hh
        if kind == "lstm":  # PyTorch's gate order: input, forget, cell, output
            i, f, g, o = (gi + gh).chunk(4)
            i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
            c = f * c + i * g
            h = o * c.tanh()
            keep("input_gate", i), keep("forget_gate", f), keep("output_gate", o)
            keep("c", c)
        elif kind == "gru":  # reset, update, new
            ri, zi, ni = gi.chunk(3)
            rh, zh, nh = gh.chunk(3)
            r, z = (ri + rh).sigmoid(), (zi + zh).sigmoid()
            n = (ni + r * nh).tanh()
            h = (1 - z) * n + z * h
            keep("reset_gate", r), keep("update_gate", z)
        else:
            h = (gi + gh).tanh()
        keep("h", h)
    return {k: torch.stack(v) for k, v in out.items()}


def _recurrent(cell: str):
    def build(input_shape, num_classes, **options):
        return RecurrentClassifier(cell, input_shape, num_classes, **options)
    build.__doc__ = f"2 x {cell.upper()}(50) over rows, dropout 0.2, dense softmax"
    return build


# "fast": larger batches and a one-cycle schedule, tuned on MNIST for the lstm (98.6%+); the gru
# borrows the lstm's, the rnn a lower peak learning rate.
FAST = dict(batch_size=256, epochs=6, lr=8e-3, schedule="onecycle")
for _cell, _fast in (("lstm", FAST), ("gru", FAST), ("rnn", dict(FAST, lr=2e-3))):
    register_model(_cell, SEQUENCE_VIEWS, steps=True, states=True, onnx=True,
                   presets={"fast": _fast}, lr=1e-3, view="rows")(_recurrent(_cell))


