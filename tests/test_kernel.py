"""seqmnist's LSTM kernel (csrc/lstm.c) against PyTorch's nn.LSTM and autograd."""

import os
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from seqmnist import lstm_kernel
from seqmnist.models import create_model

if not lstm_kernel.available():
    if os.environ.get("SEQMNIST_REQUIRE_KERNEL"):
        pytest.fail("the compiled LSTM kernel is not available (SEQMNIST_REQUIRE_KERNEL is set)",
                    pytrace=False)
    pytest.skip("the compiled LSTM kernel is not available here", allow_module_level=True)


@pytest.fixture
def no_kernel(monkeypatch):
    """The models' nn.LSTM path, for references."""
    monkeypatch.setattr(lstm_kernel, "usable", lambda *a: False)


@pytest.mark.parametrize("n,steps,features,hidden", [
    (32, 28, 28, 50), (5, 28, 50, 50), (7, 9, 13, 37), (3, 5, 3, 100), (1, 1, 4, 16), (6, 1, 28, 50)])
def test_lstm_layer_matches_nn_lstm(n, steps, features, hidden):
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


def test_models_use_the_kernel_and_agree_with_nn_lstm(monkeypatch):
    torch.manual_seed(0)
    model = create_model("lstm").eval()
    x = torch.rand(4, 28, 28)
    calls = []
    real = lstm_kernel.lstm
    monkeypatch.setattr(lstm_kernel, "lstm", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        fast = model(x)
        steps_fast = model.forward_steps(x)
    assert len(calls) == 4  # two layers, two calls
    monkeypatch.setattr(lstm_kernel, "usable", lambda *a: False)
    with torch.no_grad():
        torch.testing.assert_close(fast, model(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(steps_fast, model.forward_steps(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options,n,shape", [
    (dict(), 9, (28, 28)),  # the tutorial's LSTM, an odd batch
    (dict(hidden=37, layers=3, dropout=0.3), 6, (5, 11)),
    (dict(layers=1, dropout=0.0), 4, (3, 28)),
    (dict(hidden=20), 3, (1, 7)),  # one step
    (dict(hidden=16), 2, (100, 1)),  # pixel by pixel
])
def test_classifier_step_gives_autograds_gradients(no_kernel, options, n, shape):
    """The fused step against autograd through nn.LSTM with the same dropout masks."""
    torch.manual_seed(1)
    model = create_model("lstm", shape, 10, **options).train()
    assert lstm_kernel.ClassifierStep.supports(model)
    step = lstm_kernel.ClassifierStep(model, torch.Generator().manual_seed(3))
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
    recurrent = [m for m in model.net if hasattr(m, "rnn")]
    for layer, mask in zip(recurrent, masks):
        h = layer(h) * mask
    logits = model.net[-1](h)
    loss = F.cross_entropy(logits, y, reduction="sum")
    (loss / total).backward()
    assert loss_sum == pytest.approx(loss.item(), rel=1e-5)
    assert correct == (logits.argmax(-1) == y).sum().item()
    for g, q in zip(got, step.params):
        torch.testing.assert_close(g, q.grad, rtol=1e-4, atol=1e-6)


def test_kernel_dropout_rate_and_reproducibility():
    lib, ptr = lstm_kernel._library(), lstm_kernel._ptr
    x = torch.ones(100_003)

    def masks(seed, p=0.2):
        mask, y = torch.empty_like(x), torch.empty_like(x)
        lib.seqmnist_dropout(x.numel(), p, seed, ptr(x), ptr(mask), ptr(y))
        torch.testing.assert_close(y, mask)
        return mask

    a, b, c = masks(7), masks(7), masks(8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs((a == 0).float().mean().item() - 0.2) < 0.005
    assert abs((a == 0).float()[:50_000].mean() - (a == 0).float()[50_000:].mean()) < 0.01
    assert abs(((a == 0) & (c == 0)).float().mean().item() - 0.04) < 0.005  # independent seeds
    assert abs(a.mean().item() - 1.0) < 0.01
    assert torch.all(masks(9, p=0.0) == 1)


def test_disabling_the_kernel_falls_back_to_nn_lstm():
    code = ("from seqmnist import lstm_kernel as k; from seqmnist.models import create_model; "
            "print(k.available(), k.ClassifierStep.supports(create_model('lstm')))")
    env = dict(os.environ, SEQMNIST_LSTM_KERNEL="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


def test_unsupported_models_are_left_to_pytorch():
    assert not lstm_kernel.ClassifierStep.supports(create_model("gru"))
    assert not lstm_kernel.ClassifierStep.supports(create_model("lstm", bidirectional=True))
    assert not lstm_kernel.ClassifierStep.supports(create_model("cnn", (1, 28, 28)))
    x = torch.rand(2, 28, 28)
    assert not lstm_kernel.usable(x.double(), x.double())
    assert not lstm_kernel.usable(x[:0], x)

