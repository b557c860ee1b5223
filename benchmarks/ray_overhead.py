"""What Ray costs a sweep: the same tiny grid run embedded (no Ray) and with ``--ray auto`` (a local
Ray started by the sweep), end to end, each way twice, interleaved.

    python benchmarks/ray_overhead.py [--runs 4] [--epochs 1] [--limit 6000]

The grid: rnn on row-MNIST, seeds 0..runs-1. Three ways: embedded (one run after another, each
on every core); Ray with --cpus-per-run equal to the cores (one run at a time, the same threads:
the difference is Ray's own cost); Ray with --cpus-per-run 1 (runs side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SEQMNIST_DATA") or HERE.parent.parent / "shared" / "data") / "mnist"


def run_sweep(spec: Path, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "seqmnist", "sweep", str(spec), "--out", out,
                               "--data-dir", str(DATA), "--no-progress", *extra],
                              capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
    per_run = [float(s) for s in re.findall(r"^trained\s+\S+ \(([\d.]+) s", done.stdout, re.M)]
    return dict(wall_s=round(wall, 2), run_s=per_run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit", type=int, default=6000)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ray-overhead.json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    ways = {"embedded": [], f"ray, {cores} cpus per run": ["--ray", "auto", "--cpus-per-run",
                                                          str(cores)],
            "ray, 1 cpu per run": ["--ray", "auto", "--cpus-per-run", "1"]}
    results: dict[str, list[dict]] = {name: [] for name in ways}
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "tiny.toml"
        spec.write_text(f'models = ["rnn"]\ndatasets = ["mnist"]\nseeds = {list(range(args.runs))}'
                        f'\n[recipe]\nepochs = {args.epochs}\nlimit = {args.limit}\n')
        for _ in range(2):
            for name, extra in ways.items():
                results[name].append(run_sweep(spec, extra))
                print(name, results[name][-1], flush=True)
    base = min(r["wall_s"] for r in results["embedded"])
    summary = {name: dict(best_wall_s=min(r["wall_s"] for r in rs),
                          vs_embedded=round(min(r["wall_s"] for r in rs) / base, 2),
                          overhead_per_run_s=round((min(r["wall_s"] for r in rs) - base)
                                                   / args.runs, 2), tries=rs)
               for name, rs in results.items()}
    args.out.write_text(json.dumps(dict(grid=f"rnn, mnist rows, {args.runs} seeds, {args.epochs} "
                                        f"epoch(s), limit {args.limit}", cores=cores,
                                        ways=summary), indent=2) + "\n")
    print(json.dumps({k: {x: v[x] for x in ("best_wall_s", "vs_embedded",
                                            "overhead_per_run_s")} for k, v in summary.items()},
                     indent=2))


if __name__ == "__main__":
    main()
