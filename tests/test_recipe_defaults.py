"""Every Keras default the tutorial's recipe relies on (../shared/seed/RECIPE.md) and every choice
seqmnist makes by itself, each checked where it takes effect: in the optimizer the step builds, in
the model's layers, in the order the trainer feeds the images, in the resolved config."""

import math
from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from seqmnist.models.layers import Dropout
from seqmnist.models.registry import create_model
from seqmnist.runs.train import count_replicas
from seqmnist.training import trainer as training
from seqmnist.training.config import TrainConfig
from seqmnist.training.trainer import Trainer, resolve_precision
from seqmnist.training.update import Update


def _step(model: str, shape, **changes):
    cfg = replace(TrainConfig(model=model, **changes).resolved(), replicas=1, backend="torch",
                  precision="fp32")
    net = create_model(model, shape, 10)
    return cfg, net, Update(net, cfg, 10, 1)


@pytest.mark.parametrize("model, shape, lr", [("lstm", (28, 28), 1e-3), ("cnn", (1, 28, 28), 1e-4)])
def test_adam_is_kerass_adam_at_the_tutorials_learning_rate(model, shape, lr):
    cfg, _, step = _step(model, shape)
    (group,) = step.optimizer.param_groups
    assert isinstance(step.optimizer, torch.optim.Adam)
    assert group["lr"] == lr and group["betas"] == (0.9, 0.999) and group["eps"] == 1e-7
    assert group["weight_decay"] == 0 and not group["amsgrad"]
    assert step.scheduler is None  # the tutorial's constant learning rate
    assert (cfg.batch_size, cfg.epochs) == (64, 10)


def test_the_step_minimises_categorical_cross_entropy_of_the_whole_batch():
    """The loss returned is the batch's summed cross-entropy; the gradient is its mean's."""
    torch.manual_seed(0)
    cfg = replace(TrainConfig(model="lstm", model_options=dict(dropout=0.0)).resolved(),
                  replicas=1, backend="torch", precision="fp32")
    net = create_model("lstm", (28, 28), 10, dropout=0.0)
    ref = create_model("lstm", (28, 28), 10, dropout=0.0)
    ref.load_state_dict(net.state_dict())
    x, y = torch.rand(16, 28, 28), torch.randint(0, 10, (16,))
    expected = F.cross_entropy(ref(x), y)
    expected.backward()
    step = Update(net, cfg, 1, 1)
    step.optimizer.step = lambda: None  # look at the gradient before the update
    loss_sum, hits = step(x, y)
    assert float(loss_sum) == pytest.approx(16 * expected.item(), rel=1e-5)
    assert int(hits) == int((ref(x).argmax(-1) == y).sum())
    for p, q in zip(net.parameters(), ref.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


def test_dropout_rates_are_the_tutorials():
    lstm = create_model("lstm", (28, 28), 10)
    cnn = create_model("cnn", (1, 28, 28), 10)
    assert [m.p for m in lstm.modules() if isinstance(m, Dropout)] == [0.2, 0.2]
    drops = [m for m in cnn.modules() if isinstance(m, (Dropout, torch.nn.Dropout))]
    assert [m.p for m in drops] == [0.5]
    # after each LSTM layer, and before the CNN's last Dense
    kinds = [type(m).__name__ for m in lstm.net]
    assert kinds == ["Recurrent", "Dropout", "Recurrent", "Dropout", "Linear"]
    assert isinstance(cnn.net[-2], (Dropout, torch.nn.Dropout))


def _glorot(w: torch.Tensor, fan_in: int, fan_out: int) -> None:
    limit = math.sqrt(6 / (fan_in + fan_out))
    assert w.abs().max() <= limit and w.abs().max() > 0.9 * limit
    assert abs(w.std().item() - limit / math.sqrt(3)) < 0.1 * limit


def test_dense_and_conv_kernels_are_glorot_uniform_with_zero_biases():
    torch.manual_seed(0)
    lstm = create_model("lstm", (28, 28), 10)
    _glorot(lstm.head.weight.detach(), 50, 10)
    assert torch.all(lstm.head.bias == 0)
    cnn = create_model("cnn", (1, 28, 28), 10)
    convs = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    dense = [m for m in cnn.modules() if isinstance(m, torch.nn.Linear)]
    _glorot(convs[0].weight.detach(), 1 * 25, 32 * 25)
    _glorot(convs[1].weight.detach(), 32 * 25, 64 * 25)
    _glorot(dense[0].weight.detach(), 3136, 1024)
    _glorot(dense[1].weight.detach(), 1024, 10)
    assert all(torch.all(m.bias == 0) for m in convs + dense)


class RecordingStep:
    """A step that trains nothing and remembers which images each batch held."""

    threads, lr = 1, 0.0

    def __init__(self):
        self.batches = []

    def __call__(self, x, y):
        self.batches.append(x[:, 0, 0].clone())
        return torch.zeros(()), torch.zeros((), dtype=torch.long)

    def train(self):
        pass

    def state_dict(self):
        return {}


def test_every_epoch_sees_every_image_once_in_a_new_order():
    cfg = replace(TrainConfig(model="lstm", epochs=3, batch_size=7).resolved(), precision="fp32")
    n = 50
    x = torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, 2, 2).contiguous()
    y = torch.zeros(n, dtype=torch.long)
    step = RecordingStep()
    net = create_model("lstm", (2, 2), 10)
    Trainer(net, step, cfg, (x, y), (x[:5], y[:5]), progress=False,
            log=lambda *_: None).fit(lambda _: None, None)
    per_epoch = -(-n // 7)
    assert len(step.batches) == 3 * per_epoch
    orders = [torch.cat(step.batches[e * per_epoch:(e + 1) * per_epoch]).long().tolist()
              for e in range(3)]
    for order in orders:
        assert sorted(order) == list(range(n))  # each image once per epoch
    assert orders[0] != orders[1] != orders[2] != orders[0]  # reshuffled every epoch
    assert orders[0] != list(range(n))


@pytest.mark.parametrize("model, view, native_bf16, asked, expected", [
    ("cnn", "image", True, "auto", "bf16"),  # CNNs on hardware with native bf16
    ("cnn", "image", False, "auto", "fp32"),
    ("lstm", "rows", True, "auto", "fp32"),  # recurrent models: bf16 measured no faster
    ("cnn", "image", True, "fp32", "fp32"),  # an explicit choice wins
    ("lstm", "rows", False, "bf16", "bf16"),
])
def test_automatic_precision(monkeypatch, model, view, native_bf16, asked, expected):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native_bf16)
    cfg = TrainConfig(model=model, view=view, precision=asked).resolved()
    assert resolve_precision(cfg, torch.device("cpu")) == expected


@pytest.mark.parametrize("model, view, changes, threads, expected", [
    ("lstm", "rows", {}, 2, 2),  # recurrent on CPU: one replica per core
    ("gru", "pixels", {}, 4, 4),
    ("cnn", "image", {}, 2, 1),  # a CNN uses every core in each operation
    ("lstm", "rows", {"replicas": 1}, 2, 1),  # as asked
    ("lstm", "rows", {"batch_size": 3}, 8, 3),  # never more replicas than images in a batch
])
def test_automatic_replicas(model, view, changes, threads, expected):
    cfg = TrainConfig(model=model, view=view, **changes).resolved()
    assert count_replicas(cfg, torch.device("cpu"), threads) == expected
    assert count_replicas(cfg, torch.device("cuda"), threads) == (changes.get("replicas") or 1)


def test_a_trainer_with_no_epoch_left_trains_nothing():
    """A run whose epochs are all done trains nothing and says so by returning no validation."""
    cfg = replace(TrainConfig(model="lstm", epochs=1).resolved(), precision="fp32")
    step = RecordingStep()
    t = Trainer(create_model("lstm", (2, 2), 10), step, cfg,
                (torch.zeros(4, 2, 2), torch.zeros(4, dtype=torch.long)),
                (torch.zeros(2, 2, 2), torch.zeros(2, dtype=torch.long)), progress=False)
    t.epochs_done = 1
    assert t.fit(lambda _: None, None) is None and step.batches == []
    assert training.BATCH_HOOKS == []
