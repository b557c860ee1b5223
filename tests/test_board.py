"""The board (benchmarks/board.toml and board.py): its spec is a valid sweep of every registered
sequence model on pixels, permuted and rows with three seeds and one budget, and its tables are
rebuilt from the kept results."""

import importlib.util
from pathlib import Path

import pytest

from seqmnist.cli import main
from seqmnist.experiments.sweep import load_spec
from seqmnist.models.registry import MODELS

BENCH = Path(__file__).parent.parent / "benchmarks"


def _board():
    spec = importlib.util.spec_from_file_location("board", BENCH / "board.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_board_spec_passes_the_dry_run_and_covers_every_sequence_model(capsys):
    assert main(["sweep", str(BENCH / "board.toml"), "--dry-run"]) == 0
    assert "a budget of 40s" in capsys.readouterr().out
    spec = load_spec(BENCH / "board.toml")
    sequence = {m for m, e in MODELS.items() if "permuted" in e.views}
    assert {r.model for r in spec.runs} == sequence
    assert {(r.view, r.seed) for r in spec.runs} == {(v, s) for v in ("pixels", "permuted", "rows")
                                                     for s in (0, 1, 2)}
    assert {r.config.budget for r in spec.runs} == {40.0} and not spec.skipped


def _line(points):
    return dict(seed=0, elapsed=[p[0] for p in points], images=[p[1] for p in points],
                accuracy=[p[2] for p in points])


def test_the_board_tables_are_rebuilt_from_the_kept_results():
    board = _board()
    base = dict(view="permuted", budget=40.0, permutation=0, protocol="research", batch_size=64,
                lr=1e-3, schedule="onecycle", params=1234, images_seen=9000, train_seconds=40.0,
                best_epoch=10, cpu="test cpu", threads=2, torch="2.13", seqmnist="0.x")
    runs = [dict(base, model="lstm", seed=s, test_accuracy=a,
                 timeline=_line([(4, 900, 0.5), (20, 4500, x), (40, 9000, a)]))
            for s, (a, x) in enumerate([(0.91, 0.85), (0.93, 0.91), (0.95, 0.92)])]
    text = board.tables(dict(spec="", runs=runs))
    row = next(line for line in text.splitlines() if line.startswith("| lstm |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["lstm", "1,234", "3", "93.00%"]
    # 80%: every seed at its second point (20 s); 90%: two seeds at 20 s, one at 40 s (median
    # 20 s); 95%: one seed, at its last point
    assert cells[5:8] == ["20 s; 3 of 3", "20 s; 3 of 3", "40 s; 1 of 3"]
    assert "pixel order 0" in text and "40s of training per run" in text and "test cpu" in text
    assert "coRNN" in text and "97.34%" in text


def test_the_board_table_without_results_says_how_to_make_them(tmp_path, monkeypatch, capsys):
    board = _board()
    monkeypatch.setattr(board, "RESULTS", tmp_path / "none.json")
    assert board.main(["table"]) == 2
    assert "board.py run" in capsys.readouterr().err


@pytest.mark.parametrize("view", ["pixels", "permuted"])
def test_published_numbers_beside_the_board_name_their_source(view):
    from seqmnist.evaluation.published import REFERENCES, published

    for ref in REFERENCES:
        assert ref.source.startswith("github.com/tk-rusch/") and ref.budget
    assert all(p.source for p in published("lstm", view))
