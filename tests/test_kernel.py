"""seqmnist's LSTM kernel (csrc/lstm.c) against PyTorch's nn.LSTM and autograd, its checked
boundary, and the backend seam that installs it."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from seqmnist.core.errors import KernelInputError, UsageError
from seqmnist.kernels import backends, lstm_kernel
from seqmnist.models.registry import create_model

if not lstm_kernel.available():
    if os.environ.get("SEQMNIST_REQUIRE_KERNEL"):
        pytest.fail(f"the compiled LSTM kernel is not available (SEQMNIST_REQUIRE_KERNEL is set): "
                    f"{lstm_kernel.status()[1]}", pytrace=False)
    pytest.skip("the compiled LSTM kernel is not available here", allow_module_level=True)


# Every instruction set this CPU runs: on an AVX-512 machine the AVX2 code is tested too (the
# kernel limited to it), as an AVX2-only laptop runs it.
RUNS_HERE = ["avx512", "avx2"] if lstm_kernel.status()[1] == "avx512" else ["avx2"]


@pytest.fixture(params=RUNS_HERE)
def isa(request):
    with lstm_kernel.limited_isa(request.param) as running:
        assert running == request.param and lstm_kernel.status() == (True, request.param)
        yield running


def _step(model, generator=None):
    return backends.training_step(model, "native", "fp32", generator)


@pytest.mark.parametrize("n,steps,features,hidden", [
    (32, 28, 28, 50), (5, 28, 50, 50), (7, 9, 13, 37), (3, 5, 3, 100), (1, 1, 4, 16), (6, 1, 28, 50),
    (4, 3, 9, 3)])  # hidden 3: every vector is a tail
def test_lstm_layer_matches_nn_lstm(n, steps, features, hidden, isa):
    torch.manual_seed(0)
    ref = torch.nn.LSTM(features, hidden, batch_first=True)
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(-0.5, 0.5)
    x = torch.randn(n, steps, features, requires_grad=True)
    out = ref(x)[0]
    grad_out = torch.randn_like(out)
    expected = torch.autograd.grad(out, [x, *ref.parameters()], grad_out)
    x2 = x.detach().clone().requires_grad_()
    out2 = lstm_kernel.lstm(x2, *ref.parameters())
    got = torch.autograd.grad(out2, [x2, *ref.parameters()], grad_out)
    torch.testing.assert_close(out2, out, rtol=1e-5, atol=2e-6)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=2e-5)


def test_installed_backend_computes_the_model_and_agrees_with_torch(monkeypatch):
    torch.manual_seed(0)
    model = create_model("lstm").eval()
    x = torch.rand(4, 28, 28)
    with torch.no_grad():
        ref, ref_steps = model(x), model.forward_steps(x)
    calls = []
    real = lstm_kernel.lstm
    monkeypatch.setattr(lstm_kernel, "lstm", lambda *a: calls.append(1) or real(*a))
    backends.install_backend(model, "native")
    assert backends.installed_backend(model) == "native"
    with torch.no_grad():
        fast, steps_fast = model(x), model.forward_steps(x)
    assert len(calls) == 4  # two layers, two calls
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(steps_fast, ref_steps, rtol=1e-5, atol=1e-5)
    backends.install_backend(model, "torch")
    calls.clear()
    with torch.no_grad():
        model(x)
    assert calls == [] and backends.installed_backend(model) == "torch"


@pytest.mark.parametrize("options,n,shape", [
    (dict(), 9, (28, 28)),  # the tutorial's LSTM, an odd batch
    (dict(hidden=37, layers=3, dropout=0.3), 6, (5, 11)),
    (dict(layers=1, dropout=0.0), 4, (3, 28)),
    (dict(hidden=20), 3, (1, 7)),  # one step
    (dict(hidden=16), 2, (100, 1)),  # pixel by pixel
])
def test_classifier_step_gives_autograds_gradients(options, n, shape, isa):
    """The fused step against autograd through nn.LSTM with the same dropout masks."""
    torch.manual_seed(1)
    model = create_model("lstm", shape, 10, **options).train()
    assert backends.native_problem(model) is None
    step = _step(model, torch.Generator().manual_seed(3))
    x, y = torch.rand(n, *shape), torch.randint(0, 10, (n,))
    total = 2 * n  # as if this were one replica's half of a batch
    loss_sum, correct = step.forward_backward(x, y, total)
    got = [p.grad.clone() for p in step.params]

    ws = step.work[(n, shape[0])]
    masks = [layer["mask"].transpose(0, 1) for layer in ws["layers"][:-1]] + [ws["mask"]]
    p = step.p
    for m in masks:  # each mask is 0 or 1 / (1 - p)
        assert torch.all((m == 0) | torch.isclose(m, torch.tensor(1 / (1 - p))))
    model.zero_grad()
    h = x
    for layer, mask in zip(model.recurrent_layers, masks):
        h = layer(h) * mask
    logits = model.head(h)
    loss = F.cross_entropy(logits, y, reduction="sum")
    (loss / total).backward()
    assert loss_sum == pytest.approx(loss.item(), rel=1e-5)
    assert correct == (logits.argmax(-1) == y).sum().item()
    for g, q in zip(got, step.params):
        torch.testing.assert_close(g, q.grad, rtol=1e-4, atol=1e-6)


def test_kernel_dropout_rate_and_reproducibility():
    x = torch.ones(100_003)

    def masks(seed, p=0.2):
        y, mask = lstm_kernel.dropout(x, p, seed)
        torch.testing.assert_close(y, mask)
        return mask

    a, b, c = masks(7), masks(7), masks(8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs((a == 0).float().mean().item() - 0.2) < 0.005
    assert abs((a == 0).float()[:50_000].mean() - (a == 0).float()[50_000:].mean()) < 0.01
    assert abs(((a == 0) & (c == 0)).float().mean().item() - 0.04) < 0.005  # independent seeds
    assert abs(a.mean().item() - 1.0) < 0.01
    assert torch.all(masks(9, p=0.0) == 1)


def _reference_keep(n: int, p: float, seed: int) -> np.ndarray:
    """The kernel's dropout hash written out in NumPy: keyed lowbias32, twice, per index."""
    m32 = 0xFFFFFFFF
    key = np.uint64((seed ^ (seed >> 32)) & m32)
    key2 = np.uint64(((seed >> 32) * 0x9E3779B9) & m32)
    h = (np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B9)) & np.uint64(m32)
    h ^= key
    for _ in range(2):
        h ^= h >> np.uint64(16)
        h = (h * np.uint64(0x7FEB352D)) & np.uint64(m32)
        h ^= h >> np.uint64(15)
        h = (h * np.uint64(0x846CA68B)) & np.uint64(m32)
        h ^= h >> np.uint64(16)
        h ^= key2
    u = (h >> np.uint64(8)).astype(np.float32) * np.float32(1 / 16777216)
    return u >= np.float32(p)


@pytest.mark.parametrize("n, p, seed", [(1000, 0.3, 2**40 + 12345), (37, 0.5, 7), (16, 0.2, 0)])
def test_dropout_masks_are_the_documented_hash_on_every_instruction_set(n, p, seed, isa):
    """Whatever instruction set runs it (AVX-512 or AVX2), the mask is exactly the hash above,
    so a seed gives the same masks on every machine the native backend runs on."""
    _, mask = lstm_kernel.dropout(torch.ones(n), p, seed)
    assert ((mask > 0).numpy() == _reference_keep(n, p, seed)).all()


def test_the_instruction_set_can_be_limited_and_a_wrong_one_is_refused():
    """SEQMNIST_LSTM_ISA=avx2 runs the AVX2 code on any CPU that has it; a name that is no
    instruction set leaves the kernel unavailable with the reason, and auto chooses torch."""
    code = ("from seqmnist.kernels import backends, lstm_kernel; from seqmnist.models import "
            "create_model; print(lstm_kernel.status()); "
            "print(backends.resolve_backend('auto', create_model('lstm')))")

    def run(value):
        env = dict(os.environ, SEQMNIST_LSTM_ISA=value)
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, check=True).stdout.splitlines()

    assert run("AVX2") == ["(True, 'avx2')", "native"]
    status, chosen = run("sse4")
    assert status.startswith("(False, 'SEQMNIST_LSTM_ISA=sse4 is not an instruction set")
    assert chosen == "torch"


def test_disabling_the_kernel_makes_auto_choose_torch():
    code = ("from seqmnist.kernels import backends; from seqmnist.models import create_model; "
            "m = create_model('lstm'); print(backends.resolve_backend('auto', m), "
            "backends.native_problem(m) is not None)")
    env = dict(os.environ, SEQMNIST_LSTM_KERNEL="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["torch", "True"]


def test_backend_resolution_and_refusals():
    lstm = create_model("lstm")
    assert backends.resolve_backend("auto", lstm) == "native"
    assert backends.resolve_backend("torch", lstm) == "torch"
    assert backends.resolve_backend("auto", create_model("gru")) == "torch"
    assert backends.resolve_backend("auto", lstm, "cpu", "bf16") == "torch"
    for model, precision, why in [(create_model("gru"), "fp32", "LSTM models only"),
                                  (create_model("lstm", bidirectional=True), "fp32", "bidirect"),
                                  (create_model("cnn", (1, 28, 28)), "fp32", "LSTM models only"),
                                  (lstm, "bf16", "fp32")]:
        with pytest.raises(UsageError, match=why):
            backends.resolve_backend("native", model, "cpu", precision)
    with pytest.raises(UsageError, match="unknown backend"):
        backends.resolve_backend("cudnn", lstm)


@pytest.mark.parametrize("make, message", [
    (lambda w: (torch.rand(2, 5, 9), *w), "9 features per step but the weights expect 28"),
    (lambda w: (torch.rand(2, 5, 28).double(), *w), "torch.float32"),
    (lambda w: (torch.rand(5, 28), *w), "3 dimensions"),
    (lambda w: (torch.rand(0, 5, 28), *w), "at least one step"),
    (lambda w: (torch.rand(2, 0, 28), *w), "at least one step"),
    (lambda w: (torch.rand(2, 5, 28), w[0][:, :3], *w[1:]), "features per step"),
    (lambda w: (torch.rand(2, 5, 28), w[0], w[1][:7], *w[2:]), "w_hh must be"),
    (lambda w: (torch.rand(2, 5, 28), *w[:3], w[3][:5]), "b_hh must be"),
    (lambda w: (torch.rand(2, 5, 28), w[0][:198], *w[1:]), "w_ih must be"),
    (lambda w: ([[1.0]], *w), "must be a tensor"),
])
def test_layer_boundary_is_checked_before_c(make, message):
    rnn = torch.nn.LSTM(28, 50, batch_first=True)
    weights = [p.detach() for p in rnn.parameters()]
    with pytest.raises(KernelInputError, match=message):
        lstm_kernel.lstm(*make(weights))


@pytest.mark.parametrize("x, y, message", [
    (torch.rand(3, 28, 28), torch.tensor([0, 1, 10]), r"labels must be in 0..9, got 0..10"),
    (torch.rand(3, 28, 28), torch.tensor([0, -1, 2]), r"labels must be in 0..9, got -1..2"),
    (torch.rand(3, 28, 28), torch.tensor([0, 1]), "1-D tensor of 3"),
    (torch.rand(3, 28, 28), torch.tensor([0.0, 1.0, 2.0]), "integers"),
    (torch.rand(3, 28, 14), torch.tensor([0, 1, 2]), "14 features per step"),
    (torch.rand(3, 28, 28).double(), torch.tensor([0, 1, 2]), "float32"),
])
def test_training_step_boundary_is_checked_before_c(x, y, message):
    step = _step(create_model("lstm").train(), torch.Generator().manual_seed(0))
    with pytest.raises(KernelInputError, match=message):
        step.forward_backward(x, y, len(x))


def test_out_of_range_labels_never_reach_c_even_when_the_python_check_is_skipped(monkeypatch):
    """The C side checks the label range again: a caller that skips the Python check gets an
    error, not memory corruption."""
    step = _step(create_model("lstm").train(), torch.Generator().manual_seed(0))
    monkeypatch.setattr(step, "check_batch", lambda x, y: (x.contiguous(), y.contiguous()))
    with pytest.raises(KernelInputError, match="refused the labels"):
        step.forward_backward(torch.rand(2, 28, 28), torch.tensor([3, 99]), 2)


def test_classifier_step_refuses_what_it_cannot_compute():
    head = torch.nn.Linear(50, 10)
    with pytest.raises(KernelInputError, match="one-layer"):
        lstm_kernel.ClassifierStep([torch.nn.LSTM(28, 50, batch_first=True, bidirectional=True)],
                                   head, 0.2)
    with pytest.raises(KernelInputError, match="dense head must take 50"):
        lstm_kernel.ClassifierStep([torch.nn.LSTM(28, 50, batch_first=True)],
                                   torch.nn.Linear(40, 10), 0.2)
    with pytest.raises(KernelInputError, match="1 to 256 classes"):
        lstm_kernel.ClassifierStep([torch.nn.LSTM(28, 50, batch_first=True)],
                                   torch.nn.Linear(50, 300), 0.2)
    with pytest.raises(KernelInputError, match="dropout rate"):
        lstm_kernel.ClassifierStep([torch.nn.LSTM(28, 50, batch_first=True)], head, 1.0)
