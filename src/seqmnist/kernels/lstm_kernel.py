"""seqmnist's own LSTM for x86-64 CPUs with AVX-512 or AVX2 (``csrc/lstm.c``), from Python.

PyTorch's ``nn.LSTM`` on CPU runs oneDNN's RNN kernels, which at this size (50 units, batch 32-64,
28 steps) spend much of their time on per-step and per-operation overheads. The kernel runs each
step as register-blocked products (the input and recurrent projections) followed by the gate maths
on the same rows while they are in L1; the backward pass also accumulates the weight gradients step
by step. Two entry points:

- ``lstm(x, w_ih, w_hh, b_ih, b_hh)``: one layer as an autograd function (evaluation, the web page);
- ``ClassifierStep``: a whole training step of a stack of LSTM layers with dropout, a dense head
  and softmax cross-entropy (forward and backward) in a handful of C calls, with no autograd graph
  and no allocations.

This module knows tensors, not models: ``backends.py`` decides when it runs and hands it the
layers. Every call is checked here before any pointer reaches C (shapes, dtypes, devices, label
range), so a wrong call raises ``KernelInputError`` instead of reading or writing out of bounds.
The library is plain C loaded with ctypes (which releases the GIL during calls); it is optional.
"""

from __future__ import annotations

import ctypes
import os
import sys
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch

from ..core.errors import KernelInputError

_P, _I, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
LIBRARY = Path(__file__).with_name(
    "libseqmnist_lstm" + (".dylib" if sys.platform == "darwin" else ".so"))
ISAS = {2: "avx512", 1: "avx2"}
CODES = {name: code for code, name in ISAS.items()}
# The most the kernel may use: "avx2" runs its AVX2 code on an AVX-512 CPU (to test or measure it)
ISA_VARIABLE = "SEQMNIST_LSTM_ISA"
MAX_CLASSES = 256  # the dense layer's logits live on the C stack


@cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """(the library, '') or (None, why not)."""
    if not LIBRARY.is_file():
        return None, f"not built ({LIBRARY.name} is missing: no C compiler at install time?)"
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError as exc:
        return None, f"cannot be loaded ({exc})"
    isa = lib.seqmnist_lstm_isa()
    if isa not in ISAS:
        return None, "this CPU has neither AVX-512 nor AVX2 with FMA"
    asked = os.environ.get(ISA_VARIABLE, "").strip().lower()
    if asked:
        if asked not in CODES:
            return None, f"{ISA_VARIABLE}={asked} is not an instruction set: give avx2 or avx512"
        if not hasattr(lib, "seqmnist_lstm_limit_isa"):
            return None, f"built before {ISA_VARIABLE} existed: reinstall seqmnist to rebuild it"
        lib.seqmnist_lstm_limit_isa(CODES[asked])
    signatures = {
        "seqmnist_lstm_forward": [_I] * 4 + [_P, _I] + [_P] * 9,
        "seqmnist_lstm_backward": [_I] * 4 + [_P, _I] + [_P] * 13,
        "seqmnist_dropout": [_L, ctypes.c_float, ctypes.c_ulonglong, _P, _P, _P],
        "seqmnist_dense_softmax_ce": [_I, _I, _I, _P, _P, _P, _P, ctypes.c_float, _P, _P, _P,
                                      _P],
    }
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, None
    lib.seqmnist_dense_softmax_ce.restype = ctypes.c_double
    return lib, ""


def _library() -> ctypes.CDLL:
    lib, reason = _load()
    if lib is None:
        raise KernelInputError(f"seqmnist's LSTM kernel is not available: {reason}")
    return lib


def status() -> tuple[bool, str]:
    """(True, the instruction set it runs) when the kernel can run here, else (False, the
    reason)."""
    lib, reason = _load()
    if lib is None:
        return False, reason
    return True, ISAS[lib.seqmnist_lstm_limit_isa(0) if hasattr(lib, "seqmnist_lstm_limit_isa")
                      else lib.seqmnist_lstm_isa()]


@contextmanager
def limited_isa(name: str):
    """Within the block the kernel runs at most instruction set ``name`` (avx2 or avx512) in
    every thread; the one it ran before afterwards. Yields the set now in use."""
    lib = _library()
    before = lib.seqmnist_lstm_limit_isa(0)
    try:
        yield ISAS[lib.seqmnist_lstm_limit_isa(CODES[name])]
    finally:
        lib.seqmnist_lstm_limit_isa(before)  # at most what it ran before: exactly that


def available() -> bool:
    """Whether the compiled kernel is present and this CPU can run it."""
    return _load()[0] is not None


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _check_tensor(name: str, t, dims: int, dtype: torch.dtype = torch.float32) -> None:
    if not isinstance(t, torch.Tensor):
        raise KernelInputError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dim() != dims:
        raise KernelInputError(f"{name} must have {dims} dimensions, got shape {tuple(t.shape)}")
    if t.dtype != dtype:
        raise KernelInputError(f"{name} must be {dtype}, got {t.dtype}")
    if t.device.type != "cpu":
        raise KernelInputError(f"{name} must be on the CPU, got {t.device}")


def check_lstm_weights(w_ih, w_hh, b_ih, b_hh) -> tuple[int, int]:
    """(input features, hidden units) of one LSTM layer's parameters, after checking them."""
    for name, t, dims in (("w_ih", w_ih, 2), ("w_hh", w_hh, 2), ("b_ih", b_ih, 1),
                          ("b_hh", b_hh, 1)):
        _check_tensor(name, t, dims)
    gates, features = w_ih.shape
    hidden = gates // 4
    if gates == 0 or gates % 4 or features == 0:
        raise KernelInputError(f"w_ih must be (4 H, I) with H, I >= 1, got {tuple(w_ih.shape)}")
    for name, t, shape in (("w_hh", w_hh, (gates, hidden)), ("b_ih", b_ih, (gates,)),
                           ("b_hh", b_hh, (gates,))):
        if tuple(t.shape) != shape:
            raise KernelInputError(f"{name} must be {shape} for {hidden} hidden units, "
                                   f"got {tuple(t.shape)}")
    return features, hidden


def check_sequence(x, features: int) -> tuple[int, int]:
    """(batch, steps) of an input (N, T, features), after checking it."""
    _check_tensor("x", x, 3)
    n, steps, got = x.shape
    if n == 0 or steps == 0:
        raise KernelInputError(f"x must hold at least one step of one sample, got {tuple(x.shape)}")
    if got != features:
        raise KernelInputError(f"x has {got} features per step but the weights expect {features}")
    return n, steps


def _kernel_input(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """x (N, T, F) as the kernel reads it: time-major memory as is (the output of a previous
    kernel LSTM, through dropout), else batch-first contiguous; and the batch-first flag."""
    time_major = x.transpose(0, 1)
    if time_major.is_contiguous():
        return time_major, 0
    return x.contiguous(), 1


def _work_size(features: int, hidden: int, n: int) -> int:
    """Floats of scratch for the forward, the backward and the weights transposed."""
    return (features + hidden) * 4 * hidden + n * 4 * hidden + 2 * n * hidden + 4 * hidden


class _LSTM(torch.autograd.Function):
    """The kernel's outputs are time-major (T, N, ...): each step's rows are contiguous. The
    output is a (N, T, H) view of that memory; element-wise layers after it (dropout) keep the
    layout, so the next LSTM reads it without a copy."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh):
        # every tensor whose address goes to C is held in a variable for the whole call
        features, hidden = check_lstm_weights(w_ih, w_hh, b_ih, b_hh)
        n, steps = check_sequence(x, features)
        x_in, batch_first = _kernel_input(x)
        w_ih, w_hh, b_ih, b_hh = (t.contiguous() for t in (w_ih, w_hh, b_ih, b_hh))
        work = x.new_empty(_work_size(features, hidden, n))
        act = x.new_empty(steps, n, 4 * hidden)
        c, tc, h = (x.new_empty(steps, n, hidden) for _ in range(3))
        _library().seqmnist_lstm_forward(
            n, steps, features, hidden, _ptr(x_in), batch_first, _ptr(w_ih), _ptr(w_hh),
            _ptr(b_ih), _ptr(b_hh), _ptr(work), _ptr(act), _ptr(c), _ptr(tc), _ptr(h))
        ctx.save_for_backward(x_in, w_ih, w_hh, act, c, tc, h)
        ctx.batch_first = batch_first
        return h.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_h):
        x_in, w_ih, w_hh, act, c, tc, h = ctx.saved_tensors
        steps, n, hidden = h.shape
        features = w_ih.shape[1]
        need = ctx.needs_input_grad
        grad_tm = grad_h.transpose(0, 1).contiguous().float()
        dx = h.new_empty(steps, n, features) if need[0] else None
        dw_ih, dw_hh, db = torch.empty_like(w_ih), torch.empty_like(w_hh), h.new_empty(4 * hidden)
        work = h.new_empty(_work_size(features, hidden, n))
        _library().seqmnist_lstm_backward(
            n, steps, features, hidden, _ptr(x_in), ctx.batch_first, _ptr(w_ih), _ptr(w_hh),
            _ptr(act), _ptr(c), _ptr(tc), _ptr(h), _ptr(grad_tm),
            None if dx is None else _ptr(dx), None, _ptr(dw_ih), _ptr(dw_hh), _ptr(db), _ptr(work))
        return (None if dx is None else dx.transpose(0, 1), dw_ih, dw_hh,
                db if need[3] else None, db if need[4] else None)


def lstm(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor,
         b_hh: torch.Tensor) -> torch.Tensor:
    """Hidden states (N, T, H) of a one-layer, one-direction LSTM from zero initial states, with
    ``nn.LSTM``'s parameters (gate order i, f, g, o). Raises KernelInputError for inputs the
    kernel cannot take (checked before anything reaches C)."""
    return _LSTM.apply(x, w_ih, w_hh, b_ih, b_hh)


def dropout(x: torch.Tensor, p: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x * mask, mask) with the kernel's counter-based dropout (mask is 0 or 1 / (1 - p))."""
    _check_tensor("x", x, x.dim())
    if not 0 <= p < 1:
        raise KernelInputError(f"dropout rate must be in [0, 1), got {p}")
    x = x.contiguous()
    mask, y = torch.empty_like(x), torch.empty_like(x)
    _library().seqmnist_dropout(x.numel(), p, seed & (2**64 - 1), _ptr(x), _ptr(mask), _ptr(y))
    return y, mask


class ClassifierStep:
    """One training step of a stack of one-direction LSTM layers (``nn.LSTM`` modules with one
    layer and biases), dropout ``p`` after each, and a dense ``head`` with softmax cross-entropy,
    done entirely by the kernels: no autograd graph, no per-step allocations. Writes the
    gradients of (summed loss / ``total``) into the parameters' ``.grad``, as
    ``loss.backward()`` would; the tests check them against autograd through ``nn.LSTM``.
    Dropout masks come from a counter-based hash keyed by a number drawn from ``generator`` each
    step, so runs stay reproducible and resumable."""

    def __init__(self, lstms: list[torch.nn.LSTM], head: torch.nn.Linear, p: float,
                 generator: torch.Generator | None = None):
        if not lstms:
            raise KernelInputError("ClassifierStep needs at least one LSTM layer")
        width = lstms[0].input_size
        for k, rnn in enumerate(lstms):
            if rnn.num_layers != 1 or rnn.bidirectional or not rnn.bias or not rnn.batch_first:
                raise KernelInputError(f"LSTM layer {k}: the kernel runs one-layer, "
                                       "one-direction, batch-first LSTMs with biases")
            if rnn.proj_size:
                raise KernelInputError(f"LSTM layer {k}: projections are not supported")
            if rnn.input_size != width:
                raise KernelInputError(f"LSTM layer {k} takes {rnn.input_size} features but "
                                       f"the layer before gives {width}")
            check_lstm_weights(rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0,
                               rnn.bias_hh_l0)
            width = rnn.hidden_size
        if head.in_features != width or not 1 <= head.out_features <= MAX_CLASSES:
            raise KernelInputError(f"the dense head must take {width} features and give 1 to "
                                   f"{MAX_CLASSES} classes, got {head.in_features} -> "
                                   f"{head.out_features}")
        if not 0 <= p < 1:
            raise KernelInputError(f"dropout rate must be in [0, 1), got {p}")
        self.generator, self.layers, self.head, self.p = generator, list(lstms), head, float(p)
        self.params = [q for m in [*lstms, head] for q in m.parameters() if q.requires_grad]
        for q in [*self.params, *(q for m in [*lstms, head] for q in m.parameters())]:
            _check_tensor("parameter", q, q.dim())
        self.work: dict[tuple, dict] = {}

    def _workspace(self, n: int, steps: int) -> dict:
        key = (n, steps)
        if key not in self.work:
            e = torch.empty
            layers = []
            for k, rnn in enumerate(self.layers):
                g, i, h = rnn.weight_ih_l0.shape[0], rnn.input_size, rnn.hidden_size
                layer = dict(act=e(steps, n, g), c=e(steps, n, h), tc=e(steps, n, h),
                             h=e(steps, n, h), dh_out=torch.zeros(steps, n, h))
                if k:  # input: the previous layer's output through dropout (layer 0 reads x)
                    layer["x"] = e(steps, n, i)
                if k + 1 < len(self.layers):  # the dropout mask after this layer
                    layer["mask"] = e(steps, n, h)
                layers.append(layer)
            size = max(_work_size(r.input_size, r.hidden_size, n) for r in self.layers)
            hidden = self.layers[-1].hidden_size
            self.work[key] = dict(layers=layers, scratch=e(size), mask=e(n, hidden),
                                  d=e(n, hidden), dd=e(n, hidden))
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return self.work[key]

    def check_batch(self, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch as the kernel reads it (contiguous float32 inputs, int64 labels), after
        checking shapes and that every label is a class of the head."""
        n, _ = check_sequence(x, self.layers[0].input_size)
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or len(y) != n:
            raise KernelInputError(f"labels must be a 1-D tensor of {n} class indices, got "
                                   f"{getattr(y, 'shape', type(y).__name__)}")
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise KernelInputError(f"labels must be integers, got {y.dtype}")
        classes = self.head.out_features
        if int(y.min()) < 0 or int(y.max()) >= classes:
            raise KernelInputError(f"labels must be in 0..{classes - 1}, got "
                                   f"{int(y.min())}..{int(y.max())}")
        return x.contiguous(), y.to(device="cpu", dtype=torch.int64).contiguous()

    @torch.no_grad()
    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, total: int
                         ) -> tuple[float, int]:
        """Returns (loss summed over the rows, number of correct predictions)."""
        x, labels = self.check_batch(x, y)  # held: C reads both during the calls
        lib, ptr = _library(), _ptr
        n, steps, _ = x.shape
        ws = self._workspace(n, steps)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        L, scratch = ws["layers"], ptr(ws["scratch"])
        inputs = [(x, 1)] + [(w["x"], 0) for w in L[1:]]
        for k, (rnn, w) in enumerate(zip(self.layers, L)):
            lib.seqmnist_lstm_forward(
                n, steps, rnn.input_size, rnn.hidden_size, ptr(inputs[k][0]), inputs[k][1],
                ptr(rnn.weight_ih_l0), ptr(rnn.weight_hh_l0), ptr(rnn.bias_ih_l0),
                ptr(rnn.bias_hh_l0), scratch, ptr(w["act"]), ptr(w["c"]), ptr(w["tc"]),
                ptr(w["h"]))
            if k + 1 < len(L):
                lib.seqmnist_dropout(w["h"].numel(), self.p, seed + k, ptr(w["h"]),
                                     ptr(w["mask"]), ptr(L[k + 1]["x"]))
        last = L[-1]["h"][-1]  # (n, H), contiguous: time-major
        lib.seqmnist_dropout(last.numel(), self.p, seed + len(L), ptr(last), ptr(ws["mask"]),
                             ptr(ws["d"]))
        correct = ctypes.c_longlong(0)
        head = self.head
        loss = lib.seqmnist_dense_softmax_ce(
            n, head.in_features, head.out_features, ptr(ws["d"]), ptr(head.weight),
            ptr(head.bias), ptr(labels), 1.0 / total,
            ptr(head.weight.grad), ptr(head.bias.grad), ptr(ws["dd"]), ctypes.byref(correct))
        if loss < 0:  # the C side's own label check (already done above)
            raise KernelInputError("the kernel refused the labels")
        torch.mul(ws["dd"], ws["mask"], out=L[-1]["dh_out"][-1])
        for k in range(len(L) - 1, -1, -1):
            rnn, w = self.layers[k], L[k]
            # the input gradient goes through the dropout before this layer into the gradient
            # of the previous layer's outputs
            dx, dx_mask = (ptr(L[k - 1]["dh_out"]), ptr(L[k - 1]["mask"])) if k else (None, None)
            lib.seqmnist_lstm_backward(
                n, steps, rnn.input_size, rnn.hidden_size, ptr(inputs[k][0]), inputs[k][1],
                ptr(rnn.weight_ih_l0), ptr(rnn.weight_hh_l0), ptr(w["act"]), ptr(w["c"]),
                ptr(w["tc"]), ptr(w["h"]), ptr(w["dh_out"]), dx, dx_mask,
                ptr(rnn.weight_ih_l0.grad), ptr(rnn.weight_hh_l0.grad), ptr(rnn.bias_ih_l0.grad),
                scratch)
            if rnn.bias_hh_l0.requires_grad:
                rnn.bias_hh_l0.grad.copy_(rnn.bias_ih_l0.grad)
        return loss, correct.value
