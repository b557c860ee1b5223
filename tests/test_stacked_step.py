"""The stacked-seeds experiment (benchmarks/stacked_step.py, measured in BENCHMARKS.md section
25): the stacked model computes each seed's own function and gradients, and a group of seeds
trains each seed exactly as its own update would, in float64 (where the two ways' rounding is
far below the tolerance). What the benchmark times is the same training, not a cheaper one."""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from seqmnist.models.layers import set_dropout_generator
from seqmnist.models.registry import MODELS, create_model
from seqmnist.training.config import TrainConfig
from seqmnist.training.parallel import dropout_generator
from seqmnist.training.update import Update

SHAPE = (28, 28)
_spec = importlib.util.spec_from_file_location(
    "stacked_step", Path(__file__).parent.parent / "benchmarks" / "stacked_step.py")
stacked_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stacked_step)
StackError, SeedGroup, stack = stacked_step.StackError, stacked_step.SeedGroup, stacked_step.stack
STACKED = ("gru", "rnn")  # the GRU's and tanh RNN's recurrence is written out; the rest refused


def build(name: str, seed: int, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, SHAPE, 10, **options).double()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_stacked_model_is_each_seed_alone_with_its_own_dropout(name):
    """Every registered model that stacks (the GRU and the tanh RNN at least; a stack of others
    may be refused) computes, three seeds stacked in training mode with dropout, each
    seed's logits and gradients of its model alone drawing its masks from the same generator.
    Fails if a stacked layer mixes rows of two seeds (a wrong reshape), gets a gate or its
    gradient wrong, or draws a seed's mask from another seed's generator or in another order."""
    entry = MODELS[name]
    shape = SHAPE if "rows" in entry.views else (1, 28, 28)
    k, n = 3, 4
    models = []
    for s in range(k):
        torch.manual_seed(s)
        models.append(create_model(name, shape, 10).double())
    try:
        stacked = stack(models, [dropout_generator(s, 0) for s in range(k)]).train()
    except StackError:
        assert name not in STACKED
        return
    torch.manual_seed(7)
    x, y = torch.rand(k * n, *shape, dtype=torch.float64), torch.randint(0, 10, (k * n,))
    logits = stacked(x)
    F.cross_entropy(logits, y, reduction="sum").backward()
    for s, model in enumerate(models):
        set_dropout_generator(model, dropout_generator(s, 0))
        alone = model.train()(x[s * n:(s + 1) * n])
        F.cross_entropy(alone, y[s * n:(s + 1) * n], reduction="sum").backward()
        torch.testing.assert_close(logits[s * n:(s + 1) * n], alone, rtol=0, atol=1e-12)
    for weights, own in stacked.pairs:
        for s in range(k):
            if own[s].grad is not None:
                torch.testing.assert_close(weights.grad[s], own[s].grad, rtol=0, atol=1e-12)


def config(seed: int, lr: float, name: str = "gru") -> TrainConfig:
    return TrainConfig(model=name, seed=seed, lr=lr, epochs=1, batch_size=8, schedule="onecycle",
                       replicas=1, backend="torch", precision="fp32")


def batches(seed: int, count: int, sizes=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(100 + seed)
    sizes = sizes or [8] * count
    return [(torch.rand(b, *SHAPE, generator=g, dtype=torch.float64),
             torch.randint(0, 10, (b,), generator=g)) for b in sizes]


def alone(cfg: TrainConfig, data, name: str = "gru", **options) -> tuple[torch.nn.Module, list]:
    model = build(name, cfg.seed, **options)
    update = Update(model, cfg, steps_per_epoch=4, threads=1)
    model.train()
    losses = [float(update(x, y)[0]) for x, y in data]
    update.close()
    return model, losses


def together(cfgs, data, name: str = "gru", **options):
    """Each seed's update driven by its own thread, as the trainers drive them."""
    group = SeedGroup(len(cfgs))
    models = [build(name, c.seed, **options) for c in cfgs]
    updates = [group.join(k, m, c, 4) for k, (m, c) in enumerate(zip(models, cfgs))]

    def drive(k):
        models[k].train()
        try:
            return [float(updates[k](x, y)[0]) for x, y in data[k]]
        finally:
            updates[k].close()

    with ThreadPoolExecutor(len(cfgs)) as pool:
        losses = list(pool.map(drive, range(len(cfgs))))
    return models, updates, losses


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-10, msg=name)


def test_seeds_trained_together_are_each_trained_as_alone():
    """Three GRU seeds with their own learning rates (one-cycle schedules) and dropout, one of
    them leaving the group after its first batch (as a seed stopped early does): each seed's
    losses and weights are those of its own update alone. Fails if the stacked Adam uses one
    seed's rate for all, drops a bias correction or a beta, scales a seed's loss by another's
    batch, or if the group waits for a seed that has left."""
    cfgs = [config(0, 3e-3), config(1, 1e-2), config(2, 5e-3)]
    data = [batches(0, 3), batches(1, 3), batches(2, 1)]
    models, _, losses = together(cfgs, data)
    for cfg, model, got, seed_data in zip(cfgs, models, losses, data):
        model_alone, want = alone(cfg, seed_data)
        assert got == pytest.approx(want, rel=1e-10, abs=1e-12)
        same_weights(model, model_alone)


def test_a_seed_trained_together_resumes_alone_from_its_checkpoint():
    """Two batches together, seed 1's checkpoint (its weights and its update's state: an
    ordinary Adam state and schedule), a third batch in a solo update loaded from it: the same
    weights as three batches alone. Fails if the update's state misses the stacked Adam's
    moments or step count."""
    cfgs = [config(0, 3e-3), config(1, 1e-2)]
    data = [batches(0, 3), batches(1, 3)]
    models, updates, _ = together(cfgs, [d[:2] for d in data])
    state = dict(model=models[1].state_dict(), **updates[1].state_dict())
    resumed = build("gru", 1)
    resumed.load_state_dict(state["model"])
    solo = Update(resumed, cfgs[1], steps_per_epoch=4, threads=1)
    solo.load_state_dict(state)
    resumed.train()
    solo(*data[1][2])
    want, _ = alone(cfgs[1], data[1])
    same_weights(resumed, want)


def test_short_batches_are_padded_with_rows_that_carry_no_weight():
    """tanh-RNN seeds whose last batches differ in size (5 and 8 rows, dropout off): the short
    one is padded in the stack, and each seed still trains as alone. Fails if padded rows count
    in the loss."""
    cfgs = [config(0, 2e-3, "rnn"), config(1, 2e-3, "rnn")]
    data = [batches(0, 2, [8, 5]), batches(1, 2, [8, 8])]
    models, _, losses = together(cfgs, data, "rnn", dropout=0.0)
    for cfg, model, got, seed_data in zip(cfgs, models, losses, data):
        model_alone, want = alone(cfg, seed_data, "rnn", dropout=0.0)
        assert got == pytest.approx(want, rel=1e-10, abs=1e-12)
        same_weights(model, model_alone)
