"""Backends: which code computes a model's recurrent layers and its training step.

- ``torch``: PyTorch's modules and autograd. Runs everything, everywhere (CPU, GPU, fp32, bf16).
- ``native``: seqmnist's LSTM kernel (``csrc/lstm.c``, see lstm_kernel.py) for the LSTM
  classifiers on x86-64 CPUs with AVX-512 or AVX2, in float32. Same functions as ``torch`` to
  float32 rounding, but it draws dropout masks its own way, so a seed gives other weights.

The backend is decided once, before training (``resolve_backend``: ``auto`` takes ``native``
where it can run, else ``torch``), stored in the run's config, installed onto the model
(``install_backend``), and asked for the training step (``training_step``). The model files do
not know which backend computes them. ``SEQMNIST_LSTM_KERNEL=0`` makes ``auto`` choose ``torch``.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import UsageError
from ..models.recurrent import Recurrent, RecurrentClassifier
from . import lstm_kernel

BACKENDS = ("auto", "torch", "native")  # what computes the LSTM (the choice a run records)


def autocast(device: torch.device, precision: str):
    """bf16 autocast when ``precision`` is "bf16", else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def kernel_disabled() -> bool:
    return os.environ.get("SEQMNIST_LSTM_KERNEL", "1").strip().lower() in ("0", "off", "false",
                                                                            "no")


def native_problem(model: nn.Module | None, device: torch.device | str = "cpu",
                   precision: str = "fp32") -> str | None:
    """Why the native backend cannot run this model here, or None when it can."""
    if model is not None:
        if not isinstance(model, RecurrentClassifier) or model.cell != "lstm":
            return "the LSTM kernel runs LSTM models only"
        if any(m.rnn.bidirectional for m in model.recurrent_layers):
            return "the LSTM kernel does not run bidirectional layers"
        if model.head.out_features > lstm_kernel.MAX_CLASSES:
            return f"the LSTM kernel takes at most {lstm_kernel.MAX_CLASSES} classes"
    if kernel_disabled():
        return "the LSTM kernel is turned off (SEQMNIST_LSTM_KERNEL=0)"
    ok, why = lstm_kernel.status()
    if not ok:
        return f"the LSTM kernel is {why}" if why.startswith("not built") else \
            f"the LSTM kernel cannot run: {why}"
    if torch.device(device).type != "cpu":
        return f"the LSTM kernel runs on the CPU, not on {device}"
    if precision != "fp32":
        return f"the LSTM kernel computes in fp32, not {precision}"
    return None


def resolve_backend(requested: str, model: nn.Module, device: torch.device | str = "cpu",
                    precision: str = "fp32") -> str:
    """``torch`` or ``native`` for ``requested`` (auto, torch or native); raises UsageError
    when ``native`` is asked for and cannot run, saying why."""
    if requested not in BACKENDS:
        raise UsageError(f"unknown backend {requested!r}; choose from {', '.join(BACKENDS)}")
    if requested == "torch":
        return "torch"
    problem = native_problem(model, device, precision)
    if requested == "native" and problem:
        raise UsageError(f"backend native cannot run here: {problem}; use --backend torch")
    return "native" if problem is None else "torch"


def inference_backend(recorded: str, model: nn.Module) -> str:
    """The backend to predict with for a run trained with ``recorded``: the same one where it
    can run here, else ``torch`` (both compute the same function to float32 rounding)."""
    if recorded == "native" and native_problem(model) is None:
        return "native"
    return "torch" if recorded in ("torch", "native") else resolve_backend("auto", model)


def _native_layer(rnn: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    return lstm_kernel.lstm(x, rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0)


def install_backend(model: nn.Module, backend: str) -> nn.Module:
    """Make ``model``'s LSTM layers compute with ``backend`` (torch or native); returns it."""
    if backend not in ("torch", "native"):
        raise UsageError(f"install a resolved backend (torch or native), not {backend!r}")
    for m in model.modules():
        if isinstance(m, Recurrent) and m.cell == "lstm":
            m.kernel = _native_layer if backend == "native" else None
    return model


def installed_backend(model: nn.Module) -> str:
    """The backend the model's LSTM layers compute with (``torch`` for models without any)."""
    return "native" if any(isinstance(m, Recurrent) and m.kernel is not None
                           for m in model.modules()) else "torch"


class TorchStep:
    """One replica's forward and backward with autograd (any model, any device, autocast)."""

    def __init__(self, model: nn.Module, precision: str):
        self.model, self.precision = model, precision

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, total: int):
        with autocast(x.device, self.precision):
            logits = self.model(x)
        # bf16 logits in fp32 (a float64 model keeps float64)
        loss = F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), y,
                               reduction="sum")
        self.model.zero_grad(set_to_none=True)
        (loss / total).backward()
        return loss.detach(), (logits.argmax(-1) == y).sum()


def training_step(model: nn.Module, backend: str, precision: str,
                  generator: torch.Generator | None = None):
    """The object whose ``forward_backward(x, y, total)`` writes the gradients of
    (summed loss / total) into ``model``'s parameters and returns (loss sum, correct)."""
    if backend == "native":
        return lstm_kernel.ClassifierStep([m.rnn for m in model.recurrent_layers], model.head,
                                          model.dropout_rate, generator)
    return TorchStep(model, precision)
