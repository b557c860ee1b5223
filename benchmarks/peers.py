"""seqmnist's research models at 784 steps against the models a researcher would write instead,
side by side in one run, same width and depth, one training step (forward, backward, Adam) on a
batch of pixel sequences:

- ``s4d`` and ``lru`` against an S4D layer written as the S4 authors' standalone one is
  (state-spaces/s4, ``models/s4/s4d.py``: complex parameters, the kernel by a complex
  Vandermonde product, FFT convolution, GELU, a 1x1 convolution with GLU) in the backbone of
  their ``example.py`` (encoder, residual blocks with LayerNorm after, mean over the steps,
  decoder); written here from the paper and that description, not copied;
- ``transformer`` against a causal ``nn.TransformerEncoder`` as a user writes it (post-norm
  layers, the causal mask passed as a mask);
- ``lstm`` (the tutorial's 2 x LSTM(50), torch backend) against a plain ``nn.LSTM`` classifier;
- ``tcn``, ``gru``, ``rnn`` and the tutorial's ``cnn`` (on the 28 x 28 image) alone, for their
  cost per step, FLOPs and share of the machine beside the others.

    python benchmarks/peers.py --batch 32 --steps 5

Reports milliseconds per step (median of ``--steps`` after two warm-up steps), FLOPs per step
(PyTorch's FlopCounterMode: matrix products, convolutions and attention; the FFTs of the S4D
layers and the LRU are added analytically at 5 n log2 n per complex transform of length n, half
that per real one, and the fused recurrent layers' gates and fused attention, which it does not
see), and the fraction of this machine's fp32 peak (cores x GHz x 64). The process keeps freed
memory for reuse as ``seqmnist train`` does (for every model alike). Writes
benchmarks/out/peers.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from seqmnist.core.system import keep_freed_memory
from seqmnist.kernels.backends import install_backend
from seqmnist.models.registry import create_model

OUT = Path(__file__).resolve().parent / "out"


class AuthorsStyleS4D(nn.Module):
    """One S4D layer in the authors' standalone form, over (batch, channels, steps)."""

    def __init__(self, d_model: int, d_state: int = 64, dropout: float = 0.1,
                 dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        h, n = d_model, d_state // 2
        log_dt = torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.c = nn.Parameter(torch.view_as_real(torch.randn(h, n, dtype=torch.cfloat)))
        self.log_a_real = nn.Parameter(torch.log(0.5 * torch.ones(h, n)))
        self.a_imag = nn.Parameter(math.pi * torch.arange(n).float().repeat(h, 1))
        self.d = nn.Parameter(torch.randn(h))
        self.activation = nn.GELU()
        self.dropout = nn.Dropout1d(dropout) if dropout > 0 else nn.Identity()
        self.output_linear = nn.Sequential(nn.Conv1d(h, 2 * h, kernel_size=1), nn.GLU(dim=-2))

    def kernel(self, length: int) -> torch.Tensor:
        dt = torch.exp(self.log_dt)
        c = torch.view_as_complex(self.c)
        a = -torch.exp(self.log_a_real) + 1j * self.a_imag
        dt_a = a * dt.unsqueeze(-1)
        powers = dt_a.unsqueeze(-1) * torch.arange(length, device=a.device)
        c = c * (torch.exp(dt_a) - 1.0) / a
        return 2 * torch.einsum("hn,hnl->hl", c, torch.exp(powers)).real

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # (B, H, L)
        length = u.size(-1)
        k_f = torch.fft.rfft(self.kernel(length), n=2 * length)
        u_f = torch.fft.rfft(u, n=2 * length)
        y = torch.fft.irfft(u_f * k_f, n=2 * length)[..., :length]
        y = y + u * self.d.unsqueeze(-1)
        return self.output_linear(self.dropout(self.activation(y)))


class AuthorsStyleBackbone(nn.Module):
    """example.py's model: encoder, residual S4D blocks (post-LayerNorm), mean over steps."""

    def __init__(self, d_input: int = 1, d_output: int = 10, d_model: int = 64,
                 n_layers: int = 4, dropout: float = 0.1):
        super().__init__()
        self.encoder = nn.Linear(d_input, d_model)
        self.s4_layers = nn.ModuleList(AuthorsStyleS4D(d_model, dropout=dropout)
                                       for _ in range(n_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.dropouts = nn.ModuleList(nn.Dropout1d(dropout) for _ in range(n_layers))
        self.decoder = nn.Linear(d_model, d_output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, d_input)
        x = self.encoder(x).transpose(-1, -2)
        for layer, norm, dropout in zip(self.s4_layers, self.norms, self.dropouts):
            z = dropout(layer(x))
            x = norm((z + x).transpose(-1, -2)).transpose(-1, -2)
        return self.decoder(x.transpose(-1, -2).mean(dim=1))


class PlainTransformer(nn.Module):
    """A causal encoder as a user writes it: post-norm layers, the mask as a mask."""

    def __init__(self, steps: int, d_model: int = 64, heads: int = 4, layers: int = 2,
                 ff: int = 128, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Linear(1, d_model)
        self.position = nn.Parameter(torch.randn(1, steps, d_model) * 0.02)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model, heads, ff, dropout, batch_first=True), layers)
        self.head = nn.Linear(d_model, 10)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(steps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x) + self.position, mask=self.mask)
        return self.head(h[:, -1])


class PlainLSTM(nn.Module):
    def __init__(self, hidden: int = 50, layers: int = 2):
        super().__init__()
        self.rnn = nn.LSTM(1, hidden, layers, batch_first=True, dropout=0.2)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def fft_flops(model: nn.Module, batch: int, steps: int) -> float:
    """5 n log2 n per complex FFT of length n = 2 x steps, half that per real one. The authors'
    S4D layer (autograd through rfft and irfft): about 3 x (2 x batch + 1) real transforms per
    channel, forward and backward. seqmnist's S4D and LRU layers (models/fftconv.py: forward u,
    k and the inverse; backward the gradient and two inverses): 2 x (2 x batch + 1) per channel,
    real for S4D, complex over the LRU's states."""
    n = 2 * steps
    full = 5 * n * math.log2(n)
    total = 0.0
    for m in model.modules():
        kind = type(m).__name__
        if kind == "AuthorsStyleS4D":
            total += 3 * (2 * batch + 1) * m.d.numel() * full / 2
        elif kind == "S4DLayer":
            total += 2 * (2 * batch + 1) * m.d.numel() * full / 2
        elif kind == "LRULayer":
            total += 2 * (2 * batch + 1) * m.nu_log.numel() * full
    return total


def rnn_flops(model: nn.Module, batch: int, steps: int) -> float:
    """FlopCounterMode does not see PyTorch's fused recurrent layers: per step and layer, 4 gates
    (LSTM), 3 (GRU) or 1 (RNN) of (input + hidden) x hidden multiply-adds, forward and backward
    (x 3)."""
    total = 0.0
    for m in model.modules():
        gates = 4 if isinstance(m, nn.LSTM) else 3 if isinstance(m, nn.GRU) else \
            1 if isinstance(m, nn.RNN) else 0
        for layer in range(m.num_layers if gates else 0):
            inputs = m.input_size if layer == 0 else m.hidden_size
            total += 3 * 2 * gates * m.hidden_size * (inputs + m.hidden_size) * batch * steps
    return total


def attention_flops(model: nn.Module, batch: int, steps: int, counted: dict) -> float:
    """FlopCounterMode does not count PyTorch's fused attention on a CPU: where no attention
    product was counted, 2 products of 2 x steps^2 x d_model per layer (the causal half skipped
    by the fused kernel is counted too, as the plain encoder's masked product computes it),
    forward and backward (x 3)."""
    if any("bmm" in str(op) or "attention" in str(op) for op in counted):
        return 0.0
    layers = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    return sum(3 * 2 * 2 * batch * steps * steps * m.embed_dim for m in layers)


def step_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple[float, float]:
    from torch.utils.flop_counter import FlopCounterMode

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    counted = counter.get_flop_counts().get("Global", {})
    return statistics.median(times) * 1000, counter.get_total_flops() + fft_flops(
        model, len(x), x.shape[1]) + rnn_flops(model, len(x), x.shape[1]) + attention_flops(
        model, len(x), x.shape[1], counted)


def peak_gflops() -> float:
    mhz = max(float(line.split(":")[1]) for line in open("/proc/cpuinfo") if "MHz" in line)
    return (os.cpu_count() or 1) * mhz / 1000 * 64


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--length", type=int, default=784)
    args = p.parse_args()
    # as `seqmnist train` does; a process setting, so it serves the peers just the same
    keep_freed_memory()
    torch.manual_seed(0)
    length = args.length
    x = torch.rand(args.batch, length, 1)
    y = torch.randint(0, 10, (args.batch,))
    shape = (length, 1)
    pairs = [
        ("s4d", lambda: create_model("s4d", shape, 10), "S4D, authors' form",
         lambda: AuthorsStyleBackbone(d_model=64, n_layers=4)),
        ("lru", lambda: create_model("lru", shape, 10), "S4D, authors' form",
         lambda: AuthorsStyleBackbone(d_model=64, n_layers=4)),
        ("transformer", lambda: create_model("transformer", shape, 10),
         "plain nn.TransformerEncoder", lambda: PlainTransformer(length)),
        ("lstm", lambda: install_backend(create_model("lstm", shape, 10), "torch"),
         "plain nn.LSTM", lambda: PlainLSTM()),
        # no peer named for these: their own cost per step, FLOPs and share of the machine
        ("tcn", lambda: create_model("tcn", shape, 10), None, None),
        ("gru", lambda: create_model("gru", shape, 10), None, None),
        ("rnn", lambda: create_model("rnn", shape, 10), None, None),
        # the tutorial's CNN reads the 28 x 28 image, not 784 steps: for its cost beside them
        ("cnn", lambda: create_model("cnn", (1, 28, 28), 10), None, None),
    ]
    images = torch.rand(args.batch, 1, 28, 28)
    peak = peak_gflops()
    rows = []
    for ours, make_ours, peer, make_peer in pairs:  # measured back to back, same inputs
        ms, flops = step_time(make_ours().train(), images if ours == "cnn" else x, y,
                              args.steps)
        row = dict(model=ours, ms=ms, gflop=flops / 1e9,
                   peak_fraction=flops / (ms / 1000) / (peak * 1e9), peer=peer)
        line = (f"{ours}: {ms:.0f} ms/step ({row['gflop']:.2f} GFLOP, "
                f"{100 * row['peak_fraction']:.1f}% of peak)")
        if make_peer is not None:
            peer_ms, peer_flops = step_time(make_peer().train(), x, y, args.steps)
            row.update(peer_ms=peer_ms, peer_gflop=peer_flops / 1e9,
                       peer_peak_fraction=peer_flops / (peer_ms / 1000) / (peak * 1e9),
                       speedup=peer_ms / ms)
            line += (f"; {peer}: {peer_ms:.0f} ms/step ({row['peer_gflop']:.2f} GFLOP, "
                     f"{100 * row['peer_peak_fraction']:.1f}%); seqmnist {row['speedup']:.2f}x "
                     "faster")
        rows.append(row)
        print(line, flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "peers.json").write_text(json.dumps(dict(
        args=vars(args), cores=os.cpu_count(), peak_fp32_gflops=peak,
        threads=torch.get_num_threads(), rows=rows), indent=2))


if __name__ == "__main__":
    main()
