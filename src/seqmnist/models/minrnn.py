"""minGRU and minLSTM.

Feng, Tung, Ahmed, Bengio, Hajimirsadeghi 2024, "Were RNNs All We Needed?": a GRU and an LSTM
whose gates depend on the input only, not on the previous state, so that the whole sequence's
states come from one parallel scan instead of a loop over the steps:

- minGRU: z_t = sigmoid(W_z x_t), h~_t = g(W_h x_t), h_t = (1 - z_t) h_{t-1} + z_t h~_t;
- minLSTM: f_t = sigmoid(W_f x_t), i_t = sigmoid(W_i x_t), normalised to f'_t = f_t / (f_t + i_t)
  and i'_t = i_t / (f_t + i_t), h~_t = g(W_h x_t), h_t = f'_t h_{t-1} + i'_t h~_t;

with g(x) = x + 1/2 for x >= 0 and sigmoid(x) below (positive, so the states stay positive and
the scan can run on their logarithms). Training runs the scan in log space, as the paper does:
log h_t = a_t + logcumsumexp_s(log v_s - a_s), where a_t is the running sum of the log
coefficients (log(1 - z), log f') and log v_s = log z_s + log h~_s; answering step by step
(``recurrent``) is the plain recurrence, tested equal in float64. The paper stacks these layers
with residual connections and normalisation; here each block is pre-norm, the layer's states
(``expansion`` x d_model of them) mixed back to d_model by a GLU, as the LRU's blocks are, and
the gates' biases start from the chrono initialisation (Tallec & Ollivier 2018; seqmnist's
choice: with zero biases a state keeps half of itself per step; two epochs on the 2,000-image
fixture reached 39% (minGRU) and 44% (minLSTM) with zero biases, 50% and 59% with these, where
the LRU reaches 75%). The defaults (3 layers, d_model 64, 128 states:
about 100k parameters) are sized for a CPU.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .checks import check_sizes
from .layers import BlockStack, Dropout
from .registry import SEQUENCE_VIEWS, register_model


def g(x: torch.Tensor) -> torch.Tensor:
    """The paper's positive activation for the candidate state."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: torch.Tensor) -> torch.Tensor:
    """log g(x), computed without taking the log of a small number."""
    return torch.where(x >= 0, (F.relu(x) + 0.5).log(), F.logsigmoid(x))


def log_scan(log_coeffs: torch.Tensor, log_values: torch.Tensor) -> torch.Tensor:
    """h_t = c_t h_{t-1} + v_t from h_0 = 0 over dim 1, for positive c and v given as logs:
    h_t = sum_{s<=t} exp(a_t - a_s) v_s with a_t = sum_{r<=t} log c_r, computed as one
    cumulative sum and one cumulative log-sum-exp (a parallel scan)."""
    a = torch.cumsum(log_coeffs, dim=1)
    return torch.exp(a + torch.logcumsumexp(log_values - a, dim=1))


class MinRNNLayer(nn.Module):
    """A minGRU (``kind="gru"``) or minLSTM (``kind="lstm"``) layer over (N, T, channels)."""

    def __init__(self, channels: int, states: int, kind: str, steps: int = 28):
        super().__init__()
        self.kind = kind
        gates = 1 if kind == "gru" else 2
        self.proj = nn.Linear(channels, (gates + 1) * states)  # the gates' and h~'s inputs
        # Chrono initialisation (Tallec & Ollivier 2018): each state starts out taking in about
        # 1/T of a new input per step, T drawn from 1..steps, so that it remembers on the scale
        # of the sequence (with zero biases it would keep half of itself per step).
        with torch.no_grad():
            memory = torch.empty(states).uniform_(1, max(steps, 2))
            take = -torch.log(memory)  # the input gate's bias: sigmoid(take) ~ 1/T
            if kind == "gru":
                self.proj.bias[:states] = take
            else:  # f ~ 1 and i ~ 1/T: f' ~ 1 - 1/T, i' ~ 1/T
                self.proj.bias[:states] = torch.log(memory)
                self.proj.bias[states:2 * states] = take

    def _parts(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.proj(x).chunk(2 if self.kind == "gru" else 3, dim=-1))

    def _logs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log coefficient, log input) of every step: what the scan needs."""
        if self.kind == "gru":
            k, h = self._parts(x)
            return F.logsigmoid(-k), F.logsigmoid(k) + log_g(h)  # log(1 - z), log z + log h~
        f, i, h = self._parts(x)
        diff = F.logsigmoid(i) - F.logsigmoid(f)  # log i - log f
        return F.logsigmoid(-diff), F.logsigmoid(diff) + log_g(h)  # log f', log i' + log h~

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The states after every step (N, T, states): by the parallel scan in log space when
        training; answering without gradients on a CPU, by the recurrence (the same numbers,
        measured 2.4x faster there at 784 steps: no log or exp per element)."""
        if not torch.is_grad_enabled() and x.device.type == "cpu":
            return self.recurrent(x)
        return self.scan(x)

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """The states after every step by the parallel scan in log space (the paper's way)."""
        return log_scan(*self._logs(x))

    def recurrent(self, x: torch.Tensor) -> torch.Tensor:
        """The same states one step at a time: the plain recurrence (tested equal to the scan)."""
        if self.kind == "gru":
            k, h = self._parts(x)
            keep, take = 1 - torch.sigmoid(k), torch.sigmoid(k)
        else:
            f, i, h = self._parts(x)
            f, i = torch.sigmoid(f), torch.sigmoid(i)
            keep, take = f / (f + i), i / (f + i)
        inputs = take * g(h)
        if torch.is_grad_enabled():  # a graph through every step: no writing in place
            state, out = torch.zeros_like(inputs[:, 0]), []
            for t in range(x.shape[1]):
                state = keep[:, t] * state + inputs[:, t]
                out.append(state)
            return torch.stack(out, 1)
        out = torch.empty_like(inputs, memory_format=torch.contiguous_format)
        out[:, :1] = inputs[:, :1]  # h_1 = i_1 (h_0 = 0)
        for t in range(1, x.shape[1]):
            torch.addcmul(inputs[:, t], keep[:, t], out[:, t - 1], out=out[:, t])
        return out


class MinRNNBlock(nn.Module):
    def __init__(self, channels: int, states: int, kind: str, dropout: float, steps: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.rnn = MinRNNLayer(channels, states, kind, steps)
        self.mix = nn.Linear(states, 2 * channels)  # GLU back to the model's width
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, recurrent: bool = False) -> torch.Tensor:
        z = self.norm(x)
        h = self.rnn.recurrent(z) if recurrent else self.rnn(z)
        return x + self.drop(F.glu(self.mix(h), dim=-1))

    @torch.no_grad()
    def states(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.norm(x))


class MinRNN(BlockStack):
    def __init__(self, input_shape, num_classes: int, kind: str, d_model: int = 64,
                 layers: int = 3, expansion: int = 2, dropout: float = 0.1):
        check_sizes(f"min{kind}", d_model=(d_model, 1, 4096), layers=(layers, 1, 64),
                    expansion=(expansion, 1, 16), dropout=(dropout, 0, 0.99))
        super().__init__(input_shape, num_classes, d_model, layers,
                         lambda: MinRNNBlock(d_model, expansion * d_model, kind, dropout,
                                             input_shape[0]))


@register_model("mingru", SEQUENCE_VIEWS, steps=True, states=True, lr=2e-3, view="rows")
def mingru(input_shape, num_classes, **options) -> nn.Module:
    """minGRU (Feng et al. 2024): input-only gates, trained by a parallel scan; 3 layers,
    d_model 64, 128 states."""
    return MinRNN(input_shape, num_classes, "gru", **options)


@register_model("minlstm", SEQUENCE_VIEWS, steps=True, states=True, lr=2e-3, view="rows")
def minlstm(input_shape, num_classes, **options) -> nn.Module:
    """minLSTM (Feng et al. 2024): input-only, normalised forget and input gates, trained by a
    parallel scan; 3 layers, d_model 64, 128 states."""
    return MinRNN(input_shape, num_classes, "lstm", **options)
