import numpy as np
import pytest
import torch

from seqmnist.core.errors import UsageError
from seqmnist.data.views import VIEWS, apply_view, permutation, to_input


def test_shapes_and_meaning():
    images = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    rows = apply_view(images, "rows")
    assert rows.shape == (2, 3, 4) and torch.equal(rows[0, 1], images[0, 1])
    cols = apply_view(images, "columns")
    assert cols.shape == (2, 4, 3) and torch.equal(cols[0, 2], images[0, :, 2])
    pixels = apply_view(images, "pixels")
    assert pixels.shape == (2, 12, 1) and pixels[1, 5, 0] == images[1, 1, 1]
    assert apply_view(images, "image").shape == (2, 1, 3, 4)
    for name, view in VIEWS.items():
        assert apply_view(images, name).shape[1:] == view.shape(3, 4)


def test_permuted_is_a_fixed_seeded_permutation():
    images = torch.rand(2, 5, 5)
    a, b = apply_view(images, "permuted", 7), apply_view(images, "permuted", 7)
    assert torch.equal(a, b)
    assert not torch.equal(a, apply_view(images, "permuted", 8))
    perm = permutation(25, 7)
    assert torch.equal(a[:, :, 0], images.reshape(2, 25)[:, perm])
    assert sorted(perm.tolist()) == list(range(25))


def test_to_input_scales_uint8():
    x = to_input(np.full((1, 2, 2), 255, dtype=np.uint8), "rows")
    assert x.dtype == torch.float32 and torch.all(x == 1.0)


def test_unknown_view():
    with pytest.raises(UsageError, match="unknown view"):
        apply_view(torch.rand(1, 2, 2), "diagonal")


# --- the permuted task is fixed; the seed is not ------------------------------------------------

def test_every_seed_reads_one_fixed_order_and_permutation_chooses_another():
    from seqmnist.training.config import TrainConfig

    orders = {TrainConfig(model="rnn", view="permuted", seed=s).resolved().order_seed
              for s in (0, 1, 7)}
    assert orders == {0}
    other = TrainConfig(model="rnn", view="permuted", seed=1, permutation=1).resolved()
    assert other.order_seed == 1
    assert not torch.equal(permutation(784, 0), permutation(784, 1))
    legacy = TrainConfig(model="rnn", view="permuted", seed=5, permutation=-1).resolved()
    assert legacy.order_seed == 5  # each seed's own order, as before it was fixed
    assert TrainConfig(model="rnn", view="rows", permutation=3).resolved().permutation is None
    with pytest.raises(UsageError, match="permutation must be a whole number from 0"):
        TrainConfig(model="rnn", view="permuted", permutation=-2).resolved()


def test_a_run_from_before_the_order_was_fixed_still_evaluates_to_its_accuracy(
        small_mnist, small_mnist_dir, tmp_path):
    """A stored configuration without "permutation" is such a run: it is read in its seed's
    order (its accuracy is the recorded one) and labelled as such in reports."""
    import json

    from safetensors.torch import load_file, safe_open, save_file

    from seqmnist.evaluation.analysis import group_runs
    from seqmnist.evaluation.evaluate import evaluate
    from seqmnist.runs.storage import load_run
    from seqmnist.runs.train import train
    from seqmnist.training.config import TrainConfig

    done = train(TrainConfig(model="rnn", view="permuted", seed=3, permutation=3, epochs=1,
                             limit=300), out=tmp_path, dataset=small_mnist, progress=False,
                 log=lambda *_: None)
    folder = done.path
    config = json.loads((folder / "config.json").read_text())
    del config["permutation"]
    (folder / "config.json").write_text(json.dumps(config))
    weights = folder / "model.safetensors"
    with safe_open(weights, framework="pt") as fh:
        meta = fh.metadata()
    stored = json.loads(meta["config"])
    del stored["permutation"]
    meta["config"] = json.dumps(stored)
    save_file(load_file(weights), weights, metadata=meta)
    run = load_run(folder)
    assert run.config.permutation == -1 and run.config.order_seed == 3
    assert evaluate(run, small_mnist_dir).accuracy == pytest.approx(
        done.metrics["test_accuracy"])
    (group,) = group_runs([run])
    assert group.name == "rnn (permuted, order drawn from each seed)"

