"""seqmnist's own LSTM layer for CPUs with AVX-512 (``csrc/lstm.c``), used by the LSTM models.

PyTorch's ``nn.LSTM`` on CPU runs oneDNN's RNN kernels, which at this size (50 units, batch 32-64,
28 steps) spend most of their time on per-step overheads. Here the work is split by shape:

- one large product for the input projection of all steps (``x W_ih^T + b``) and, in backward,
  large products for the weight gradients and the input gradient: PyTorch (MKL/oneDNN GEMMs);
- the 28 dependent steps (a small product plus the gate maths, per step) in C with AVX-512
  intrinsics, register-blocked, rows kept in L1 (the compiled ``seqmnist._lstm`` extension).

The weights stay in the ``nn.LSTM`` module, so checkpoints and state dicts do not change; the
results match ``nn.LSTM`` to float32 rounding (tests compare outputs and every gradient). Where the
extension was not built (no C compiler at install time, a non-x86 CPU) or the CPU lacks AVX-512,
or ``SEQMNIST_LSTM_KERNEL=0`` is set, the models use ``nn.LSTM`` as before.
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
        "seqmnist_lstm_forward": [_I, _I, _I] + [_P] * 6,
        "seqmnist_lstm_backward": [_I, _I, _I] + [_P] * 8,
        "seqmnist_matmul_nn": [_I, _I, _I, _P, _P, _P, _L, _P],
        "seqmnist_matmul_tn": [_I, _I, _I, _P, _P, _P],
        "seqmnist_colsum": [_I, _I, _P, _P],
        "seqmnist_dropout": [_L, ctypes.c_float, ctypes.c_ulonglong, _P, _P, _P],
        "seqmnist_mul": [_L, _P, _P, _P],
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
    if torch.get_num_threads() > 1 and not torch.is_grad_enabled() and x.shape[0] >= 256:
        return False
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.dim() == 3 and x.shape[0] > 0 and x.shape[1] > 0 and not _autocast_on()
            and available())


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


class _LSTM(torch.autograd.Function):
    """Inside, tensors are time-major (T, N, ...): each step's rows are contiguous, and the
    products over all steps need no copies. The output is a (N, T, H) view of time-major memory;
    element-wise layers after it (dropout) keep that layout, so the next LSTM reads it for free."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh):
        n, steps, features = x.shape
        gates = w_ih.shape[0]
        hidden = gates // 4
        x_tm = x.transpose(0, 1).contiguous()
        xw = torch.addmm(b_ih + b_hh, x_tm.view(steps * n, features), w_ih.t())
        whh_t = w_hh.t().contiguous()
        act = x.new_empty(steps, n, gates)
        c, tc, h = (x.new_empty(steps, n, hidden) for _ in range(3))
        _library().seqmnist_lstm_forward(n, steps, hidden, _ptr(xw), _ptr(whh_t), _ptr(act),
                                         _ptr(c), _ptr(tc), _ptr(h))
        ctx.save_for_backward(x_tm, w_ih, w_hh, act, c, tc, h)
        return h.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_h):
        x_tm, w_ih, w_hh, act, c, tc, h = ctx.saved_tensors
        steps, n, features = x_tm.shape
        gates = w_ih.shape[0]
        hidden = gates // 4
        grad_tm = grad_h.transpose(0, 1).contiguous()
        dgates = x_tm.new_empty(steps, n, gates)
        dh, dc = x_tm.new_empty(n, hidden), x_tm.new_empty(n, hidden)
        _library().seqmnist_lstm_backward(n, steps, hidden, _ptr(w_hh.contiguous()), _ptr(act),
                                          _ptr(c), _ptr(tc), _ptr(grad_tm), _ptr(dgates),
                                          _ptr(dh), _ptr(dc))
        flat = dgates.view(steps * n, gates)
        need = ctx.needs_input_grad
        dx = (flat @ w_ih).view(steps, n, features).transpose(0, 1) if need[0] else None
        dw_ih = flat.t() @ x_tm.view(steps * n, features) if need[1] else None
        # h_{t-1} pairs with the gates of step t; h_{-1} = 0 contributes nothing.
        dw_hh = (dgates[1:].view(-1, gates).t() @ h[:-1].view(-1, hidden)
                 if need[2] else None)
        db = flat.sum(0) if need[3] or need[4] else None
        return dx, dw_ih, dw_hh, db if need[3] else None, db if need[4] else None


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
        self.model, self.generator = model, generator
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
            ws: dict = dict(layers=[])
            shared: dict = {}  # backward buffers reused from layer to layer (less memory traffic)
            for rnn in self.layers:
                g, i, h = rnn.weight_ih_l0.shape[0], rnn.input_size, rnn.hidden_size
                ws["layers"].append(dict(
                    x=e(steps, n, i), wih_t=e(i, g), whh_t=e(h, g), bias=e(g),
                    act=e(steps, n, g), c=e(steps, n, h), tc=e(steps, n, h), h=e(steps, n, h),
                    mask=e(steps, n, h), dh_out=torch.zeros(steps, n, h), dx=e(steps, n, i),
                    dgates=shared.setdefault(("dgates", g), e(steps, n, g)),
                    dh=shared.setdefault(("dh", h), e(n, h)), dc=shared.setdefault(("dc", h), e(n, h))))
            hidden = self.layers[-1].hidden_size
            ws.update(mask=e(n, hidden), d=e(n, hidden), dd=e(n, hidden))
            self.work[key] = ws
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return self.work[key]

    @torch.no_grad()
    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, total: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (loss summed over the rows, number of correct predictions)."""
        lib, ptr = _library(), _ptr
        n, steps, _ = x.shape
        ws = self._workspace(n, steps)
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        L = ws["layers"]
        L[0]["x"].copy_(x.transpose(0, 1))
        for k, (rnn, w) in enumerate(zip(self.layers, L)):
            g, i, h = rnn.weight_ih_l0.shape[0], rnn.input_size, rnn.hidden_size
            w["wih_t"].copy_(rnn.weight_ih_l0.t())
            w["whh_t"].copy_(rnn.weight_hh_l0.t())
            torch.add(rnn.bias_ih_l0, rnn.bias_hh_l0, out=w["bias"])
            # the input projection of all steps goes into act, which the forward overwrites
            lib.seqmnist_matmul_nn(steps * n, g, i, ptr(w["x"]), ptr(w["wih_t"]), ptr(w["bias"]),
                                   0, ptr(w["act"]))
            lib.seqmnist_lstm_forward(n, steps, h, ptr(w["act"]), ptr(w["whh_t"]), ptr(w["act"]),
                                      ptr(w["c"]), ptr(w["tc"]), ptr(w["h"]))
            if k + 1 < len(L):
                lib.seqmnist_dropout(steps * n * h, self.p, seed + k, ptr(w["h"]), ptr(w["mask"]),
                                     ptr(L[k + 1]["x"]))
        last = L[-1]["h"][-1]  # (n, H), contiguous: time-major
        lib.seqmnist_dropout(last.numel(), self.p, seed + len(L), ptr(last), ptr(ws["mask"]),
                             ptr(ws["d"]))
        correct = ctypes.c_longlong(0)
        head = self.head
        loss = lib.seqmnist_dense_softmax_ce(
            n, head.in_features, head.out_features, ptr(ws["d"]), ptr(head.weight),
            ptr(head.bias), ptr(y.to(torch.int64).contiguous()), 1.0 / total,
            ptr(head.weight.grad), ptr(head.bias.grad), ptr(ws["dd"]), ctypes.byref(correct))
        lib.seqmnist_mul(last.numel(), ptr(ws["dd"]), ptr(ws["mask"]), ptr(L[-1]["dh_out"][-1]))
        for k in range(len(L) - 1, -1, -1):
            rnn, w = self.layers[k], L[k]
            g, i, h = rnn.weight_ih_l0.shape[0], rnn.input_size, rnn.hidden_size
            lib.seqmnist_lstm_backward(n, steps, h, ptr(rnn.weight_hh_l0), ptr(w["act"]),
                                       ptr(w["c"]), ptr(w["tc"]), ptr(w["dh_out"]),
                                       ptr(w["dgates"]), ptr(w["dh"]), ptr(w["dc"]))
            dg = w["dgates"]
            lib.seqmnist_matmul_tn(g, i, steps * n, ptr(dg), ptr(w["x"]),
                                   ptr(rnn.weight_ih_l0.grad))
            # h_{t-1} pairs with the gates of step t; h_{-1} = 0 contributes nothing.
            lib.seqmnist_matmul_tn(g, h, (steps - 1) * n, ptr(dg[1:]), ptr(w["h"]),
                                   ptr(rnn.weight_hh_l0.grad))
            lib.seqmnist_colsum(steps * n, g, ptr(dg), ptr(rnn.bias_ih_l0.grad))
            if rnn.bias_hh_l0.requires_grad:
                rnn.bias_hh_l0.grad.copy_(rnn.bias_ih_l0.grad)
            if k > 0:
                lib.seqmnist_matmul_nn(steps * n, i, g, ptr(dg), ptr(rnn.weight_ih_l0), None, 0,
                                       ptr(w["dx"]))
                lib.seqmnist_mul(steps * n * i, ptr(w["dx"]), ptr(L[k - 1]["mask"]),
                                 ptr(L[k - 1]["dh_out"]))
        return torch.tensor(loss), torch.tensor(correct.value)
