"""The linear recurrent unit (LRU).

Orvieto, Smith, Gu, Fernando, Gulcehre, Pascanu, De 2023, "Resurrecting recurrent neural networks
for long sequences": a linear recurrence with a complex diagonal state matrix, exponentially
parameterised on a ring of the unit disc (eigenvalue modulus initialised in [r_min, r_max]),
normalised input (gamma = sqrt(1 - |lambda|^2)), h_t = lambda * h_{t-1} + gamma * (B u_t),
y_t = Re(C h_t) + D u_t, in pre-norm residual blocks with a GLU mix of channels. The paper trains
deeper and wider models (6 layers, d_model 256 and more) on GPUs for its long-range benchmarks;
the defaults here (4 layers, d_model 64, 64 states: about 100k parameters) are sized for a CPU.
seqmnist lists no published sMNIST figure for the LRU (none was checked against the paper).
Training computes the recurrence as an FFT convolution of each state's own geometric kernel
(it is linear and time-invariant); ``recurrent`` steps it and is tested to agree.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .checks import check_sizes
from .fftconv import causal_conv, exp_powers
from .layers import BlockStack, Dropout
from .registry import SEQUENCE_VIEWS, register_model


class LRULayer(nn.Module):
    def __init__(self, channels: int, states: int, r_min: float = 0.9, r_max: float = 0.999,
                 max_phase: float = 2 * math.pi):
        super().__init__()
        u1, u2 = torch.rand(states), torch.rand(states)
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(u1 * (r_max ** 2 - r_min ** 2)
                                                              + r_min ** 2)))
        self.theta_log = nn.Parameter(torch.log(max_phase * u2))
        modulus = torch.exp(-torch.exp(self.nu_log.detach()))
        self.gamma_log = nn.Parameter(torch.log(torch.sqrt(1 - modulus ** 2)))
        self.b = nn.Parameter(torch.randn(states, channels, 2) / math.sqrt(2 * channels))
        self.c = nn.Parameter(torch.randn(channels, states, 2) / math.sqrt(states))
        self.d = nn.Parameter(torch.randn(channels))

    def _log_lambda(self) -> torch.Tensor:
        return torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log))

    def _lambda(self) -> torch.Tensor:
        return torch.exp(self._log_lambda())

    def _inputs(self, u: torch.Tensor) -> torch.Tensor:
        """gamma B u_t for every step, complex (N, T, states): one real matrix product whose
        output columns are each state's real and imaginary parts side by side, read as complex
        numbers without a copy (a complex product would first make u complex: 4x the work)."""
        b = self.b * torch.exp(self.gamma_log)[:, None, None]  # (states, H, 2)
        v = u @ b.permute(0, 2, 1).reshape(-1, b.shape[1]).T  # (N, T, 2 states)
        return torch.view_as_complex(v.unflatten(-1, (-1, 2)))

    def _outputs(self, h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Re(C h_t) + D u_t for complex states h (N, T, states): one real matrix product over
        each state's real and imaginary parts, Re(c h) = Re c Re h - Im c Im h."""
        weight = torch.stack([self.c[..., 0], -self.c[..., 1]], -1).flatten(1)  # (H, 2 states)
        return torch.view_as_real(h).flatten(-2) @ weight.T + u * self.d

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # (N, T, H)
        """Each state's recurrence as a causal FFT convolution with its kernel lambda^k."""
        kernel = torch.complex(*exp_powers(self._log_lambda(), torch.arange(
            u.shape[1], device=u.device, dtype=u.dtype)))  # lambda^k, (states, T)
        return self._outputs(causal_conv(self._inputs(u), kernel), u)

    def _scan(self, u: torch.Tensor):
        """The state after each step, h_t = lambda h_{t-1} + gamma B u_t, one step at a time."""
        lam, v = self._lambda(), self._inputs(u)
        h = torch.zeros(u.shape[0], lam.shape[0], dtype=lam.dtype, device=u.device)
        for t in range(u.shape[1]):
            h = lam * h + v[:, t]
            yield h

    def recurrent(self, u: torch.Tensor) -> torch.Tensor:
        """The same layer as a recurrence, one step at a time (tested equal to ``forward``)."""
        return self._outputs(torch.stack(list(self._scan(u)), 1), u)

    @torch.no_grad()
    def states(self, u: torch.Tensor) -> torch.Tensor:
        """The size of each state after every step: |h_t| (N, T, states), from the recurrence."""
        return torch.stack([h.abs() for h in self._scan(u)], 1)


class LRUBlock(nn.Module):
    def __init__(self, channels: int, states: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.lru = LRULayer(channels, states)
        self.mix = nn.Linear(channels, 2 * channels)  # GLU
        self.drop = Dropout(dropout)  # its own generator per replica: reproducible in threads

    def forward(self, x: torch.Tensor, recurrent: bool = False) -> torch.Tensor:
        z = self.norm(x)
        z = self.lru.recurrent(z) if recurrent else self.lru(z)
        return x + self.drop(F.glu(self.mix(F.gelu(z)), dim=-1))

    def states(self, x: torch.Tensor) -> torch.Tensor:
        return self.lru.states(self.norm(x))


class LRU(BlockStack):
    def __init__(self, input_shape, num_classes: int, d_model: int = 64, layers: int = 4,
                 states: int = 64, dropout: float = 0.1):
        check_sizes("lru", d_model=(d_model, 1, 4096), layers=(layers, 1, 64),
                    states=(states, 1, 4096), dropout=(dropout, 0, 0.99))
        super().__init__(input_shape, num_classes, d_model, layers,
                         lambda: LRUBlock(d_model, states, dropout))


@register_model("lru", SEQUENCE_VIEWS, steps=True, states=True, lr=2e-3, view="rows")
def lru(input_shape, num_classes, **options) -> nn.Module:
    """Linear recurrent unit (Orvieto et al. 2023): 4 layers, d_model 64, 64 states."""
    return LRU(input_shape, num_classes, **options)
