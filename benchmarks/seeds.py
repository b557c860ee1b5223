"""Seeds one after another (each process on every core) against seeds side by side (one process
per core, one thread each): which finishes several seeds of a model sooner on this machine?

    python benchmarks/seeds.py --model lstm --seeds 2 [--limit 12000] [--epochs 2] [--preset fast]

Wall-clock seconds of `seqmnist train` processes, both ways, interleaved twice.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SEQMNIST_DATA") or HERE.parent.parent / "shared" / "data") / "mnist"


def command(args, seed: int, out: str, threads: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "seqmnist", "train", args.model, "--seed", str(seed),
           "--data-dir", str(DATA), "--out", out, "--no-progress", "--preset", args.preset]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    return cmd + (["--threads", str(threads)] if threads else [])


def one_after_another(args) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        for seed in range(args.seeds):
            subprocess.run(command(args, seed, out, None), check=True, capture_output=True)
        return time.perf_counter() - start


def side_by_side(args) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        procs = [subprocess.Popen(command(args, seed, out, 1), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for seed in range(args.seeds)]
        if any(p.wait() for p in procs):
            raise RuntimeError("a training process failed")
        return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lstm")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--preset", default="fast")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    result = {"one after another": [], "side by side": []}
    for _ in range(args.rounds):
        result["one after another"].append(one_after_another(args))
        result["side by side"].append(side_by_side(args))
        print(json.dumps(result), flush=True)
    print(json.dumps(dict(args=vars(args), seconds=result), indent=2))


if __name__ == "__main__":
    main()
