"""A verdict is never stated that its evidence does not support: with unequal seed counts the
winner is named from the paired seeds its interval uses, and a stored prediction file that
disagrees with the run (edited, truncated, from another test set, absurd) is refused, naming it."""

from __future__ import annotations

import io
import re
import shutil
import zipfile

import numpy as np
import pytest

from seqmnist import TrainConfig, train
from seqmnist.cli import main
from seqmnist.core.errors import UsageError
from seqmnist.evaluation.analysis import analyse
from seqmnist.runs.schema import RunMetrics
from seqmnist.runs.storage import PREDICTIONS, Run, save_predictions
from seqmnist.training.config import TrainConfig as Config

N = 1000
LABELS = np.random.default_rng(0).integers(0, 10, N)


def fake_run(folder, model: str, seed: int, wrong: int, **config) -> Run:
    """A finished run whose predictions are wrong on the first ``wrong`` test images."""
    folder.mkdir(parents=True)
    predictions = LABELS.copy()
    predictions[:wrong] = (LABELS[:wrong] + 1) % 10
    probabilities = np.eye(10, dtype=np.float32)[predictions]
    save_predictions(folder, predictions, probabilities, LABELS)
    accuracy = 1 - wrong / N
    history = [dict(epoch=1, loss=0.1, accuracy=accuracy, val_loss=0.1, val_accuracy=accuracy)]
    metrics = dict(test_accuracy=accuracy, test_loss=0.1, params=100, seconds_per_epoch=1.0,
                   inference_images_per_second=1000.0, classes=[str(i) for i in range(10)],
                   per_class_accuracy={str(i): accuracy for i in range(10)},
                   confusion=np.zeros((10, 10), int).tolist())
    cfg = Config(model=model, seed=seed, epochs=1, **config).resolved()
    return Run(folder, cfg, None, (28, 28), 10, RunMetrics.from_dict(metrics, 10), history)


def test_unequal_seed_counts_name_the_winner_from_the_paired_evidence(tmp_path):
    """lstm seeds 0, 1, 2 average 90% (80, 95, 95); gru seed 0 alone 85%. Ranked by every seed,
    lstm leads; on the seed both have, gru is 5 points ahead, and that is what the interval and
    the test are about: the sentence must say gru, by +5, with the seeds it rests on."""
    runs = [fake_run(tmp_path / f"lstm{s}", "lstm", s, w) for s, w in ((0, 200), (1, 50), (2, 50))]
    runs.append(fake_run(tmp_path / "gru0", "gru", 0, 150))
    result = analyse(runs)
    (pair,) = result["pairs"]
    assert pair["seed_pairs"] == [[0, 0]] and pair["left_out"] == {"lstm (rows)": [1, 2],
                                                                    "gru (rows)": []}
    assert pair["difference"] == pytest.approx(-5.0)
    sentence = result["verdict"]
    found = re.match(r"(.+) is more accurate than (.+) by ([\d.]+) points \(95% CI ([-\d.]+) to "
                     r"([-\d.]+);", sentence)
    assert found, sentence
    winner, loser, d, lo, hi = found[1], found[2], *map(float, found.groups()[2:])
    assert (winner, loser) == ("gru (rows)", "lstm (rows)")
    assert d == pytest.approx(5.0) and lo <= d <= hi and lo > 0
    assert "paired seed 0; left out: lstm (rows) seeds 1, 2" in sentence
    # one pair is two trained models: no claim about the recipes, and the means table beside
    # the sentence (lstm ahead over all its seeds) is not contradicted without saying why
    assert "one pair of runs: it compares these two trained models, not their recipes" in sentence
    assert "Over all their seeds lstm (rows)'s mean is higher (90.00% against 85.00%)" in sentence


def test_one_seed_each_says_it_compares_two_runs_not_two_recipes(tmp_path):
    runs = [fake_run(tmp_path / "a", "lstm", 0, 100), fake_run(tmp_path / "b", "gru", 0, 300)]
    sentence = analyse(runs)["verdict"]
    assert sentence.startswith("lstm (rows) is more accurate than gru (rows) by 20.00")
    assert "not their recipes" in sentence and "Over all" not in sentence


def test_no_seed_in_common_pairs_in_order_and_says_so(tmp_path):
    runs = [fake_run(tmp_path / "a", "lstm", 0, 100), fake_run(tmp_path / "b", "gru", 7, 300),
            fake_run(tmp_path / "c", "gru", 8, 300)]
    result = analyse(runs)
    (pair,) = result["pairs"]
    assert pair["seed_pairs"] == [[0, 7]] and pair["paired_by"] == "order"
    assert "no seed in common, paired in seed order (0 with 7); left out: gru (rows) seed 8" \
        in result["verdict"]
    assert result["verdict"].startswith("lstm (rows) is more accurate than gru (rows) by 20.00")


def test_equal_seeds_say_nothing_about_pairing(tmp_path):
    runs = [fake_run(tmp_path / f"{m}{s}", m, s, w) for m, w in (("lstm", 100), ("gru", 300))
            for s in (0, 1)]
    result = analyse(runs)
    assert "paired" not in result["verdict"] and "left out" not in result["verdict"]
    assert "not their recipes" not in result["verdict"]  # two seed pairs: about the recipes


# --- tampered prediction files, through `compare --runs` -------------------------------------

@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("verdict-runs")
    return [train(TrainConfig(model=m, dataset="digits", epochs=1), out=out, progress=False,
                  log=lambda *_: None).path for m in ("rnn", "gru")]


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _stored(run) -> dict:
    with np.load(run / PREDICTIONS) as data:
        return {k: data[k] for k in data.files}


def _huge_header_npz(good: dict) -> bytes:
    """An npz whose labels.npy header claims 5e10 entries (and holds none)."""
    header = "{'descr': '<i2', 'fortran_order': False, 'shape': (50000000000,), }"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for key in ("predictions", "probabilities"):
            inner = io.BytesIO()
            np.save(inner, good[key])
            z.writestr(f"{key}.npy", inner.getvalue())
        z.writestr("labels.npy", npy)
    return buf.getvalue()


def _tampered(good: dict) -> dict:
    p, q, y = good["predictions"], good["probabilities"], good["labels"]
    rng = np.random.default_rng(1)
    return {
        "predictions set to the labels": (_npz(predictions=y, probabilities=q, labels=y),
                                          "metrics.json says"),
        "labels replaced": (_npz(predictions=p, probabilities=q, labels=rng.permutation(y)),
                            "not the digits test set's"),
        "a class out of range": (_npz(predictions=np.where(p == 0, 12, p), probabilities=q,
                                      labels=y), "outside the classes 0..9"),
        "negative labels": (_npz(predictions=p, probabilities=q, labels=y - 1),
                            "outside the classes"),
        "strings": (_npz(predictions=p.astype(str), probabilities=q, labels=y), "not class"),
        "NaN probabilities": (_npz(predictions=p, probabilities=q * np.nan, labels=y),
                              "finite numbers"),
        "probabilities for 3 classes": (_npz(predictions=p, probabilities=q[:, :3], labels=y),
                                        "for 3 classes"),
        "fewer test images": (_npz(predictions=p[:100], probabilities=q[:100], labels=y[:100]),
                              "holds 100 test predictions, the test set has 360"),
        "more test images": (_npz(predictions=np.tile(p, 3), probabilities=np.tile(q, (3, 1)),
                                  labels=np.tile(y, 3)), "holds 1,080 test predictions"),
        "a header claiming 5e10 entries": (_huge_header_npz(good), "inconsistent shapes"),
        "not a zip": (b"garbage", "unreadable"),
    }


CASES = ["predictions set to the labels", "labels replaced", "a class out of range",
         "negative labels", "strings", "NaN probabilities", "probabilities for 3 classes",
         "fewer test images", "more test images", "a header claiming 5e10 entries", "not a zip"]


@pytest.mark.parametrize("case", CASES)
def test_a_tampered_prediction_file_is_refused_naming_it(two_runs, tmp_path, capsys, case):
    victim = tmp_path / "victim"
    shutil.copytree(two_runs[0], victim)
    data, message = _tampered(_stored(two_runs[0]))[case]
    (victim / PREDICTIONS).write_bytes(data)
    code = main(["compare", "--runs", str(victim), str(two_runs[1]), "--out",
                 str(tmp_path / "report")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(victim / PREDICTIONS) in err and message in err and "Traceback" not in err
    assert not (tmp_path / "report" / "report.md").exists()


def test_untouched_prediction_files_pass_every_check(two_runs, tmp_path):
    assert main(["compare", "--runs", *map(str, two_runs), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.md").is_file()


def test_runs_read_in_different_orders_are_never_paired(tmp_path):
    """Two permuted runs of different pixel orders are different tasks: refused, naming both."""
    a = fake_run(tmp_path / "a", "lstm", 0, 100, view="permuted", permutation=0)
    b = fake_run(tmp_path / "b", "gru", 0, 100, view="permuted", permutation=1)
    with pytest.raises(UsageError, match=r"reads the pixels in order 0 and .* in order 1"):
        analyse([a, b])
    c = fake_run(tmp_path / "c", "gru", 0, 300, view="permuted", permutation=0)
    assert analyse([a, c])["pairs"][0]["seed_pairs"] == [[0, 0]]


def test_a_quick_run_says_so_beside_its_verdict(tmp_path, small_mnist_dir):
    """In the terminal as in the report: a comparison below its recipe says it is not a
    result, on the line before the verdict."""
    from seqmnist import compare

    lines: list[str] = []
    summary = compare(["rnn", "gru"], epochs=1, limit=200, data_dir=small_mnist_dir,
                      out=tmp_path / "cmp", progress=False, log=lines.append)
    assert summary["caveat"].startswith("Quick run, not a result (rnn (rows): trained on 200 of")
    text = "\n".join(lines)
    assert f"{summary['caveat']}\n{summary['verdict']}" in text


def _timed(run: Run, points: list[tuple[float, int, float]]) -> Run:
    """``run`` with a history of (elapsed seconds, images, validation accuracy) rows."""
    run.history = [dict(epoch=k, loss=0.1, accuracy=a, val_loss=0.1, val_accuracy=a,
                        seconds=0.0, lr=1e-3, elapsed=e, images=n)
                   for k, (e, n, a) in enumerate(points, 1)]
    return run


def test_time_to_accuracy_is_recomputed_from_the_runs_histories(tmp_path):
    """Three lstm seeds and one gru seed with known histories: the thresholds are the highest
    three some run reached (99% is reached by none), and each time is the first validation
    point at or over the threshold: median and range over the seeds that got there."""
    lstm = [_timed(fake_run(tmp_path / f"l{s}", "lstm", s, 100), pts) for s, pts in enumerate([
        [(10, 100, 0.85), (20, 200, 0.96), (30, 300, 0.981)],
        [(12, 100, 0.91), (24, 200, 0.95), (36, 300, 0.97)],
        [(11, 100, 0.80), (22, 200, 0.97), (33, 300, 0.985)]])]
    gru = [_timed(fake_run(tmp_path / "g0", "gru", 0, 100), [(5, 50, 0.5), (9, 90, 0.92)])]
    table = analyse(lstm + gru)["time_to_accuracy"]
    assert table["thresholds"] == [0.95, 0.97, 0.98]
    l95, l97, l98 = table["groups"]["lstm (rows)"]
    assert (l95["median"], l95["low"], l95["high"], l95["reached"], l95["of"]) == \
        (22, 20, 24, 3, 3)
    assert (l97["median"], l97["low"], l97["high"], l97["reached"]) == (30, 22, 36, 3)
    assert (l98["median"], l98["low"], l98["high"], l98["reached"]) == (31.5, 30, 33, 2)
    assert l98["median_images"] == 300
    assert [r["reached"] for r in table["groups"]["gru (rows)"]] == [0, 0, 0]


def test_older_histories_get_their_times_from_the_epochs_seconds(tmp_path):
    from seqmnist.evaluation.analysis import timeline

    run = fake_run(tmp_path / "old", "lstm", 0, 100)
    run.history = [dict(epoch=k, loss=0.1, accuracy=0.9, val_loss=0.1, val_accuracy=0.9,
                        seconds=s) for k, s in ((1, 4.0), (2, 6.0))]
    run.metrics.train_images = 1000
    line = timeline(run)
    assert line["elapsed"] == [4.0, 10.0] and line["images"] == [1000, 2000]


def test_the_time_figure_has_one_panel_per_view(tmp_path):
    """A sweep's report holds several views: accuracy against time is drawn per view, each
    model in one colour in every panel; a comparison of one view is one panel."""
    from seqmnist.reports.report import time_figure

    runs = [_timed(fake_run(tmp_path / f"{m}-{v}", m, 0, 100, view=v),
                   [(5, 50, 0.5), (9, 90, 0.9)])
            for m in ("lstm", "gru") for v in ("rows", "pixels")]
    groups = analyse(runs)["groups"]
    fig = time_figure(groups)
    assert [ax.get_title() for ax in fig.axes] == ["rows view", "pixels view"]
    colours = [{line.get_label(): line.get_color() for line in ax.get_lines()}
               for ax in fig.axes]
    assert colours[0] == colours[1] and set(colours[0]) == {"lstm", "gru"}
    assert len(time_figure([g for g in groups if g["view"] == "rows"]).axes) == 1


def test_the_images_one_model_gets_right_carry_the_true_class_and_both_answers(tmp_path):
    """The report's galleries of disagreements label each image: its true class and each
    model's answer with its confidence (from the first seed pair's stored predictions)."""
    runs = [fake_run(tmp_path / "a", "lstm", 0, 100), fake_run(tmp_path / "b", "gru", 0, 300)]
    (pair,) = analyse(runs)["pairs"]
    answers = pair["flips"]["a_only"]["answers"]
    assert [a[0] for a in answers] == pair["flips"]["a_only"]["images"] and answers
    for index, true, a, conf_a, b, conf_b in answers:
        assert 100 <= index < 300 and true == LABELS[index]
        assert a == LABELS[index] and b == (LABELS[index] + 1) % 10  # lstm right, gru wrong
        assert conf_a == conf_b == 1.0
    assert pair["flips"]["b_only"]["answers"] == []
