"""seqmnist's own LSTM for CPUs with AVX-512 (``csrc/lstm.c``), used by the LSTM models.

PyTorch's ``nn.LSTM`` on CPU runs oneDNN's RNN kernels, which at this size (50 units, batch 32-64,
28 steps) spend much of their time on per-step and per-operation overheads. The kernel runs each
step as register-blocked products (the input and recurrent projections) followed by the gate maths
on the same rows while they are in L1; the backward pass also accumulates the weight gradients step
by step. Two entry points:

- ``lstm(x, w_ih, w_hh, b_ih, b_hh)``: one layer as an autograd function (evaluation, the web page,
  any LSTM ``Recurrent`` layer);
- ``ClassifierStep``: a whole training step of the LSTM classifiers (layers, dropout, dense head,
  loss; forward and backward) in a handful of C calls, with no autograd graph and no allocations.

The weights stay in the ``nn.LSTM`` modules, so checkpoints and state dicts do not change; results
match ``nn.LSTM`` to float32 rounding (the tests compare outputs and every gradient). Where the
extension was not built (no C compiler at install time, a non-x86 CPU), the CPU lacks AVX-512, or
``SEQMNIST_LSTM_KERNEL=0`` is set, the models use ``nn.LSTM`` and autograd as before.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from functools import cache

import torch

_P, _I, _L = ctypes.c_void_p, ctypes.c_int, ctypes.c_long


@cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("SEQMNIST_LSTM_KERNEL", "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    spec = importlib.util.find_spec("seqmnist._lstm")
    if spec is None or not spec.origin:
        return None
    try:
        lib = ctypes.CDLL(spec.origin)  # a plain C library: ctypes releases the GIL during calls
    except OSError:
        return None
    if not lib.seqmnist_lstm_supported():
        return None
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
    return lib


def available() -> bool:
    """Whether the compiled kernel is present, enabled and supported by this CPU."""
    return _library() is not None


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # PyTorch < 2.4
        return torch.is_autocast_cpu_enabled()


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``lstm`` can run this input. Inference on big batches with several threads stays
    with oneDNN, which uses all of them (measured 0.47 s vs 0.73 s for the 10,000 test images
    on 2 cores); the kernel is single-threaded, as each training replica is."""
    if x.dim() != 3 or x.shape[0] == 0 or x.shape[1] == 0:
        return False
    if torch.get_num_threads() > 1 and not torch.is_grad_enabled() and x.shape[0] >= 256:
        return False
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not _autocast_on() and available())


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


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
        n, steps, features = x.shape
        gates = w_ih.shape[0]
        hidden = gates // 4
        x_in, batch_first = _kernel_input(x)
        w_ih, w_hh, b_ih, b_hh = (t.contiguous() for t in (w_ih, w_hh, b_ih, b_hh))
        work = x.new_empty(_work_size(features, hidden, n))
        act = x.new_empty(steps, n, gates)
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
        grad_tm = grad_h.transpose(0, 1).contiguous()
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
    ``nn.LSTM``'s parameters (gate order i, f, g, o). Check ``usable`` first."""
    return _LSTM.apply(x, w_ih, w_hh, b_ih, b_hh)


class ClassifierStep:
    """One training step of an LSTM classifier (``models.RecurrentClassifier`` with one-direction
    LSTM layers, dropout, a dense head, softmax cross-entropy) done entirely by the kernels: no
    autograd graph, no per-step allocations, a few dozen C calls. Writes the gradients of
    (summed loss / ``total``) into the parameters' ``.grad``, as ``loss.backward()`` would;
    the tests check them against autograd through ``nn.LSTM``. Dropout masks come from a
    counter-based hash keyed by a number drawn from ``generator`` each step, so runs stay
    reproducible and resumable."""

    def __init__(self, model: torch.nn.Module, generator: torch.Generator | None = None):
        self.generator = generator
        self.layers = [m.rnn for m in model.net if hasattr(m, "rnn")]
        self.p = next((float(m.p) for m in model.net if isinstance(m, torch.nn.Dropout)), 0.0)
        self.head = model.net[-1]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.work: dict[tuple, dict] = {}

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        net = getattr(model, "net", None)
        if net is None or not available() or not isinstance(net[-1], torch.nn.Linear):
            return False
        rnns = [m for m in net if hasattr(m, "rnn")]
        kinds = [type(m) for m in net if not hasattr(m, "rnn")][:-1]
        ps = {float(m.p) for m in net if isinstance(m, torch.nn.Dropout)}
        return (bool(rnns) and len(kinds) == len(rnns)
                and all(issubclass(k, torch.nn.Dropout) for k in kinds) and len(ps) == 1
                and all(m.cell == "lstm" and not m.rnn.bidirectional and m.rnn.bias
                        and m.rnn.num_layers == 1 for m in rnns)
                and all(m.return_sequences for m in rnns[:-1]) and not rnns[-1].return_sequences
                and net[-1].out_features <= 256
                and all(p.device.type == "cpu" and p.dtype == torch.float32
                        for p in model.parameters()))

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

    @torch.no_grad()
    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, total: int
                         ) -> tuple[float, int]:
        """Returns (loss summed over the rows, number of correct predictions)."""
        lib, ptr = _library(), _ptr
        x = x.contiguous()  # read in place by the first layer (batch-first), forward and backward
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
        labels = y.to(torch.int64).contiguous()  # held: C reads it during the call
        loss = lib.seqmnist_dense_softmax_ce(
            n, head.in_features, head.out_features, ptr(ws["d"]), ptr(head.weight),
            ptr(head.bias), ptr(labels), 1.0 / total,
            ptr(head.weight.grad), ptr(head.bias.grad), ptr(ws["dd"]), ctypes.byref(correct))
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
