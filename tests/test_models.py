import json
import math
import re

import pytest
import torch

from seqmnist.cli import main
from seqmnist.core.errors import UsageError
from seqmnist.data.views import VIEWS
from seqmnist.models.layers import draws_from_global_rng, trainable_parameters
from seqmnist.models.registry import MODELS, check_view, create_model, get_entry, list_models
from seqmnist.models.summary import summary_text

# Keras's counts for the same networks (model.summary() in TF 2.x).
KERAS_PARAMS = {"lstm": 36_510, "gru": 27_810, "rnn": 9_510, "cnn": 3_274_634}
# seqmnist's own defaults for the research models on 28 x 28 rows (their docstrings give the
# published configurations and how far these are from them).
OWN_PARAMS = {"transformer": 71_370, "tcn": 71_910, "s4d": 53_066, "lru": 102_986,
              "mingru": 102_474, "minlstm": 127_434}


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size", [(28, 28), (8, 8)])
def test_every_model_every_view_output_shape(name, size):
    for view in MODELS[name].views:
        shape = VIEWS[view].shape(*size)
        model = create_model(name, shape, 10).eval()
        out = model(torch.rand(3, *shape))
        assert out.shape == (3, 10), (name, view)
        if MODELS[name].steps and VIEWS[view].kind == "sequence":  # the registry says so
            assert model.forward_steps(torch.rand(3, *shape)).shape == (3, shape[0], 10)
        else:
            assert not hasattr(model, "forward_steps")


@pytest.mark.parametrize("name", list_models())
def test_parameter_counts(name):
    view = MODELS[name].defaults["view"]
    model = create_model(name, VIEWS[view].shape(28, 28), 10)
    expected = {**KERAS_PARAMS, **OWN_PARAMS}.get(name)  # a model registered elsewhere: none
    assert trainable_parameters(model) == expected if expected else trainable_parameters(model) > 0
    assert f"Total params: {trainable_parameters(model):,}" in \
        summary_text(model, VIEWS[view].shape(28, 28))


def test_summary_tables():
    lstm = summary_text(create_model("lstm", (28, 28), 10), (28, 28))
    assert "(None, 28, 50)" in lstm and "15,800" in lstm and "Total params: 36,510" in lstm
    cnn = summary_text(create_model("cnn", (1, 28, 28), 10), (1, 28, 28))
    assert "3,212,288" in cnn and "Total params: 3,274,634" in cnn and "MaxPooling2D" in cnn


def test_keras_initialisation_of_lstm():
    torch.manual_seed(0)
    model = create_model("lstm", (28, 28), 10)
    rnn = model.net[0].rnn
    hidden = 50
    # unit_forget_bias: forget gate (second block, order i, f, g, o as Keras) starts at 1.
    assert torch.all(rnn.bias_ih_l0[hidden:2 * hidden] == 1)
    assert torch.all(rnn.bias_ih_l0[:hidden] == 0) and torch.all(rnn.bias_ih_l0[2 * hidden:] == 0)
    # One bias per gate, as Keras: PyTorch's second bias stays a fixed zero.
    assert torch.all(rnn.bias_hh_l0 == 0) and not rnn.bias_hh_l0.requires_grad
    # Orthogonal recurrent kernel in Keras's (hidden, 4*hidden) layout: orthonormal rows.
    q = rnn.weight_hh_l0.detach().t()
    torch.testing.assert_close(q @ q.t(), torch.eye(hidden), atol=1e-5, rtol=0)
    # Glorot uniform input kernel: fan_in = 28 features, fan_out = 4 * 50.
    limit = math.sqrt(6 / (28 + 200))
    w = rnn.weight_ih_l0.detach()
    assert w.abs().max() <= limit and w.abs().max() > 0.9 * limit
    assert abs(w.std().item() - limit / math.sqrt(3)) < 0.1 * limit


def test_keras_initialisation_of_cnn():
    model = create_model("cnn", (1, 28, 28), 10)
    conv2 = model.net[2][0]
    limit = math.sqrt(6 / (32 * 25 + 64 * 25))
    assert conv2.weight.abs().max() <= limit and torch.all(conv2.bias == 0)
    dense = model.net[-1]
    assert dense.weight.abs().max() <= math.sqrt(6 / (1024 + 10))


def test_torch_default_init_is_available():
    model = create_model("lstm", (28, 28), 10, keras_init=False)
    assert trainable_parameters(model) == 36_910  # PyTorch's own count: two biases per gate


def test_options_and_mismatches():
    assert trainable_parameters(create_model("lstm", (28, 28), 10, hidden=8, layers=1)) == \
        4 * (28 * 8 + 8 * 8 + 8) + 8 * 10 + 10
    bi = create_model("gru", (28, 28), 10, bidirectional=True)
    assert bi(torch.rand(2, 28, 28)).shape == (2, 10)
    with pytest.raises(UsageError, match="cannot read the 'image' view"):
        check_view("lstm", "image")
    with pytest.raises(UsageError, match="cannot read the 'rows' view"):
        check_view("cnn", "rows")
    with pytest.raises(UsageError, match="needs sequence input"):
        create_model("lstm", (1, 28, 28), 10)
    with pytest.raises(UsageError, match="unknown model"):
        create_model("mlp")
    with pytest.raises(UsageError, match="unexpected keyword"):
        create_model("lstm", (28, 28), 10, colour="red")


def test_dropout_own_generator_is_reproducible_and_unbiased():
    from seqmnist.models.layers import Dropout

    drop = Dropout(0.2)
    x = torch.ones(200, 500)
    drop.generator = torch.Generator().manual_seed(1)
    a = drop(x)
    drop.generator = torch.Generator().manual_seed(1)
    assert torch.equal(a, drop(x))
    assert abs((a == 0).float().mean().item() - 0.2) < 0.01  # drop rate
    assert abs(a.mean().item() - 1.0) < 0.02  # kept units scaled by 1 / (1 - p)
    assert torch.equal(drop.eval()(x), x)


@pytest.mark.parametrize("backend", ["torch", "native"])
def test_replicas_give_the_full_batch_gradient(backend):
    """Two replicas on two halves of a batch = one model on the whole batch."""
    from torch.nn import functional as F

    from seqmnist.kernels.backends import install_backend, native_problem
    from seqmnist.training.parallel import Replicas

    torch.manual_seed(0)
    model = create_model("lstm", (28, 28), 10, dropout=0.0)
    if backend == "native" and native_problem(model):
        pytest.skip(native_problem(model))
    install_backend(model, backend)
    reference = create_model("lstm", (28, 28), 10, dropout=0.0)
    reference.load_state_dict(model.state_dict())
    x, y = torch.rand(9, 28, 28), torch.randint(0, 10, (9,))  # odd size: unequal halves
    replicas = Replicas(model, 2, seed=0, backend=backend)
    try:
        loss_sum, correct = replicas.forward_backward(x, y)
        assert int(correct) == int((reference(x).argmax(-1) == y).sum())
        # sync copies replica 0's weights into the others
        with torch.no_grad():
            for p in replicas.params[0]:
                p.add_(1.0)
        replicas.sync()
        for p, q in zip(replicas.params[0], replicas.params[1]):
            assert torch.equal(p, q)
    finally:
        replicas.close()
    loss = F.cross_entropy(reference(x), y)
    loss.backward()
    assert float(loss_sum) == pytest.approx(loss.item() * 9, rel=1e-5)
    for p, q in zip(replicas.params[0], [p for p in reference.parameters() if p.requires_grad]):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)
        assert p.grad.abs().sum() > 0


SEQUENCE_MODELS = [n for n in list_models() if "pixels" in MODELS[n].views]


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
@pytest.mark.parametrize("view", ["rows", "pixels"])
def test_causal_models_answer_after_each_step_without_peeking(name, view):
    """The answer after step t does not change when later steps change, and the answer after the
    last step is the model's answer."""
    torch.manual_seed(0)
    steps = 28 if view == "rows" else 60  # a short pixel sequence keeps the test quick
    shape = (steps, 28) if view == "rows" else (steps, 1)
    model = create_model(name, shape, 10).eval()
    x = torch.rand(2, *shape)
    later = x.clone()
    later[:, steps // 2:] = torch.rand_like(later[:, steps // 2:])
    with torch.no_grad():
        a, b = model.forward_steps(x), model.forward_steps(later)
        final = model(x)
    torch.testing.assert_close(a[:, :steps // 2], b[:, :steps // 2], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a[:, -1], b[:, -1])  # the later steps do matter
    torch.testing.assert_close(a[:, -1], final, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["s4d", "lru"])
def test_state_space_layers_are_the_same_as_convolution_and_as_recurrence(name):
    """Trained as an FFT convolution, answered step by step as a recurrence: the same numbers."""
    torch.manual_seed(1)
    layer = create_model(name, (50, 3), 10).blocks[0]
    ssm = layer.ssm if name == "s4d" else layer.lru
    u = torch.randn(4, 50, 64)
    with torch.no_grad():
        torch.testing.assert_close(ssm(u), ssm.recurrent(u), rtol=1e-4, atol=1e-4)


def test_each_replica_draws_dropout_from_its_own_seeded_generator():
    """Replicas train in parallel threads: a shared global RNG would make the masks depend on
    thread timing. Each replica's dropout layers use that replica's own generator."""
    from seqmnist.models.layers import Dropout
    from seqmnist.training.parallel import Replicas

    replicas = Replicas(create_model("gru", (28, 28), 10), 2, seed=3, backend="torch")
    try:
        for model, generator in zip(replicas.models, replicas.generators):
            drops = [m for m in model.modules() if isinstance(m, Dropout)]
            assert drops and all(d.generator is generator for d in drops)
        assert replicas.generators[0] is not replicas.generators[1]
    finally:
        replicas.close()


@pytest.mark.parametrize("model, options, message", [
    ("transformer", dict(heads=3), "d_model 64 must be a multiple of heads 3"),
    ("transformer", dict(d_model=64.5), "d_model must be a whole number, got 64.5"),
    ("cnn", dict(kernel=4), "kernel must be odd"),
    ("cnn", dict(num_classes=3), "num_classes come from the dataset"),
    ("cnn", dict(channels=5), "channels must be a list"),
    ("lstm", dict(hidden=10**9), "hidden must be in 1..4096, got 1000000000"),
    ("lstm", dict(hidden=-5), "hidden must be in 1..4096, got -5"),
    ("lstm", dict(hidden=True), "hidden must be a whole number, got True"),
    ("lstm", dict(hidden=4096, layers=64), r"needs about 127.0 GiB to train \(8,525,422,602 "
                                           r"parameters\), more than this machine's"),
    ("cnn", dict(channels=[4096] * 8), r"needs about [\d.]+ GiB to train \(2,940,353,546"),
    ("cnn", dict(dense=65536, channels=[512, 512]), "needs about"),  # the activations, too
])
def test_model_options_that_cannot_work_are_one_line_before_any_folder(tmp_path, small_mnist_dir,
                                                                       capsys, monkeypatch,
                                                                       model, options, message):
    from seqmnist import models

    monkeypatch.setattr(models.checks, "machine_memory", lambda: 24 * 2**30)  # the size of this machine
    args = ["train", model, "--epochs", "1", "--limit", "100", "--out", str(tmp_path / "runs"),
            "--data-dir", str(small_mnist_dir), "--no-progress"]
    for key, value in options.items():
        args += ["--model-option", f"{key}={json.dumps(value)}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_memory_estimate_counts_activations_at_the_batch_size(monkeypatch):
    from seqmnist import models
    from seqmnist.models.checks import check_model

    monkeypatch.setattr(models.checks, "machine_memory", lambda: 24 * 2**30)
    small = check_model("cnn", (1, 28, 28), 10, {}, batch_size=64)
    assert small == 3_274_634
    with pytest.raises(UsageError, match="activations per batch of 100000"):
        check_model("cnn", (1, 28, 28), 10, {}, batch_size=100_000)


@pytest.mark.parametrize("name", ["s4d", "lru"])
def test_every_steps_answer_in_one_pass_equals_the_recurrence(name):
    """forward_steps reads the causal convolution's output at every step (one pass); the
    recurrence kept for streaming gives the same answers step by step."""
    torch.manual_seed(2)
    model = create_model(name, (120, 1), 10).eval()
    x = torch.rand(3, 120, 1)
    with torch.no_grad():
        one_pass = model.forward_steps(x)
        stepwise = model.forward_steps(x, recurrent=True)
    torch.testing.assert_close(one_pass, stepwise, rtol=1e-4, atol=1e-4)



@pytest.mark.parametrize("name", list_models())
def test_every_parameter_receives_a_gradient(name):
    """timm's check: one backward pass through every registered model, at every view it reads,
    reaches every trainable parameter (a layer left out of the forward pass shows up here)."""
    for view in MODELS[name].views:
        shape = VIEWS[view].shape(8, 8)
        torch.manual_seed(0)
        model = create_model(name, shape, 10).train()
        model(torch.rand(4, *shape)).logsumexp(-1).sum().backward()
        missing = [n for n, p in model.named_parameters()
                   if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
        assert not missing, (name, view, missing)


def test_a_model_registered_in_a_module_of_ones_own_runs_through_the_suite(tmp_path):
    """One decorated function in a separate module (tests/plugin_model.py, loaded as a pytest
    plugin so that it is registered before collection) and the registry-parametrised tests run
    on it, with no list edited anywhere."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "plugin_model", "-p", "no:cacheprovider",
         "-k", "plugin", str(here / "test_models.py"), str(here / "test_explain.py"),
         str(here / "test_training.py")],
        capture_output=True, text=True, timeout=900, cwd=here.parent,
        env=dict(os.environ, PYTHONPATH=str(here)))
    summary = done.stdout.strip().splitlines()[-1]
    assert done.returncode == 0, done.stdout[-3000:]
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 8, summary  # shapes, parameters, gradients, causal steps, explain, training


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_draws_its_randomness_from_its_own_generators(name):
    """No dropout from PyTorch's global generator: replicas and seeds trained side by side in
    threads then draw exactly what they draw alone (comparison.train_side_by_side)."""
    shape = VIEWS[get_entry(name).views[0]].shape(28, 28)
    assert not draws_from_global_rng(create_model(name, shape, 10))


def test_the_transformers_attention_weights_are_not_dropped_by_default():
    model = create_model("transformer", (28, 28), 10)
    assert all(layer.self_attn.dropout == 0.0 for layer in model.encoder.layers)
    dropping = create_model("transformer", (28, 28), 10, attention_dropout=0.2)
    assert all(layer.self_attn.dropout == 0.2 for layer in dropping.encoder.layers)
    assert draws_from_global_rng(dropping)  # trained in worker processes, then


def test_the_transformers_layers_compute_what_the_encoder_does():
    """Its pre-norm layers written out (for the fused causal attention at inference too) are the
    same function as nn.TransformerEncoder over the same layers, in training and in eval mode."""
    from torch import nn

    torch.manual_seed(0)
    model = create_model("transformer", (28, 28), 10, dropout=0.0)
    x = torch.rand(5, 28, 28)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        h = model.embed(x) + model.position
        mask = nn.Transformer.generate_square_subsequent_mask(28)
        expected = model.norm(model.encoder(h, mask=mask, is_causal=True))
        torch.testing.assert_close(model.encode(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 2, 3, 28, 29, 50, 784, 785])
def test_s4d_kernel_is_the_direct_vandermonde_sum(steps):
    """The kernel is computed in two levels (l = w m + j); it must be K_l = 2 Re(sum_n C'_n
    exp(dt A_n l)) at every l, with D added at l = 0, whether or not steps is a square."""
    from seqmnist.models.s4d import S4DLayer

    torch.manual_seed(3)
    layer = S4DLayer(5, 7)
    with torch.no_grad():
        layer.log_dt.uniform_(-3, -1)  # faster decay and turning than at init: every term counts
        dta, c = layer._discrete()
        lags = torch.arange(steps, dtype=torch.float64)
        direct = 2 * (c.to(torch.complex128)[..., None]
                      * torch.exp(dta.to(torch.complex128)[..., None] * lags)).sum(1).real
        direct[:, 0] += layer.d.double()
        torch.testing.assert_close(layer.kernel(steps).double(), direct, rtol=1e-5, atol=1e-5)


def test_lru_layer_is_its_definition():
    """The LRU's convolution and recurrence share their input and output projections, so their
    agreement alone would not catch a wrong one: both are checked against the paper's equations
    written out in complex float64, h_t = lambda h_{t-1} + gamma (B u_t), y_t = Re(C h_t) + D u_t."""
    from seqmnist.models.lru import LRULayer

    torch.manual_seed(4)
    layer = LRULayer(6, 5)
    u = torch.randn(3, 40, 6)
    with torch.no_grad():
        lam = torch.exp(torch.complex(-torch.exp(layer.nu_log), torch.exp(layer.theta_log))).cdouble()
        b = torch.view_as_complex(layer.b).cdouble() * torch.exp(layer.gamma_log).double()[:, None]
        c, h, out = torch.view_as_complex(layer.c).cdouble(), torch.zeros(3, 5, dtype=torch.cdouble), []
        for t in range(40):
            h = lam * h + u[:, t].cdouble() @ b.T
            out.append((h @ c.T).real + u[:, t].double() * layer.d.double())
        expected = torch.stack(out, 1)
        torch.testing.assert_close(layer(u).double(), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(layer.recurrent(u).double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_the_causal_fft_convolution_and_its_own_backward(dtype):
    """S4D and the LRU convolve by FFT with a hand-written backward: the forward is the causal
    sum written out, and gradcheck compares both gradients with finite differences."""
    from seqmnist.models.fftconv import causal_conv

    torch.manual_seed(5)
    u = torch.randn(2, 7, 3, dtype=dtype, requires_grad=True)
    k = torch.randn(3, 7, dtype=dtype, requires_grad=True)
    direct = torch.stack([sum(k[:, t - s] * u[:, s] for s in range(t + 1)) for t in range(7)], 1)
    torch.testing.assert_close(causal_conv(u, k), direct)
    assert torch.autograd.gradcheck(causal_conv, (u, k))
    with pytest.raises(ValueError, match="both real or both complex"):
        causal_conv(u.real.detach() if dtype.is_complex else u, k.to(torch.complex128))


def test_a_model_far_too_big_is_refused_from_its_shapes_alone(monkeypatch):
    """s4d with d_model=4096 and 64 layers: its 1.1e9 parameters pass the parameter check, its
    activations do not; they are counted on the meta device, so the model is never built in
    real memory (it used to take 75 s and 4.9 GB before the refusal)."""
    import torch

    from seqmnist import models
    from seqmnist.models.checks import check_model

    built_on = []
    real_create = models.create_model

    def recording(*args, **kwargs):
        built_on.append(torch.get_default_device().type)
        return real_create(*args, **kwargs)

    monkeypatch.setattr(models.checks, "machine_memory", lambda: 24 * 2**30)
    monkeypatch.setattr(models.checks, "create_model", recording)
    with pytest.raises(UsageError, match=r"needs about [\d.]+ GiB to train \(1,108,774,922 "
                                         r"parameters, [\d,]+ activations per batch of 64\)"):
        check_model("s4d", (28, 28), 10, {"d_model": 4096, "layers": 64})
    assert built_on == ["meta"]


def test_a_second_registration_of_a_name_is_an_error_naming_both_places(monkeypatch):
    """Other people's code registers models: a clash is never a silent overwrite."""
    from torch import nn

    from seqmnist import models
    from seqmnist.data import datasets as data
    from seqmnist.data import views
    from seqmnist.data.datasets import DATASETS, register_dataset
    from seqmnist.data.views import register_view

    monkeypatch.setattr(models.registry, "MODELS", dict(models.MODELS))

    def lstm(input_shape, num_classes, **options):
        return nn.Linear(1, num_classes)

    with pytest.raises(UsageError, match=r"model 'lstm' is already registered by "
                                         r"seqmnist\.models\.recurrent\..* \(.*recurrent\.py:\d+\)"
                                         r"; test_models\..*lstm .* registers it again"):
        models.register_model("lstm", ("rows",))(lstm)
    assert models.registry.MODELS["lstm"].build is not lstm  # the built-in is still there
    models.register_model("lstm", ("rows",), replace=True)(lstm)
    assert models.registry.MODELS["lstm"].build is lstm
    monkeypatch.setattr(data, "DATASETS", dict(DATASETS))
    with pytest.raises(UsageError, match="dataset 'mnist' is already registered by "
                                         "seqmnist.data.catalogue"):
        data.register_dataset(DATASETS["mnist"])
    assert register_dataset is not None
    monkeypatch.setattr(views, "VIEWS", dict(views.VIEWS))
    with pytest.raises(UsageError, match="view 'rows' is already registered by seqmnist.data.views"):
        views.register_view("rows", "sequence", "again", lambda h, w: (h, w))(lambda x, s: x)
    assert register_view is not None


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_min_rnns_parallel_scan_equals_their_recurrence_in_float64(name):
    """Feng et al.'s minGRU and minLSTM train by a log-space parallel scan and answer step by
    step by the plain recurrence: the same states (float64, so rounding cannot hide a slip),
    over a sequence long enough (300 steps) for the running log sums to grow large."""
    torch.manual_seed(4)
    model = create_model(name, (300, 2), 10).double().eval()
    layer = model.blocks[0].rnn
    u = torch.randn(3, 300, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer.scan(u), layer.recurrent(u), rtol=1e-9, atol=1e-12)
    # the recurrence with a graph (every step kept) is the same numbers again
    torch.testing.assert_close(layer.recurrent(u).detach(), layer.scan(u).detach(), rtol=1e-9,
                               atol=1e-12)
    # a model trains by the scan and, without gradients on a CPU, answers by the recurrence
    x = torch.rand(3, 300, 2, dtype=torch.float64)
    trained_way = model.head(model.encode(x)).detach()
    torch.testing.assert_close(model.forward_steps(x), trained_way, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_min_rnns_gates_are_the_papers(name):
    """One step from h_0 = 0 by hand: minGRU's h_1 = z g(h~), minLSTM's h_1 = i' g(h~) with
    i' = i / (f + i) (the normalised input gate), g(x) = x + 1/2 for x >= 0, else sigmoid(x)."""
    from seqmnist.models.minrnn import g

    torch.manual_seed(5)
    layer = create_model(name, (5, 3), 10).blocks[0].rnn.double()
    u = torch.randn(2, 1, 64, dtype=torch.float64)
    parts = layer.proj(u).chunk(2 if name == "mingru" else 3, dim=-1)
    if name == "mingru":
        expected = torch.sigmoid(parts[0]) * g(parts[1])
    else:
        f, i = torch.sigmoid(parts[0]), torch.sigmoid(parts[1])
        expected = i / (f + i) * g(parts[2])
    with torch.no_grad():
        torch.testing.assert_close(layer(u), expected, rtol=1e-12, atol=1e-12)
    assert bool((g(torch.tensor([-3.0, 0.0, 2.0])) == torch.tensor(
        [torch.sigmoid(torch.tensor(-3.0)).item(), 0.5, 2.5])).all())
