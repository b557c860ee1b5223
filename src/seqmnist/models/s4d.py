"""Diagonal state-space layers (S4D).

Gu, Gupta, Goel, Re 2022, "On the parameterization and initialization of diagonal state space
models": each of ``d_model`` channels is a linear state-space model with a diagonal complex state
matrix A (S4D-Lin initialisation: A_n = -1/2 + i pi n), discretised with a learned step dt (zero-order
hold). Training computes the layer as one long causal convolution through the FFT; the same layer
is also a recurrence (``recurrent``), which answers step by step and is tested to give the same
outputs. Blocks are pre-norm residual: LayerNorm, S4D, GELU, dropout, a linear mix of channels.
The S4 paper's Table 6 reports S4 at 99.63% sMNIST and 98.70% pMNIST with larger models (d_model
up to 256, 4-6 layers) on GPUs; the defaults here (4 layers, d_model 64, 32 complex states per
channel: about 60k parameters) are sized for a CPU.
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


class S4DLayer(nn.Module):
    def __init__(self, channels: int, states: int = 32, dt_min: float = 1e-3, dt_max: float = 0.1):
        super().__init__()
        log_dt = torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.log_a_real = nn.Parameter(torch.full((channels, states), math.log(0.5)))
        self.a_imag = nn.Parameter(math.pi * torch.arange(states).float().repeat(channels, 1))
        self.c = nn.Parameter(torch.randn(channels, states, 2) * (0.5 ** 0.5))
        self.d = nn.Parameter(torch.randn(channels))

    def _discrete(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(dt A, C') with C' = C (exp(dt A) - 1) / A: the zero-order-hold discretisation."""
        a = torch.complex(-torch.exp(self.log_a_real), self.a_imag)
        dta = a * torch.exp(self.log_dt)[:, None]
        return dta, torch.view_as_complex(self.c) * (torch.exp(dta) - 1.0) / a

    def kernel(self, steps: int) -> torch.Tensor:
        """The convolution kernel (channels, steps): K_l = 2 Re(sum_n C'_n exp(dt A_n l)), and
        D at l = 0 (the skip connection D u_t is the kernel's first tap).

        A two-level Vandermonde product in real arithmetic: with l = w m + j (w about
        sqrt(steps)), exp(dt A l) = exp(dt A j) exp(dt A w m), so K reshaped to (blocks, w) is
        Re((exp(dt A w m))_{m,n} (C'_n exp(dt A j))_{n,j}): one batched product of
        (H, blocks, 2N) by (H, 2N, w). Only 2 sqrt(steps) powers per state are computed (exp,
        cos, sin), not steps of them: at 784 steps the kernel's forward and backward took 26 ms
        per layer the direct way and 4 ms this way (BENCHMARKS.md section 19)."""
        dta, c = self._discrete()
        width = math.isqrt(max(steps - 1, 0)) + 1
        blocks = -(-steps // width)
        pr, pi = exp_powers(dta, torch.arange(width, device=dta.device, dtype=dta.real.dtype))
        qr, qi = exp_powers(dta, width * torch.arange(blocks, device=dta.device,
                                                   dtype=dta.real.dtype))
        # C' exp(dt A j) as real and imaginary parts (H, N, w); Re(q a) = qr ar - qi ai
        ar = c.real[..., None] * pr - c.imag[..., None] * pi
        ai = c.real[..., None] * pi + c.imag[..., None] * pr
        left = torch.cat([qr, -qi], dim=1).transpose(1, 2)  # (H, blocks, 2N)
        k = 2 * torch.bmm(left, torch.cat([ar, ai], dim=1)).reshape(dta.shape[0], -1)[:, :steps]
        return torch.cat([k[:, :1] + self.d[:, None], k[:, 1:]], dim=1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # (N, T, H), by FFT convolution
        return causal_conv(u, self.kernel(u.shape[1]))

    def _scan(self, u: torch.Tensor):
        """The state after each step, x_t = exp(dt A) x_{t-1} + u_t: (t, x_t) for every step."""
        dta, _ = self._discrete()
        decay = torch.exp(dta)
        x = torch.zeros(u.shape[0], *decay.shape, dtype=decay.dtype, device=u.device)
        for t in range(u.shape[1]):
            x = decay * x + u[:, t, :, None]
            yield t, x

    def recurrent(self, u: torch.Tensor) -> torch.Tensor:
        """The same layer as a recurrence, one step at a time: y_t = 2 Re(C' x_t) + D u_t."""
        _, c = self._discrete()
        return torch.stack([2 * (x * c).sum(-1).real + u[:, t] * self.d
                            for t, x in self._scan(u)], 1)

    @torch.no_grad()
    def states(self, u: torch.Tensor) -> torch.Tensor:
        """The size of the state after every step, per channel: |x_t| over its states (N, T, H),
        from the same recurrence."""
        return torch.stack([x.abs().pow(2).sum(-1).sqrt() for _, x in self._scan(u)], 1)


class S4DBlock(nn.Module):
    def __init__(self, channels: int, states: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.ssm = S4DLayer(channels, states)
        self.drop = Dropout(dropout)  # its own generator per replica: reproducible in threads
        self.mix = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, recurrent: bool = False) -> torch.Tensor:
        z = self.norm(x)
        z = self.ssm.recurrent(z) if recurrent else self.ssm(z)
        return x + self.mix(self.drop(F.gelu(z)))

    def states(self, x: torch.Tensor) -> torch.Tensor:
        return self.ssm.states(self.norm(x))


class S4D(BlockStack):
    def __init__(self, input_shape, num_classes: int, d_model: int = 64, layers: int = 4,
                 states: int = 32, dropout: float = 0.1):
        check_sizes("s4d", d_model=(d_model, 1, 4096), layers=(layers, 1, 64),
                    states=(states, 1, 4096), dropout=(dropout, 0, 0.99))
        super().__init__(input_shape, num_classes, d_model, layers,
                         lambda: S4DBlock(d_model, states, dropout))


@register_model("s4d", SEQUENCE_VIEWS, steps=True, states=True, lr=2e-3, view="rows")
def s4d(input_shape, num_classes, **options) -> nn.Module:
    """Diagonal state-space model S4D (Gu et al. 2022): 4 layers, d_model 64."""
    return S4D(input_shape, num_classes, **options)
