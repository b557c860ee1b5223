"""Causal convolution of long sequences by FFT, with its own backward pass.

``causal_conv(u, k)``: y_t = sum_{s <= t} k_{t-s} u_s for every channel, u (N, T, C) and k (C, T),
real or complex, as S4D and the LRU compute their layers for training. Written out as
``irfft(rfft(u) * rfft(k))`` autograd differentiates the forward transform of u by padding its
gradient to the full spectrum and running a complex transform twice the size of the real one
(with a zero fill and a copy of that size): at 784 steps that was a third of an S4D training step
(torch.profiler). The gradients of a convolution are correlations, which the same transforms give
directly: grad_u = irfft(rfft(g) conj(rfft(k))), grad_k = irfft(sum over the batch of
rfft(g) conj(rfft(u))), both cut to the first T steps (the zero padding to 2T makes the circular
correlation a linear one). Tested against autograd's own with ``torch.autograd.gradcheck``.
"""

from __future__ import annotations

import torch


def exp_powers(rate: torch.Tensor, times: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(rate t) for complex rates (any shape) and real times, as (real, imaginary) parts of
    shape (*rate.shape, len(times)): exp(Re) (cos Im, sin Im), which PyTorch vectorises on a CPU
    (its complex exp it does not). The state-space layers' kernels are such powers."""
    decay = torch.exp(rate.real[..., None] * times)
    angle = rate.imag[..., None] * times
    return decay * torch.cos(angle), decay * torch.sin(angle)


def _transforms(complex_: bool):
    return (torch.fft.fft, torch.fft.ifft) if complex_ else (torch.fft.rfft, torch.fft.irfft)


class _CausalConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        steps, n = u.shape[1], 2 * u.shape[1]
        forward, inverse = _transforms(u.is_complex())
        uf = forward(u.transpose(1, 2), n=n)  # (N, C, frequencies)
        kf = forward(k, n=n)
        ctx.save_for_backward(uf, kf)
        ctx.steps, ctx.complex = steps, u.is_complex()
        return inverse(uf * kf, n=n)[..., :steps].transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        uf, kf = ctx.saved_tensors
        steps, n = ctx.steps, 2 * ctx.steps
        forward, inverse = _transforms(ctx.complex)
        gf = forward(grad.transpose(1, 2), n=n)
        grad_u = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_u = inverse(gf * kf.conj(), n=n)[..., :steps].transpose(1, 2).contiguous()
        if ctx.needs_input_grad[1]:
            grad_k = inverse((gf * uf.conj()).sum(0), n=n)[..., :steps]
        return grad_u, grad_k


def causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y (N, T, C) with y_t = sum_{s <= t} k_{t-s} u_s per channel, for u (N, T, C) and k (C, T),
    both real or both complex."""
    if u.is_complex() != k.is_complex():
        raise ValueError("causal_conv takes u and k both real or both complex")
    return _CausalConv.apply(u, k)
