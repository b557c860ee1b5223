"""Look inside, correct rather than decorative: the states are the model's own (equal to
PyTorch's nn.LSTM / nn.GRU run step by step on the same weights), the last belief is the model's
answer on either backend, occlusion equals a direct recomputation, integrated gradients are
complete, every registered model and view is explained, and bad input is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("captum")

from conftest import FIXTURE_DATA  # noqa: E402
from seqmnist import TrainConfig, train
from seqmnist.cli import main
from seqmnist.data.views import VIEWS, to_input
from seqmnist.models.registry import MODELS, create_model
from seqmnist.reports.explainer import decided_at, explain
from seqmnist.runs.schema import RunMetrics
from seqmnist.runs.storage import Run, load_run
from seqmnist.training.config import TrainConfig as Config

DATA = str(FIXTURE_DATA / "mnist")
CONTRACT = {"run", "model", "view", "index", "label", "prediction", "probabilities", "saliency"}
SEQUENCE = {"steps", "belief", "decided_at", "occlusion", "attribution", "state"}


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def trained(small_mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain-runs")
    return {m: train(TrainConfig(model=m, epochs=1, limit=1000, **kw), out=out,
                     dataset=small_mnist, progress=False, log=quiet).path
            for m, kw in (("lstm", {}), ("gru", {}), ("cnn", {}), ("rnn", dict(view="columns")))}


def _stepwise(kind: str, rnn: torch.nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """PyTorch's own module, one step at a time, carrying its state."""
    hs, cs, state = [], [], None
    with torch.no_grad():
        for t in range(x.shape[0]):
            out, state = rnn(x[None, t:t + 1], state)
            hs.append(out[0, 0].clone())
            if kind == "lstm":
                cs.append(state[1][0, 0].clone())
    return {"h": torch.stack(hs).numpy(), **({"c": torch.stack(cs).numpy()} if cs else {})}


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_states_are_pytorchs_own_step_by_step_and_the_last_belief_is_the_answer(
        trained, small_mnist, name):
    run = load_run(trained[name])  # the inference backend: native for the LSTM where it runs
    x = to_input(small_mnist.x_test[:1], run.config.view)
    with torch.no_grad():
        answer = run.model(x).softmax(-1)[0].numpy()  # on the run's own backend
    e = explain(run, 0, DATA)
    np.testing.assert_allclose(e.probabilities, answer, atol=1e-5)
    np.testing.assert_allclose(e.belief[-1], answer, atol=1e-5)
    seq = x[0]
    for k, layer in enumerate(run.model.recurrent_layers, 1):
        theirs = _stepwise(name, layer.rnn, seq)
        np.testing.assert_allclose(e.state[f"layer{k}.h"], theirs["h"], atol=1e-5)
        if name == "lstm":
            np.testing.assert_allclose(e.state[f"layer{k}.c"], theirs["c"], atol=1e-5)
            for gate in ("input_gate", "forget_gate", "output_gate"):
                g = e.state[f"layer{k}.{gate}"]
                assert g.shape == theirs["h"].shape and g.min() >= 0 and g.max() <= 1
        else:
            assert {f"layer{k}.reset_gate", f"layer{k}.update_gate"} <= set(e.state)
        with torch.no_grad():
            seq = layer.rnn(seq[None])[0][0]


def test_the_same_on_the_torch_backend(trained, small_mnist):
    from seqmnist.kernels.backends import install_backend

    run = load_run(trained["lstm"])
    install_backend(run.model, "torch")
    x = to_input(small_mnist.x_test[:1], "rows")
    with torch.no_grad():
        answer = run.model(x).softmax(-1)[0].numpy()
    e = explain(run, 0, DATA)
    np.testing.assert_allclose(e.belief[-1], answer, atol=1e-5)
    theirs = _stepwise("lstm", run.model.recurrent_layers[0].rnn, x[0])
    np.testing.assert_allclose(e.state["layer1.c"], theirs["c"], atol=1e-5)


def test_occlusion_and_integrated_gradients_are_what_they_claim(trained, small_mnist):
    run = load_run(trained["lstm"])
    e = explain(run, 3, DATA)
    x = to_input(small_mnist.x_test[3:4], "rows")
    answer = int(e.probabilities.argmax())
    with torch.no_grad():
        for t in (0, 9, 27):
            hidden = x.clone()
            hidden[:, t] = 0
            p = run.model(hidden).softmax(-1)[0, answer].item()
            assert e.occlusion[t] == pytest.approx(e.probabilities[answer] - p, abs=1e-5)
        logit = run.model(x)[0, answer].item()
        base = run.model(torch.zeros_like(x))[0, answer].item()
    # completeness: the attributions add up to f(x) - f(baseline), within Captum's own delta
    assert abs(e.attribution.sum() - (logit - base)) <= e.attribution_delta + 1e-4
    assert e.attribution.shape == (28,) and e.occlusion.shape == (28,)
    # the saliency map: zeroing the whole image's ink must not be what the map claims for ink-less
    # corners (nothing there to hide): those pixels move nothing
    assert abs(e.saliency[0, 0]) < 1e-6


def test_decided_at_is_the_first_step_from_which_the_answer_stays():
    belief = np.array([[.9, .1], [.2, .8], [.6, .4], [.3, .7], [.1, .9]])
    assert decided_at(belief, 1) == 3
    assert decided_at(belief, 0) == 5  # never stays: after the last step
    assert decided_at(belief[[1, 3, 4]], 1) == 0


def _fresh_run(model: str, view: str, shape=(8, 8), classes=None, dataset="digits") -> Run:
    classes = classes or [str(i) for i in range(10)]
    input_shape = VIEWS[view].shape(*shape)
    torch.manual_seed(0)
    net = create_model(model, input_shape, len(classes)).eval()
    cfg = Config(model=model, view=view, dataset=dataset, epochs=1).resolved()
    metrics = dict(classes=classes, image_shape=list(shape))
    return Run(FIXTURE_DATA, cfg, net, input_shape, len(classes),
               RunMetrics.from_dict(metrics, len(classes)), [])


CASES = [(m, v) for m, entry in MODELS.items() for v in entry.views]


@pytest.mark.parametrize("model, view", CASES)
def test_every_registered_model_and_view_is_explained(model, view):
    image = np.zeros((8, 8), np.uint8)
    image[1:7, 3:5] = 255
    run = _fresh_run(model, view)
    e = explain(run, image)
    d = e.to_dict()
    assert CONTRACT <= set(d) and np.array(d["saliency"]).shape == (8, 8)
    assert d["index"] is None and d["label"] is None and d["prediction"] in run.metrics["classes"]
    json.dumps(d, allow_nan=False)  # strict JSON
    if VIEWS[view].kind == "image":
        assert all(d[k] in (None, {}) for k in SEQUENCE)
        return
    steps = VIEWS[view].shape(8, 8)[0]
    assert SEQUENCE <= set(d) and d["steps"] == steps
    assert np.array(d["belief"]).shape == (steps, 10)
    assert len(d["occlusion"]) == len(d["attribution"]) == steps
    for name, values in d["state"].items():
        assert len(values) == steps, name
    expected = {"lstm": "layer2.c", "gru": "layer2.update_gate", "rnn": "layer2.h",
                "transformer": "layer2.attention", "s4d": "layer4.state", "lru": "layer4.state",
                "mingru": "layer3.state", "minlstm": "layer3.state"}
    if model in expected:
        assert expected[model] in d["state"]
    if view in ("pixels", "permuted"):
        assert sorted(d["order"]) == list(range(64))
        assert (d["order"] == list(range(64))) == (view == "pixels")


def test_class_names_not_digits_in_every_label():
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot"]
    run = _fresh_run("gru", "rows", (28, 28), names, "fashion-mnist")
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 8:20] = 200
    e = explain(run, image)
    assert e.prediction in names and e.classes == names


def test_an_imported_keras_model_is_explained(tmp_path):
    pytest.importorskip("h5py")
    from pathlib import Path

    from seqmnist.runs.keras_import import import_keras

    keras = Path(__file__).parent / "fixtures" / "keras"
    for name in ("lstm.keras", "cnn.h5"):
        folder = import_keras(keras / name, out=tmp_path, data_dir=DATA, log=quiet)
        e = explain(folder, 0, DATA)
        assert e.label == "7" and e.saliency.shape == (28, 28)
        assert (e.belief is not None) == name.startswith("lstm")


def test_the_command_writes_both_files_and_bad_input_is_one_line(trained, tmp_path, capsys):
    out = tmp_path / "explained"
    assert main(["explain", str(trained["lstm"]), str(trained["cnn"]), "--out", str(out),
                 "--data-dir", DATA, "--no-progress"]) == 0
    data = json.loads((out / "explain.json").read_text())
    images = data["images"]
    assert {i["model"] for i in images} == {"lstm", "cnn"}
    indices = [i["index"] for i in images if i["model"] == "lstm"]
    assert len(indices) >= 10 and len(set(indices)) == len(indices)  # a class each and more
    page = (out / "explain.html").read_text()
    assert "<script" in page and "http" not in page.replace("http-equiv", "")
    assert "default-src 'none'" in page and (out / "explain.html").stat().st_size < 8 << 20
    capsys.readouterr()
    not_image = tmp_path / "note.png"
    not_image.write_text("hello")
    for args, message in [
        ([str(tmp_path)], "not a finished run"),
        ([str(trained["lstm"]), "--index", "1000"], "outside the mnist test set (0..999)"),
        ([str(trained["lstm"]), "--image", str(not_image)], "not a supported image"),
        ([str(trained["lstm"]), "--index", "-1"], "at least 0"),
    ]:
        target = tmp_path / "bad"
        assert main(["explain", *args, "--out", str(target), "--data-dir", DATA,
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
        assert not target.exists()  # nothing half-written


def test_a_cnn_has_no_sequence_panels_but_its_saliency(trained):
    e = explain(trained["cnn"], 0, DATA)
    assert e.steps is None and e.belief is None and e.state == {}
    assert e.saliency.shape == (28, 28) and np.abs(e.saliency).max() > 0


def test_in_a_notebook_it_draws_itself(trained):
    e = explain(trained["rnn"], 0, DATA)
    html = e._repr_html_()
    assert html.startswith("<iframe srcdoc=") and "explain-data" in html
    assert e.view == "columns" and e.steps == 28


def test_the_test_set_view_agrees_with_the_explanations(trained, small_mnist):
    from seqmnist.reports.explainer import dataset_view, explain_set

    run = load_run(trained["lstm"])
    view = dataset_view(run, small_mnist, images=20, per_class=3)
    assert view["steps"] == 28 and np.array(view["importance"]).shape == (28, 10)
    assert np.array(view["pca"]["points"]).shape == (20, 2) and 0 < view["pca"]["explained"] <= 1
    # the median step at which it knows, per class: the explanations' decided_at, recomputed
    each = [explain(run, i, DATA) for i in range(20)]
    for c, name in enumerate(view["classes"]):
        mine = [e.decided_at for e, y in zip(each, small_mnist.y_test[:20])
                if y == c and e.prediction == name]
        assert view["median_decided_at"][name] == (float(np.median(mine)) if mine else None)
    # one importance value against a direct recomputation: class 0's first 3 images, rows 1-1
    x = to_input(small_mnist.x_test[np.flatnonzero(small_mnist.y_test == 0)[:3]], "rows")
    with torch.no_grad():
        p = run.model(x).softmax(-1)[:, 0]
        hidden = x.clone()
        hidden[:, 0] = 0
        drop = (p - run.model(hidden).softmax(-1)[:, 0]).mean().item()
    assert view["importance"][0, 0] == pytest.approx(drop, abs=1e-5)

    done = explain_set([trained["lstm"], trained["cnn"]], indices=[0, 5], data_dir=DATA,
                       progress=False, dataset_images=20)
    assert list(done.datasets) == [str(trained["lstm"])]  # the CNN has no steps
    lstm = [e for e in done.explanations if e.model == "lstm"]
    points = np.array(done.datasets[str(trained["lstm"])]["pca"]["points"])
    for e in lstm:  # an image's path ends where the map put that same test image
        assert e.path.shape == (28, 2)
        np.testing.assert_allclose(e.path[-1], points[e.index], atol=1e-4)
    assert all(e.path is None for e in done.explanations if e.model == "cnn")
    data = done.to_dict()
    json.dumps(data, allow_nan=False)
    assert set(data["datasets"][str(trained["lstm"])]) >= {"median_decided_at", "importance",
                                                           "pca", "block"}


STATEFUL = [(m, v) for m, entry in MODELS.items() if entry.states for v in entry.views]


@pytest.mark.parametrize("model, view", STATEFUL)
def test_every_model_that_declares_states_returns_them_step_by_step(model, view):
    """The registry's contract for ``states`` (as timm tests forward_intermediates over its
    registry): ``forward_states`` gives, for a batch, one (N, T, units) tensor per name, or
    (N, T, T) for attention; each step's value depends on the steps read so far only."""
    input_shape = VIEWS[view].shape(8, 8)
    torch.manual_seed(0)
    net = create_model(model, input_shape, 10).eval()
    x = torch.rand(3, *input_shape)
    states = net.forward_states(x)
    steps = input_shape[0]
    assert states and all(v.shape[:2] == (3, steps) for v in states.values()), \
        {k: tuple(v.shape) for k, v in states.items()}
    later = x.clone()
    later[:, steps // 2:] = torch.rand_like(later[:, steps // 2:])  # change the later steps
    changed = net.forward_states(later)
    for name, value in states.items():  # bidirectional stacks are not registered by default
        torch.testing.assert_close(changed[name][:, :steps // 2], value[:, :steps // 2],
                                   atol=1e-5, rtol=1e-4, msg=name)


def test_a_model_from_outside_the_package_shows_its_own_states(monkeypatch):
    """A model registered here, in a test module, that declares one state of its own: the
    explainer draws belief, occlusion, attributions and that state, with no edit anywhere in
    seqmnist; and its explain.html carries the state for the page to draw."""

    from seqmnist import models
    from seqmnist.reports.explain_html import render

    monkeypatch.setattr(models.registry, "MODELS", dict(models.MODELS))

    class Running(models.CausalClassifier):
        """A running mean of the steps: its 'memory' is the mean so far."""

        def __init__(self, input_shape, num_classes):
            super().__init__(input_shape, input_shape[1], num_classes)

        def encode(self, x):
            return x.cumsum(1) / torch.arange(1, x.shape[1] + 1).view(1, -1, 1)

        def forward_states(self, x):
            return {"memory": self.encode(x)}

    @models.register_model("running", models.SEQUENCE_VIEWS, steps=True, states=True,
                           lr=1e-3, view="rows")
    def running(input_shape, num_classes, **options):
        return Running(input_shape, num_classes)

    image = np.zeros((8, 8), np.uint8)
    image[1:7, 3:5] = 255
    e = explain(_fresh_run("running", "rows"), image)
    assert set(e.state) == {"memory"} and e.state["memory"].shape == (8, 8)
    np.testing.assert_allclose(e.state["memory"][-1], image.mean(0) / 255, atol=1e-6)
    assert e.belief.shape == (8, 10) and e.occlusion.shape == (8,) and e.attribution.shape == (8,)
    assert '"memory":' in render([e.to_dict()])
