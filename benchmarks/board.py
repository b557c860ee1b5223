"""The board: every registered sequence model on sequential MNIST (pixels), permuted MNIST and
rows, three seeds each, one CPU budget per run (benchmarks/board.toml), as a table a reader can
cite: accuracy at the budget with its interval over seeds, time to each accuracy, the published
number beside it.

    python benchmarks/board.py run [--minutes 30]   # a piece: resumes the sweep where it stopped
    python benchmarks/board.py collect              # the finished runs -> results/board.json
    python benchmarks/board.py table                # results/board.json -> the README's tables

``run`` is ``seqmnist sweep benchmarks/board.toml --out benchmarks/out/board`` stopped after
``--minutes`` (SIGTERM: the run in flight keeps its last complete round and resumes next time),
so the board can be built in pieces on a quiet machine. ``collect`` keeps, for every finished
run, what the tables need (its config, test accuracy, parameters, history of validation accuracy
against training seconds and images, machine), so the tables can be rebuilt without the run
folders. Budgets are time on this machine: say which machine when quoting the board.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEC = HERE / "board.toml"
OUT = HERE / "out" / "board"
RESULTS = HERE / "results" / "board.json"
VIEWS = ("pixels", "permuted", "rows")


def run(minutes: float) -> int:
    """One piece of the board: the sweep, stopped after ``minutes``."""
    cmd = [sys.executable, "-m", "seqmnist", "sweep", str(SPEC), "--out", str(OUT),
           "--no-progress"]
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait(timeout=minutes * 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the run in flight keeps its last complete round
        proc.wait()
        print(f"stopped after {minutes:g} minutes; run again to continue", file=sys.stderr)
        return 0


def collect() -> dict:
    """Every finished run under the board's sweep folder, reduced to what the tables need."""
    from seqmnist.evaluation.analysis import timeline
    from seqmnist.runs.storage import WEIGHTS, load_run

    rows = []
    for weights in sorted((OUT / "runs").glob(f"*/*/{WEIGHTS}")):
        run = load_run(weights.parent)
        m, cfg = run.metrics, run.config
        env = m.provenance or {}
        rows.append(dict(model=cfg.model, view=cfg.view, seed=cfg.seed, budget=cfg.budget,
                         permutation=cfg.permutation, protocol=cfg.protocol,
                         batch_size=cfg.batch_size, lr=cfg.lr, schedule=cfg.schedule,
                         test_accuracy=m.test_accuracy, params=m.params,
                         images_seen=m.images_seen, train_seconds=m.train_seconds,
                         best_epoch=m.best_epoch, timeline=timeline(run),
                         cpu=env.get("cpu"), threads=env.get("threads"),
                         torch=env.get("torch"), seqmnist=env.get("seqmnist")))
    record = dict(spec=SPEC.read_text(), runs=rows)
    RESULTS.write_text(json.dumps(record, indent=1))
    print(f"{len(rows)} finished runs -> {RESULTS}")
    return record


def tables(record: dict) -> str:
    """The board as Markdown: one table per view, then the published references."""
    import numpy as np

    from seqmnist.core import stats
    from seqmnist.core.units import format_duration
    from seqmnist.evaluation.analysis import reached_at
    from seqmnist.evaluation.published import REFERENCES, published

    runs = record["runs"]
    out = []
    for view in VIEWS:
        mine = [r for r in runs if r["view"] == view]
        if not mine:
            continue
        listed = _spec_models(record.get("spec", ""))  # the spec's order, then any other
        models = [m for m in listed if any(r["model"] == m for r in mine)] + \
            sorted({r["model"] for r in mine} - set(listed))
        thresholds = [0.9, 0.95, 0.98] if view == "rows" else [0.8, 0.9, 0.95]
        head = ["model", "parameters", "seeds", "test accuracy (mean)", "95% interval (t)",
                *[f"time to {t:.0%} (median; seeds)" for t in thresholds], "published"]
        out += [f"### {view}", "", "| " + " | ".join(head) + " |",
                "|" + " --- |" * len(head)]
        for model in models:
            rs = [r for r in mine if r["model"] == model]
            acc = [r["test_accuracy"] for r in rs]
            ci = stats.t_interval(acc)
            ci = [min(max(v, 0.0), 1.0) for v in ci] if ci else None  # two seeds: wide
            cells = [model, f"{rs[0]['params']:,}", str(len(rs)), f"{np.mean(acc):.2%}",
                     f"{ci[0]:.2%} to {ci[1]:.2%}" if ci else "–"]
            for t in thresholds:
                hits = [h[0] for h in (reached_at(r["timeline"], t) for r in rs) if h]
                cells.append(f"{np.median(hits):.0f} s; {len(hits)} of {len(rs)}" if hits
                             else f"not reached; 0 of {len(rs)}")
            pub = published(model, view)
            cells.append("; ".join(f"{p.accuracy:.2f}% ({p.source})" for p in pub) or "–")
            out.append("| " + " | ".join(cells) + " |")
        r0 = mine[0]
        out += ["", f"Protocol: {view} view" + (f", pixel order {r0['permutation']}"
                                                if view == "permuted" else "") +
                f"; {format_duration(r0['budget'])} of training per run (validation not "
                f"counted) on {r0['cpu']} with {r0['threads']} threads; research protocol "
                "(the best validation round's weights on held-out training images, the test "
                "set once at the end); seeds " +
                ", ".join(str(s) for s in sorted({r['seed'] for r in mine})) +
                f"; seqmnist {r0['seqmnist']}, PyTorch {r0['torch']}.", ""]
    out += ["### Published results of models seqmnist does not implement", "",
            "| model | sMNIST | pMNIST | source | how it was trained |", "| --- | --- | --- | --- | --- |"]
    for ref in REFERENCES:
        out.append(f"| {ref.model} | {_pct(ref.pixels)} | {_pct(ref.permuted)} | {ref.source} | "
                   f"{ref.budget} |")
    return "\n".join(out) + "\n"


def _spec_models(text: str) -> list[str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        import tomli as tomllib
    try:
        return list(tomllib.loads(text).get("models", []))
    except tomllib.TOMLDecodeError:
        return []


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}%"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("run").add_argument("--minutes", type=float, default=30)
    sub.add_parser("collect")
    sub.add_parser("table")
    args = parser.parse_args(argv)
    if args.what == "run":
        return run(args.minutes)
    if args.what == "collect":
        collect()
        return 0
    if not RESULTS.exists():
        print(f"no {RESULTS}: run `board.py run` and `board.py collect` first", file=sys.stderr)
        return 2
    print(tables(json.loads(RESULTS.read_text())))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
