"""The run record, defined once: what the recorder writes is what loading checks, older run
folders still load, and the recipe / runtime split is the one analysis and slots use."""

import json
import shutil
from dataclasses import fields, replace
from pathlib import Path

import pytest

from seqmnist.core.errors import CheckpointError
from seqmnist.evaluation.analysis import recipe_key
from seqmnist.evaluation.evaluate import evaluate
from seqmnist.runs.schema import VERSION, RunMetrics
from seqmnist.runs.slots import recipe_differences
from seqmnist.runs.storage import load_run
from seqmnist.runs.train import train
from seqmnist.training.config import RUNTIME_FIELDS, TrainConfig

# A finished run written by seqmnist 0.1.0 before the record was versioned (rnn on digits, one
# epoch; its plots and last checkpoint left out): folders users already have must keep loading.
OLD_RUN = Path(__file__).parent / "fixtures" / "folders" / "v1-rnn-digits"


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def new_run(tmp_path_factory):
    return train(TrainConfig(model="rnn", dataset="digits", epochs=1, limit=200),
                 out=tmp_path_factory.mktemp("runs"), log=quiet, progress=False).path


def test_what_is_written_is_the_definition_and_it_is_versioned(new_run):
    written = json.loads((new_run / "metrics.json").read_text())
    assert list(written) == [f.name for f in fields(RunMetrics) if f.name != "extra"]
    assert written["version"] == VERSION
    metrics = load_run(new_run).metrics
    assert isinstance(metrics, RunMetrics) and metrics.to_dict() == written


def test_the_record_is_typed_and_a_misspelt_field_is_an_error_where_it_is_read(new_run):
    metrics = load_run(new_run).metrics
    assert metrics.test_accuracy == metrics["test_accuracy"] == metrics.get("test_accuracy")
    with pytest.raises(AttributeError):
        metrics.test_acuracy  # noqa: B018
    with pytest.raises(KeyError, match="no field 'test_acuracy'"):
        metrics.get("test_acuracy")
    assert "best_epoch" not in metrics  # a tutorial run keeps none: None, not a key


def test_keys_the_definition_does_not_name_are_kept_and_written_back(new_run, tmp_path):
    folder = tmp_path / "extra"
    shutil.copytree(new_run, folder)
    data = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**data, "note": "by hand"}))
    metrics = load_run(folder).metrics
    assert metrics["note"] == "by hand" and metrics.to_dict()["note"] == "by hand"


def test_a_run_folder_from_before_the_version_loads_and_evaluates_as_recorded():
    stored = json.loads((OLD_RUN / "metrics.json").read_text())
    assert "version" not in stored  # really a folder of the earlier format
    run = load_run(OLD_RUN)
    assert run.metrics["version"] == 1 and run.config.model == "rnn"
    assert run.metrics["test_accuracy"] == stored["test_accuracy"]
    assert evaluate(run).accuracy == pytest.approx(stored["test_accuracy"], abs=1e-9)


def test_an_old_and_a_new_run_compare_together(new_run, tmp_path):
    from seqmnist.experiments.comparison import compare

    old = tmp_path / "old"
    shutil.copytree(OLD_RUN, old)
    result = compare(runs=[old, new_run], out=tmp_path / "report", log=quiet)
    assert len(result["groups"]) >= 1 and (tmp_path / "report" / "report.md").is_file()


@pytest.mark.parametrize("field, value, words", [
    ("version", VERSION + 1, "newer seqmnist"),
    ("version", "2", "version must be a whole number"),
    ("test_accuracy", "0.9", "test_accuracy must be a number"),
    ("epochs", 1.5, "epochs must be a whole number"),
    ("model", 3, "model must be text"),
    ("classes", ["0"] * 3, "classes must be 10 names"),
    ("confusion", [[1] * 10] * 9, "confusion must be 10 x 10"),
    ("anytime", {"steps": [1], "accuracy": []}, "anytime must hold"),
    ("provenance", [], "provenance must be a JSON object"),
    ("provenance", {"threads": "two"}, "provenance: threads must be a whole number"),
    ("provenance", {"recipe": [1]}, "provenance: recipe must be a table"),
])
def test_each_field_is_checked_by_its_definition(new_run, tmp_path, field, value, words):
    folder = tmp_path / "edited"
    shutil.copytree(new_run, folder)
    data = json.loads((folder / "metrics.json").read_text())
    (folder / "metrics.json").write_text(json.dumps({**data, field: value}))
    with pytest.raises(CheckpointError, match=words):
        load_run(folder)


def test_the_recipe_is_everything_but_the_seed_and_how_it_was_computed():
    cfg = TrainConfig(model="gru", dataset="digits", epochs=2).resolved()
    assert set(cfg.recipe()) | set(cfg.runtime()) | {"seed"} == set(vars(cfg))
    for name, value in [("threads", 2), ("replicas", 1), ("data_dir", "/x"), ("seed", 9),
                        ("deterministic", True), ("device", "cpu")]:
        assert recipe_key(replace(cfg, **{name: value})) == recipe_key(cfg), name
        if name != "seed":
            assert name in RUNTIME_FIELDS
    for name, value in [("lr", 0.5), ("epochs", 3), ("precision", "bf16"), ("view", "columns")]:
        assert recipe_key(replace(cfg, **{name: value})) != recipe_key(cfg), name


def test_a_slot_ignores_how_a_run_was_computed_but_not_a_named_backend():
    stored = TrainConfig(model="lstm", dataset="digits", epochs=2, backend="native",
                         threads=1).resolved()
    assert recipe_differences(stored, replace(stored, threads=4, deterministic=True)) == []
    assert recipe_differences(stored, replace(stored, backend="auto")) == []
    assert recipe_differences(stored, replace(stored, backend="torch")) == [
        "backend 'native', not 'torch'"]
    assert recipe_differences(stored, replace(stored, epochs=3)) == ["epochs 2, not 3"]


def test_a_finished_run_holds_every_file_the_recorder_writes(new_run):
    names = {p.name for p in new_run.iterdir()}
    assert names >= {"config.json", "provenance.json", "summary.txt", "history.json",
                     "history.csv", "checkpoint.pt", "model.safetensors", "predictions.npz",
                     "metrics.json", "loss.png", "accuracy.png", "confusion.png"}
    assert "checkpoint.prev.pt" not in names  # the previous checkpoint goes when it finishes
    for png in ("loss.png", "accuracy.png", "confusion.png"):
        assert (new_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_provenance_is_its_definition_with_the_machine_beside_it(new_run):
    from seqmnist.core import system
    from seqmnist.runs.schema import Provenance

    facts = json.loads((new_run / "provenance.json").read_text())
    fixed = {f.name for f in fields(Provenance)} - set(Provenance.FLAT)
    assert set(facts) == fixed | set(system.environment())
    assert facts["version"] == VERSION and facts["recipe"]["model"] == "rnn"
    assert facts["train_images"] == 200 and facts["resumed"] == []
    assert Provenance.check(facts) is facts
