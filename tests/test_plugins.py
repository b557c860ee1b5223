"""Other people's models from their own code: a file given with --plugin, and an installed
package's entry point found without any flag. Each runs in a child process, as a user runs it
(a plug-in's models stay registered in the process that loaded them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MODEL = '''
import torch
from torch import nn

from seqmnist.models import SEQUENCE_VIEWS, CausalClassifier, register_model


class Running(CausalClassifier):
    """A running mean of the steps, then a GRU cell's worth of memory: its state is the mean."""

    def __init__(self, input_shape, num_classes, width=32):
        super().__init__(input_shape, width, num_classes)
        self.inp = nn.Linear(self.features, width)
        self.at = nn.Parameter(torch.zeros(1, self.steps, width))

    def encode(self, x):
        h = torch.tanh(self.inp(x) + self.at[:, :x.shape[1]])
        return h.cumsum(1) / torch.arange(1, x.shape[1] + 1).view(1, -1, 1)

    def forward_states(self, x):
        return {{"memory": self.encode(x)}}


@register_model("{name}", SEQUENCE_VIEWS, steps=True, states=True, lr=3e-3, view="rows")
def running(input_shape, num_classes, **options):
    """A running mean over the steps, registered from outside seqmnist."""
    return {body}
'''
GOOD = MODEL.format(name="running", body="Running(input_shape, num_classes, **options)")


def seqmnist(*args, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqmnist", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, **(env or {})), cwd=cwd)


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory, small_mnist_dir):
    tmp = tmp_path_factory.mktemp("plugin")
    plugin = tmp / "running_model.py"
    plugin.write_text(GOOD)
    done = seqmnist("train", "running", "--plugin", plugin, "--epochs", "1", "--limit", "300",
                    "--data-dir", small_mnist_dir, "--out", tmp / "runs", "--no-progress")
    assert done.returncode == 0, done.stderr
    (run,) = (tmp / "runs").iterdir()
    return tmp, plugin, run


def test_a_model_from_a_file_trains_and_records_where_it_came_from(plugin_run):
    import hashlib

    tmp, plugin, run = plugin_run
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["plugin"]["plugin"] == str(plugin.resolve())
    assert provenance["plugin"]["sha256"] == hashlib.sha256(plugin.read_bytes()).hexdigest()
    assert provenance["plugin"]["models"] == ["running"]
    listed = seqmnist("models", "--plugin", plugin)
    assert listed.returncode == 0
    line = next(x for x in listed.stdout.splitlines() if x.startswith("running "))
    assert f"plug-in {plugin.resolve()}" in line and "steps, states" in line
    assert next(x for x in listed.stdout.splitlines() if x.startswith("lstm ")).split()[1] == \
        "built-in"


def test_it_meets_a_built_in_in_a_comparison_and_shows_its_state(plugin_run, small_mnist_dir):
    tmp, plugin, run = plugin_run
    done = seqmnist("compare", "running", "lstm", "--plugin", plugin, "--epochs", "1", "--limit",
                    "300", "--data-dir", small_mnist_dir, "--out", tmp / "cmp", "--no-progress")
    assert done.returncode == 0, done.stderr
    verdict = json.loads((tmp / "cmp" / "comparison.json").read_text())["verdict"]
    assert "running (rows)" in verdict and "lstm (rows)" in verdict
    done = seqmnist("explain", run, "--plugin", plugin, "--index", "0", "--data-dir",
                    small_mnist_dir, "--out", tmp / "explained", "--no-progress")
    assert done.returncode == 0, done.stderr
    (image,) = json.loads((tmp / "explained" / "explain.json").read_text())["images"]
    assert set(image["state"]) == {"memory"} and len(image["belief"]) == 28
    assert len(image["occlusion"]) == len(image["attribution"]) == 28


def test_the_page_serves_it(plugin_run):
    code = ("import sys; from seqmnist.models import load_plugin; load_plugin(sys.argv[1]); "
            "from starlette.testclient import TestClient; "
            "from seqmnist.web import create_app, resolve_runs; "
            "c = TestClient(create_app(resolve_runs([sys.argv[2]])), base_url='http://127.0.0.1'); "
            "print(c.get('/api/models').json()['models'][0]['model'])")
    _, plugin, run = plugin_run
    done = subprocess.run([sys.executable, "-c", code, str(plugin), str(run)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "running", done.stderr


def test_a_run_reloaded_without_its_plugin_says_which_to_load(plugin_run, small_mnist_dir,
                                                               tmp_path):
    import shutil

    _, plugin, run = plugin_run
    done = seqmnist("evaluate", run, "--data-dir", small_mnist_dir)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"trained with the plug-in {plugin.resolve()}: load it with --plugin" in done.stderr
    # the file changed since, the weights still fit: a warning, and the run evaluates
    changed = tmp_path / "running_model.py"
    shutil.copy(plugin, changed)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    provenance = json.loads((copy / "provenance.json").read_text())
    provenance["plugin"]["plugin"] = str(changed.resolve())
    (copy / "provenance.json").write_text(json.dumps(provenance))
    changed.write_text(GOOD + "\n# edited since\n")
    done = seqmnist("evaluate", copy, "--plugin", changed, "--data-dir", small_mnist_dir)
    assert done.returncode == 0, done.stderr
    assert "has changed since this run was trained" in done.stderr


def test_an_installed_package_brings_its_model_without_a_flag(tmp_path, small_mnist_dir):
    site = tmp_path / "site"
    (site / "theirpkg").mkdir(parents=True)
    (site / "theirpkg" / "__init__.py").write_text(
        MODEL.format(name="theirs", body="Running(input_shape, num_classes, **options)"))
    info = site / "theirpkg-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: theirpkg\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[seqmnist.models]\ntheirs = theirpkg\n")
    env = {"PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = seqmnist("models", env=env)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("theirs "))
    assert "plug-in theirpkg (entry point theirs)" in line
    summary = seqmnist("summary", "theirs", env=env)
    assert summary.returncode == 0 and "Total params" in summary.stdout
    # through a comparison beside a built-in and the explainer, with no flag anywhere
    done = seqmnist("compare", "theirs", "rnn", "--epochs", "1", "--limit", "200", "--data-dir",
                    small_mnist_dir, "--out", tmp_path / "cmp", "--no-progress", env=env)
    assert done.returncode == 0, done.stderr
    assert "theirs (rows)" in json.loads((tmp_path / "cmp" / "comparison.json").read_text())[
        "verdict"]
    (run,) = (tmp_path / "cmp" / "runs" / "theirs-mnist-rows-seed0").iterdir()
    assert json.loads((run / "provenance.json").read_text())["plugin"]["version"] == "0.3"
    done = seqmnist("explain", run, "--index", "0", "--data-dir", small_mnist_dir, "--out",
                    tmp_path / "explained", "--no-progress", env=env)
    assert done.returncode == 0, done.stderr
    (image,) = json.loads((tmp_path / "explained" / "explain.json").read_text())["images"]
    assert set(image["state"]) == {"memory"}
    # a broken installed plug-in is left out with one line; everything else works
    (site / "theirpkg" / "__init__.py").write_text("raise RuntimeError('broken on purpose')\n")
    done = seqmnist("models", env=env)
    assert done.returncode == 0 and "lstm " in done.stdout
    assert "installed plug-in 'theirs' (theirpkg) left out" in done.stderr
    assert "broken on purpose" in done.stderr and "Traceback" not in done.stderr


BROKEN = {
    "missing": (None, "no such file"),
    "import": ("import torch\nx = 1 / 0\n", "does not import: ZeroDivisionError: division by zero "
                                            "at {path}:2"),
    "clash": (MODEL.format(name="lstm", body="Running(input_shape, num_classes)"),
              "model 'lstm' is already registered by seqmnist.models.recurrent"),
    "not a module": (MODEL.format(name="broken", body="'a string'"),
                     "its factory returned str, not a torch.nn.Module"),
    "wrong shape": (MODEL.replace("return self.head(", "return (").format(
        name="broken", body="Wrong(input_shape, num_classes)") +
        "\nclass Wrong(Running):\n    def forward(self, x):\n        return x[:, -1]\n",
        "answers (2, 28) for a batch of 2 inputs of [28, 28]; a model answers (batch, 10)"),
    "forward fails": (MODEL.format(name="broken", body="Failing(input_shape, num_classes)") +
                      "\nclass Failing(Running):\n    def forward(self, x):\n"
                      "        raise KeyError('no such weight')\n",
                      "cannot be built for [28, 28] inputs: KeyError: 'no such weight'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_plugin_is_one_line_and_exit_2(case, tmp_path, small_mnist_dir):
    text, message = BROKEN[case]
    path = tmp_path / "theirs.py"
    if text is not None:
        path.write_text(text)
    model = "broken" if case in ("not a module", "wrong shape", "forward fails") else "lstm"
    done = seqmnist("train", model, "--plugin", path, "--epochs", "1", "--limit", "100",
                    "--data-dir", small_mnist_dir, "--out", tmp_path / "runs", "--no-progress")
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert message.format(path=path.resolve()) in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_readme_example_plugs_in_as_written(tmp_path, small_mnist_dir):
    from conftest import REPO

    text = (REPO / "README.md").read_text()
    section = text[text.index("### Bring your own model"):]
    start = section.index("```python") + len("```python")
    (tmp_path / "running_mean.py").write_text(section[start:section.index("```", start)])
    done = seqmnist("train", "running", "--plugin", "running_mean.py", "--epochs", "3",
                    "--data-dir", small_mnist_dir, "--out", "runs", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"] > 0.2  # chance 0.1; 0.30 measured


# --- check-model: the registry's contract, for anyone's model ----------------------------------

@pytest.mark.parametrize("model", ["lstm", "gru", "rnn", "cnn", "transformer", "tcn", "s4d",
                                   "lru"])
def test_every_built_in_keeps_the_contract(model):
    """On its default view (every view is the registry-parametrised tests' job; the command
    checks them all)."""
    from seqmnist.models import get_entry
    from seqmnist.reports.contract import check_contract

    checks = check_contract(model, views=[get_entry(model).defaults["view"]])
    failed = [c for c in checks if c.passed is False]
    assert not failed, failed
    names = {c.name for c in checks}
    assert {"builds", "output shape", "gradient to every parameter", "loss falls on one batch",
            "one training step at batch 64"} <= names
    assert ("causal (answers after every step)" in names) == (model != "cnn")


CONTRACT_BREAKERS = {
    "peeks at later steps": ('''
class Peeking(Running):
    def encode(self, x):
        h = torch.tanh(self.inp(x) + self.at[:, :x.shape[1]])
        return h + h.mean(1, keepdim=True)  # every step sees the whole sequence
''', "Peeking(input_shape, num_classes)", "causal (answers after every step)"),
    "a parameter no gradient reaches": ('''
class Frozen(Running):
    def __init__(self, input_shape, num_classes):
        super().__init__(input_shape, num_classes)
        self.unused = nn.Parameter(torch.zeros(3))
''', "Frozen(input_shape, num_classes)", "gradient to every parameter"),
    "the wrong output shape": ('''
class Wide(Running):
    def forward(self, x):
        return torch.cat([super().forward(x), super().forward(x)], -1)
''', "Wide(input_shape, num_classes)", "output shape"),
}


@pytest.mark.parametrize("case", sorted(CONTRACT_BREAKERS))
def test_check_model_catches_each_broken_model_in_its_row(case, tmp_path):
    extra, body, row = CONTRACT_BREAKERS[case]
    path = tmp_path / "broken.py"
    path.write_text(MODEL.format(name="broken", body=body) + extra)
    done = seqmnist("check-model", "broken", "--plugin", path, "--view", "rows")
    assert done.returncode == 1, done.stdout + done.stderr
    failed = [line.split("  ")[0].strip() for line in done.stdout.splitlines()
              if " FAIL " in line]
    # the row for what is broken fails (a wrong shape also makes "last step equals the
    # answer" fail, which compares the two); every other row passes
    assert failed[0] == row and set(failed) <= {row, "last step equals the answer"}, \
        done.stdout
    good = tmp_path / "good.py"
    good.write_text(GOOD)
    done = seqmnist("check-model", "running", "--plugin", good, "--view", "rows")
    assert done.returncode == 0 and "all 7 checks passed" in done.stdout, done.stdout


def test_a_sweep_spec_names_its_plugins(tmp_path, small_mnist_dir):
    """plugins = [...] in the spec (a file relative to the spec): the sweep trains the model
    and its run records the plug-in, with no --plugin on the command line."""
    (tmp_path / "running_model.py").write_text(GOOD)
    spec = tmp_path / "grid.toml"
    spec.write_text('plugins = ["running_model.py"]\nmodels = ["running", "rnn"]\n'
                    'datasets = ["mnist"]\nseeds = [0]\n[recipe]\nepochs = 1\nlimit = 200\n')
    done = seqmnist("sweep", spec, "--out", tmp_path / "sweep", "--data-dir", small_mnist_dir,
                    "--no-progress")
    assert done.returncode == 0, done.stderr
    (run,) = (tmp_path / "sweep" / "runs" / "running-mnist-rows-seed0").iterdir()
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["plugin"]["plugin"] == str((tmp_path / "running_model.py").resolve())
    bad = tmp_path / "bad.toml"
    bad.write_text('plugins = ["nowhere.py"]\nmodels = ["rnn"]\ndatasets = ["mnist"]\n'
                   'seeds = [0]\n')
    done = seqmnist("sweep", bad, "--dry-run")
    assert done.returncode == 2 and "nowhere.py: no such file" in done.stderr, done.stderr
