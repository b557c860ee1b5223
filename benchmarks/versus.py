"""Seconds per training epoch of this checkout against another source tree of seqmnist, measured
side by side in one invocation (interleaved A B, A B, ...), so that a change to the training core
is checked against the code before it on the same machine at the same time.

    git worktree add /tmp/base <commit>
    python benchmarks/versus.py /tmp/base --models lstm cnn --repeats 3 --epochs 2

Each run is ``python -m seqmnist train MODEL`` with PYTHONPATH set to a tree's ``src`` (the
compiled LSTM kernel of this checkout is copied into the other tree when it has none). The
first epoch of each run carries warm-up; the later ones are timed. Writes
benchmarks/out/versus-MODELS.json (copied to results/ when recorded) and prints the medians
and the ratio (this checkout / base).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

from run import OUT, seqmnist_epoch

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


def tree_env(tree: Path) -> dict:
    src = tree / "src"
    if not (src / "seqmnist").is_dir():
        sys.exit(f"{tree}: no src/seqmnist there")
    # beside the tree's own lstm_kernel.py (src/seqmnist/ or, since the layout by layers,
    # src/seqmnist/kernels/)
    where = next((src / "seqmnist").rglob("lstm_kernel.py")).parent
    for lib in (SRC / "seqmnist").rglob("libseqmnist_lstm.*"):
        if not (where / lib.name).exists():
            shutil.copy2(lib, where / lib.name)
    return {"PYTHONPATH": str(src) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("base", type=Path, help="the other source tree (a git worktree)")
    p.add_argument("--models", nargs="+", default=["lstm", "cnn"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--limit", type=int, default=None)
    args = p.parse_args()
    trees = {"base": tree_env(args.base.resolve()), "this": tree_env(HERE.parent)}
    result = {}
    for model in args.models:
        rows: dict[str, list[float]] = {name: [] for name in trees}
        for rep in range(args.repeats):
            for name, env in trees.items():
                r = seqmnist_epoch(model, args.epochs, args.limit, [], env)
                secs = r["epoch_seconds"][1:] or r["epoch_seconds"]
                rows[name].append(statistics.median(secs))
                print(f"{model} {name} rep {rep + 1}: {rows[name][-1]:.2f} s/epoch, "
                      f"test acc {r['test_accuracy']:.4f}", flush=True)
        ratios = [a / b for a, b in zip(rows["this"], rows["base"])]
        result[model] = dict(seconds=rows, median_base=statistics.median(rows["base"]),
                             median_this=statistics.median(rows["this"]),
                             ratio_this_over_base=statistics.median(ratios),
                             ratio_range=[min(ratios), max(ratios)])
    OUT.mkdir(exist_ok=True)
    meta = dict(base=str(args.base), args={k: str(v) for k, v in vars(args).items()},
                cores=os.cpu_count())
    (OUT / f"versus-{'-'.join(args.models)}.json").write_text(
        json.dumps(dict(meta=meta, result=result), indent=2))
    print(json.dumps({m: {k: v for k, v in r.items() if k != "seconds"}
                      for m, r in result.items()}, indent=2))


if __name__ == "__main__":
    main()
