"""The comparison report: grouping, every section, what the verdict may say, provenance."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURE_DATA
from seqmnist import TrainConfig, compare, train
from seqmnist.core.errors import UsageError
from seqmnist.evaluation.analysis import group_runs
from seqmnist.runs.storage import load_predictions, load_run


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def two_seed_report(small_mnist_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    summary = compare(["lstm", "cnn"], seeds=2, epochs=1, limit=300, data_dir=small_mnist_dir,
                      out=tmp / "report", runs_dir=tmp / "runs", progress=False, log=quiet)
    return tmp, summary


def test_two_seed_compare_report_holds_every_section(two_seed_report):
    tmp, summary = two_seed_report
    data = json.loads((tmp / "report" / "comparison.json").read_text())
    assert [g["name"] for g in data["groups"]] == ["lstm (rows)", "cnn (image)"]
    for g in data["groups"]:
        assert g["seeds"] == [0, 1] and g["accuracy"]["n"] == 2
        assert len(g["accuracy"]["ci_seeds"]) == 2 and len(g["accuracy"]["ci_images"]) == 2
        assert set(g["per_class"]) == {str(i) for i in range(10)}
        assert len(g["curves"]["val_accuracy"]["low"]) == 1
        assert g["provenance"]["torch"] and g["provenance"]["cpu"]
        assert g["recipe"]["epochs"] == 1 and g["quick"]
    lstm, cnn = data["groups"]
    assert lstm["anytime"]["steps"] == list(range(1, 29)) and cnn["anytime"] is None
    assert lstm["recipe"]["backend"] and cnn["recipe"]["backend"] == ["torch"]
    (pair,) = data["pairs"]
    assert len(pair["mcnemar"]) == 2 and pair["ci_method"] == "t interval across seed pairs"
    for t in pair["mcnemar"]:
        assert t["both_right"] + t["only_a"] + t["only_b"] + t["both_wrong"] == 1000
    assert pair["flips"]["a_only"]["count"] + pair["flips"]["b_only"]["count"] > 0
    md = (tmp / "report" / "report.md").read_text()
    html = (tmp / "report" / "report.html").read_text()
    for section in ("## Models", "## Pairwise tests", "## Per-class test accuracy",
                    "## Training recipe", "## Where and how each model ran", "## Method"):
        assert section in md and section[3:] in html
    assert "Quick run, not a result" in md and "Quick run, not a result" in html
    assert md.index("Quick run") < md.index("## Models")  # near the top
    assert "300 of 2,000" in md and "1 epoch instead of the tutorial recipe's 10" in md
    for png in ("loss", "accuracy", "anytime", "confusion", "flips-0-a_only", "mistakes-0"):
        assert (tmp / "report" / f"{png}.png").is_file(), png
    assert html.count("data:image/png;base64,") >= 6
    assert "http://" not in html and "https://" not in html  # self-contained
    assert summary["verdict"] == data["verdict"]


def test_runs_are_grouped_by_recipe_and_reused_without_retraining(two_seed_report,
                                                                   small_mnist_dir):
    tmp, _ = two_seed_report
    runs = [load_run(p) for p in sorted((tmp / "runs").iterdir())]
    groups = group_runs(runs)
    assert sorted((g.name, tuple(g.seeds)) for g in groups) == [("cnn (image)", (0, 1)),
                                                                 ("lstm (rows)", (0, 1))]
    again = compare(runs=[r.path for r in runs], out=tmp / "again", data_dir=small_mnist_dir,
                    log=quiet)
    first = json.loads((tmp / "report" / "comparison.json").read_text())
    assert again["verdict"] == first["verdict"]  # the same runs: the same report
    with pytest.raises(UsageError, match="same seed"):
        group_runs(runs + runs[:1])


def test_every_run_stores_its_test_predictions(two_seed_report):
    tmp, _ = two_seed_report
    run = sorted((tmp / "runs").iterdir())[0]
    p = load_predictions(run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert p["probabilities"].shape == (1000, 10)
    assert np.allclose(p["probabilities"].sum(1), 1, atol=1e-4)
    assert (p["predictions"] == p["probabilities"].argmax(1)).all()
    assert (p["predictions"] == p["labels"]).mean() == pytest.approx(metrics["test_accuracy"])


def test_two_identical_models_are_not_called_different(tmp_path):
    """Two recipes that differ only in the evaluation batch size predict the same: the verdict
    must not call either one more accurate."""
    runs = []
    for eval_batch in (90, 360):
        for seed in (0, 1):
            cfg = TrainConfig(model="rnn", dataset="digits", epochs=1, seed=seed,
                              eval_batch_size=eval_batch)
            runs.append(train(cfg, out=tmp_path / "runs", log=quiet, progress=False).path)
    summary = compare(runs=runs, out=tmp_path / "report", log=quiet)
    assert summary["verdict"].startswith("No significant difference between rnn (rows")
    assert "eval_batch_size" in summary["verdict"]
    (pair,) = summary["pairs"]
    assert pair["difference"] == 0 and not pair["significant"]


def test_mixed_datasets_are_an_error(two_seed_report, tmp_path):
    tmp, _ = two_seed_report
    digits = train(TrainConfig(model="rnn", dataset="digits", epochs=1), out=tmp_path,
                   log=quiet, progress=False).path
    with pytest.raises(UsageError, match="same dataset"):
        compare(runs=[sorted((tmp / "runs").iterdir())[0], digits], out=tmp_path / "r", log=quiet)


def test_side_by_side_runs_start_with_the_longest(small_mnist):
    from seqmnist.experiments.comparison import longest_first

    cfgs = [TrainConfig(model=m, seed=k).resolved() for m in ("lstm", "cnn") for k in (0, 1)]
    # the CNN's step costs several times the LSTM's (BENCHMARKS.md section 7): its runs go first,
    # each model's seeds in their order
    assert longest_first(cfgs, small_mnist) == [2, 3, 0, 1]
    same = [TrainConfig(model="rnn", epochs=1).resolved(),
            TrainConfig(model="rnn", epochs=5).resolved(),
            TrainConfig(model="rnn", epochs=5, limit=100).resolved()]
    assert longest_first(same, small_mnist) == [1, 0, 2]  # epochs x images decide


def test_the_report_says_when_each_sequence_model_knows(small_runs, small_mnist, tmp_path):
    """The compare report's inside section: for the LSTM (not the CNN), the median step from
    which its answer stays, per class, equal to the explainer's own test-set view."""
    from seqmnist.reports.dataset_view import dataset_view
    from seqmnist.reports.report import INSIDE_IMAGES, INSIDE_PER_CLASS
    from seqmnist.runs.storage import load_run

    summary = compare(runs=[small_runs["lstm"], small_runs["cnn"]], out=tmp_path / "r",
                      log=lambda *_: None, data_dir=FIXTURE_DATA / "mnist")
    inside = summary["inside"]
    assert list(inside) == ["lstm (rows)"]
    view = dataset_view(load_run(small_runs["lstm"]), small_mnist, INSIDE_IMAGES, INSIDE_PER_CLASS)
    assert inside["lstm (rows)"]["median_decided_at"] == view["median_decided_at"]
    assert np.array(inside["lstm (rows)"]["importance"]).shape == (28, 10)
    report = (tmp_path / "r" / "report.md").read_text()
    assert "## When each sequence model knows" in report and "importance.png" in report
    assert (tmp_path / "r" / "importance.png").stat().st_size > 5000


def test_a_report_is_never_written_into_a_run_folder(small_runs, tmp_path, capsys):
    """compare --out at (or inside) a run folder would replace the run's own accuracy.png and
    confusion.png: refused before anything is written."""
    from seqmnist.cli import main

    run = small_runs["lstm"]
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for out in (run, run / "report"):
        assert main(["compare", "--runs", str(run), "--out", str(out)]) == 2
        assert "is inside the run folder" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert not (run / "report").exists()


def test_every_figure_the_report_prints_is_the_runs_own(two_seed_report):
    """Each number of the report recomputed from the runs' own files: per run, the metrics agree
    with the confusion matrix and the history; per group, the report's summaries are those of
    its runs; and report.md prints them."""
    import statistics

    tmp, _ = two_seed_report
    data = json.loads((tmp / "report" / "comparison.json").read_text())
    md = (tmp / "report" / "report.md").read_text()
    for g in data["groups"]:
        metrics = [json.loads((Path(r) / "metrics.json").read_text()) for r in g["runs"]]
        histories = [json.loads((Path(r) / "history.json").read_text()) for r in g["runs"]]
        for m, h in zip(metrics, histories):
            cm = np.array(m["confusion"])
            assert cm.sum() == m["test_images"] == 1000
            assert m["test_accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), abs=1e-12)
            for i, c in enumerate(m["classes"]):
                assert m["per_class_accuracy"][c] == pytest.approx(cm[i, i] / cm[i].sum())
            assert m["epochs"] == len(h)
            assert m["train_seconds"] == pytest.approx(sum(r["seconds"] for r in h), abs=1e-3)
            assert m["seconds_per_epoch"] == pytest.approx(m["train_seconds"] / len(h), abs=1e-3)
            for w in m["misclassified"]:
                assert w[1] != w[2] and cm[w[1], w[2]] > 0
        assert g["confusion"] == np.sum([m["confusion"] for m in metrics], axis=0).tolist()
        accs = [m["test_accuracy"] for m in metrics]
        assert g["accuracy"]["mean"] == pytest.approx(statistics.mean(accs))
        assert g["accuracy"]["std"] == pytest.approx(statistics.stdev(accs))
        assert g["loss"]["mean"] == pytest.approx(statistics.mean(m["test_loss"] for m in metrics))
        assert g["params"] == metrics[0]["params"]
        assert g["seconds_per_epoch"]["mean"] == pytest.approx(
            statistics.mean(m["seconds_per_epoch"] for m in metrics))
        for c in g["classes"]:
            assert g["per_class"][c]["mean"] == pytest.approx(
                statistics.mean(m["per_class_accuracy"][c] for m in metrics))
        row = f"| {g['name']} | 2 | {g['accuracy']['mean'] * 100:.2f}% ± " \
              f"{g['accuracy']['std'] * 100:.2f} |"
        assert row in md, row
        first = g["classes"][0]
        assert f"{g['per_class'][first]['mean'] * 100:.2f}%" in md
        assert f"{g['params']:,}" in md


def test_report_md_and_html_are_one_document(two_seed_report):
    """The same headings in the same order, the same tables with the same cells, the same
    figures and the same run-folder links (resolving from the report's folder), in both."""
    import html as html_lib
    import re

    tmp, _ = two_seed_report
    md = (tmp / "report" / "report.md").read_text()
    page = (tmp / "report" / "report.html").read_text()
    assert re.findall(r"^## (.+)$", md, re.M) == [
        html_lib.unescape(h) for h in re.findall(r"<h2>(.*?)</h2>", page)]
    md_tables = re.findall(r"((?:^\|.*\|\n)+)", md, re.M)
    html_tables = re.findall(r"<table>(.*?)</table>", page, re.S)
    assert len(md_tables) == len(html_tables) >= 5
    for mt, ht in zip(md_tables, html_tables):
        md_cells = [c.strip().replace("\\|", "|") for line in mt.splitlines()
                    for c in re.split(r"(?<!\\)\|", line)[1:-1] if c.strip() != "---"]
        html_cells = [html_lib.unescape(c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", ht)]
        assert md_cells == html_cells
    assert len(re.findall(r"^!\[", md, re.M)) == page.count("<figure>")
    md_links = re.findall(r"\]\(([^)]+)\)", md[md.index("## Run folders"):])
    html_links = re.findall(r'<a href="([^"]+)"', page)
    assert md_links == html_links and len(md_links) == 4
    assert all((tmp / "report" / link / "metrics.json").is_file() for link in md_links)


def test_a_comparison_run_again_says_what_it_did_with_each_run(small_mnist_dir, tmp_path):
    """Side by side, a second call on the same --out skips every finished run and says so
    (it used to print "finished lstm, seed 0 ... 0.0 s" for a run it did not train); a slot
    folder given to --runs is the run inside it."""
    lines: list[str] = []
    kwargs = dict(seeds=2, epochs=1, limit=200, data_dir=small_mnist_dir, out=tmp_path / "cmp",
                  progress=False)
    compare(["rnn"], log=lines.append, **kwargs)
    assert sum(line.startswith("trained rnn, seed") for line in lines) == 2
    lines.clear()
    compare(["rnn"], log=lines.append, **kwargs)
    skipped = [line for line in lines if line.startswith("skipped rnn, seed")]
    assert len(skipped) == 2 and all("already finished" in line for line in skipped), lines
    assert not any(line.startswith(("trained", "finished")) for line in lines)
    slot = tmp_path / "cmp" / "runs" / "rnn-mnist-rows-seed0"
    summary = compare(runs=[slot], out=tmp_path / "again", data_dir=small_mnist_dir, log=quiet)
    (group,) = json.loads(Path(summary["report"]).with_name("comparison.json").read_text())[
        "groups"]
    assert [Path(r).parent for r in group["runs"]] == [slot]


def test_seeds_with_equal_validation_accuracy_draw_their_band():
    """Three seeds stuck at the same accuracy (0.101: chance on a hard view): their mean rounds
    a hair above their max, and the band's error bar used to be negative, a ValueError that
    ended a whole sweep's report (81 runs of the board) in a traceback."""
    import numpy as np

    from seqmnist.reports.report import curves_figure

    values = np.array([0.101, 0.101, 0.101])
    assert values.mean() > values.max()  # the rounding this guards against
    curves = {"epoch": [1], **{k: dict(mean=[float(values.mean())], low=[float(values.min())],
                                        high=[float(values.max())])
                               for k in ("loss", "accuracy", "val_loss", "val_accuracy")}}
    group = dict(name="gru (pixels)", curves=curves, seeds=[0, 1, 2])
    assert curves_figure([group], "accuracy").axes  # drawn, no ValueError


def test_a_report_of_many_models_draws_galleries_against_the_best_only():
    """Up to five models every pair gets its galleries; with six (15 pairs) only the five pairs
    with the most accurate model do, so a sweep's report does not draw hundreds of them."""
    from itertools import combinations

    from seqmnist.reports.report import gallery_pairs

    def groups(n):
        return [dict(name=f"m{i}", accuracy=dict(mean=0.5 + 0.01 * ((i * 7) % n))) for i in range(n)]

    def pairs(gs):
        return [dict(a=a["name"], b=b["name"]) for a, b in combinations(gs, 2)]

    five = groups(5)
    assert gallery_pairs(five, pairs(five)) == list(range(10))
    six = groups(6)
    best = max(six, key=lambda g: g["accuracy"]["mean"])["name"]
    assert best != "m0"  # the best is not simply the first
    drawn = gallery_pairs(six, pairs(six))
    assert len(drawn) == 5 and all(best in (pairs(six)[k]["a"], pairs(six)[k]["b"]) for k in drawn)


def test_the_inside_view_covers_the_five_most_accurate_sequence_models():
    """Seven sequence models and a CNN: the occlusion passes run for the five most accurate
    sequence models only, in the report's order, and the report can say 'of 7'; with three, all
    three. Fails if the CNN is counted, or the five are the first instead of the best."""
    from types import SimpleNamespace

    from seqmnist.reports.report import inside_readers
    from seqmnist.training.config import TrainConfig

    def run(i, model, view):
        return SimpleNamespace(path=Path(f"runs/{i}"), config=TrainConfig(model=model, view=view))

    runs = [run(i, "gru", "rows") for i in range(7)] + [run(7, "cnn", "image")]
    accuracy = [0.90, 0.95, 0.91, 0.97, 0.96, 0.92, 0.99, 0.999]
    groups = [dict(name=f"g{i}", runs=[f"runs/{i}"], accuracy=dict(mean=a))
              for i, a in enumerate(accuracy)]
    shown, of = inside_readers(runs, groups)
    assert [g["name"] for g in shown] == ["g1", "g3", "g4", "g5", "g6"] and of == 7
    shown, of = inside_readers(runs[:3], groups[:3])
    assert [g["name"] for g in shown] == ["g0", "g1", "g2"] and of == 3
