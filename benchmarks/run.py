"""Benchmarks: seqmnist against the tutorial's Keras code and against plain PyTorch, measured in
the same invocation, interleaved (A B C A B C ...), each run a fresh process.

    python benchmarks/run.py epoch --repeats 3     # seconds per training epoch, peak memory
    python benchmarks/run.py fast --seeds 5        # time to accuracy with --preset fast
    python benchmarks/run.py startup               # `seqmnist --help`

Results go to benchmarks/out/<suite>.json and a Markdown table is printed. The Keras reference runs
in benchmarks/.venv-tf (made on first use: `pip install tensorflow-cpu`); data comes from
$SEQMNIST_DATA/mnist (default ../shared/data/mnist).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NO_KERNEL = "seqmnist, nn.LSTM"  # SEQMNIST_LSTM_KERNEL=0
OUT = HERE / "out"
TF_VENV = HERE / ".venv-tf"
DATA = Path(os.environ.get("SEQMNIST_DATA") or HERE.parent.parent / "shared" / "data") / "mnist"

# Analytic FLOPs of one training image (forward x 3 for forward + backward).
FLOPS_PER_IMAGE = {
    "lstm": 3 * (28 * 2 * (28 + 50) * 200 + 28 * 2 * (50 + 50) * 200 + 2 * 50 * 10),
    "cnn": 3 * (28 * 28 * 32 * 25 * 2 + 14 * 14 * 64 * 25 * 32 * 2 + 3136 * 1024 * 2 + 1024 * 20),
}


def peak_gflops() -> float:
    """fp32 peak of this CPU: cores x GHz x 64 (two AVX-512 FMA units, 16 lanes, 2 flops)."""
    mhz = max(float(line.split(":")[1]) for line in open("/proc/cpuinfo") if "MHz" in line)
    return os.cpu_count() * mhz / 1000 * 64


def tf_python() -> Path:
    python = TF_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TF_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "tensorflow-cpu", "numpy"],
                       check=True)
    return python


def timed(cmd: list[str], env: dict | None = None) -> tuple[dict, float, float]:
    """Run ``cmd``; return its last JSON line (if any), wall seconds and peak RSS in MB, the
    latter from GNU time's %M (the child's own maximum resident set)."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "PEAK_RSS_KB=%M", *cmd], capture_output=True,
                          text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{proc.stderr[-3000:]}")
    rss_kb = [line for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB=")][-1]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), wall, int(rss_kb.split("=")[1]) / 1024


def seqmnist_epoch(model: str, epochs: int, limit: int | None, extra: list[str],
                   env: dict | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "seqmnist", "train", model, "--epochs", str(epochs),
               "--data-dir", str(DATA), "--out", tmp, "--no-progress", *extra]
        if limit:
            cmd += ["--limit", str(limit)]
        _, wall, rss = timed(cmd, env)
        (run,) = Path(tmp).iterdir()
        history = json.loads((run / "history.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
    return dict(impl="seqmnist", epoch_seconds=[h["seconds"] for h in history],
                test_accuracy=metrics["test_accuracy"], wall_seconds=wall, peak_rss_mb=rss)


def reference(impl: str, model: str, epochs: int, limit: int | None) -> dict:
    script = HERE / ("keras_tutorial.py" if impl == "keras" else "plain_torch.py")
    python = str(tf_python()) if impl == "keras" else sys.executable
    cmd = [python, str(script), model, "--epochs", str(epochs), "--data", str(DATA)]
    if limit:
        cmd += ["--limit", str(limit)]
    result, wall, rss = timed(cmd, {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(HERE)})
    return {**result, "wall_seconds": wall, "peak_rss_mb": rss}


def summarise(values: list[float]) -> dict:
    return dict(median=statistics.median(values), min=min(values), max=max(values), n=len(values))


def suite_epoch(args) -> dict:
    results: dict = {}
    for model in args.models:
        impls = ["keras", "plain-torch", "seqmnist"]
        if model in ("lstm",):  # seqmnist with its LSTM kernel turned off: nn.LSTM (oneDNN)
            impls.append(NO_KERNEL)
        rows: dict = {impl: [] for impl in impls}
        for rep in range(args.repeats):
            for impl in rows:  # interleaved: A B C, A B C, ...
                if impl == "seqmnist":
                    r = seqmnist_epoch(model, args.epochs, args.limit, args.extra)
                elif impl == NO_KERNEL:
                    r = seqmnist_epoch(model, args.epochs, args.limit, args.extra,
                                       {"SEQMNIST_LSTM_KERNEL": "0"})
                else:
                    r = reference(impl, model, args.epochs, args.limit)
                # The first epoch carries warm-up; report the later ones where there are any.
                secs = r["epoch_seconds"][1:] or r["epoch_seconds"]
                rows[impl].append(dict(epoch_seconds=statistics.median(secs),
                                       peak_rss_mb=r["peak_rss_mb"],
                                       test_accuracy=r["test_accuracy"]))
                print(f"{model} {impl} rep {rep + 1}: {rows[impl][-1]}", flush=True)
        images = args.limit or 60000
        summary = {}
        for impl, runs in rows.items():
            secs = [r["epoch_seconds"] for r in runs]
            summary[impl] = dict(
                epoch_seconds=summarise(secs), peak_rss_mb=summarise([r["peak_rss_mb"] for r in runs]),
                test_accuracy=summarise([r["test_accuracy"] for r in runs]),
                gflops=FLOPS_PER_IMAGE[model] * images / statistics.median(secs) / 1e9)
        for impl in impls[1:]:
            summary[impl]["ratio_vs_keras"] = summarise(
                [a["epoch_seconds"] / b["epoch_seconds"] for a, b in zip(rows[impl], rows["keras"])])
            summary[impl]["rss_ratio_vs_keras"] = summarise(
                [a["peak_rss_mb"] / b["peak_rss_mb"] for a, b in zip(rows[impl], rows["keras"])])
        results[model] = dict(runs=rows, summary=summary)
    return results


def suite_fast(args) -> dict:
    """--preset fast, wall clock from command start to finish, against 10 x Keras's epoch."""
    targets = {"lstm": 0.986, "cnn": 0.992}
    results: dict = {}
    for model in args.models:
        keras, ours = [], []
        for seed in range(args.seeds):
            if seed < args.keras_repeats:
                k = reference("keras", model, 2, None)
                keras.append(statistics.median(k["epoch_seconds"][1:] or k["epoch_seconds"]) * 10)
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, "-m", "seqmnist", "train", model, "--preset", "fast",
                       "--seed", str(seed), "--data-dir", str(DATA), "--out", tmp, "--no-progress",
                       *args.extra]
                _, wall, rss = timed(cmd)
                (run,) = Path(tmp).iterdir()
                acc = json.loads((run / "metrics.json").read_text())["test_accuracy"]
            ours.append(dict(seed=seed, wall_seconds=wall, test_accuracy=acc, peak_rss_mb=rss))
            print(f"{model} fast seed {seed}: {ours[-1]}", flush=True)
        keras_recipe = statistics.median(keras)
        results[model] = dict(
            runs=ours, keras_recipe_seconds=keras, target_accuracy=targets[model],
            mean_accuracy=statistics.mean(r["test_accuracy"] for r in ours),
            reached=sum(r["test_accuracy"] >= targets[model] for r in ours),
            wall_seconds=summarise([r["wall_seconds"] for r in ours]),
            ratio_vs_keras_recipe=statistics.median(r["wall_seconds"] for r in ours) / keras_recipe)
    return results


def suite_startup(args) -> dict:
    walls = []
    for _ in range(args.repeats * 5):
        _, wall, _ = timed([sys.executable, "-m", "seqmnist", "--help"])
        walls.append(wall)
    return dict(help_seconds=summarise(walls))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("suite", choices=["epoch", "fast", "startup"])
    p.add_argument("--models", nargs="+", default=["lstm", "cnn"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2, help="epochs per timed run (first is warm-up)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--keras-repeats", type=int, default=2)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="extra options for `seqmnist train`")
    args = p.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    result = {"epoch": suite_epoch, "fast": suite_fast, "startup": suite_startup}[args.suite](args)
    import torch

    meta = dict(started=started, suite=args.suite, args=vars(args), python=platform.python_version(),
                torch=torch.__version__, cpu=platform.processor() or platform.machine(),
                cores=os.cpu_count(), peak_fp32_gflops=peak_gflops())
    OUT.mkdir(exist_ok=True)
    name = args.suite + ("" if args.suite == "startup" else "-" + "-".join(args.models))
    (OUT / f"{name}.json").write_text(json.dumps(dict(meta=meta, result=result), indent=2))
    print(json.dumps(result if args.suite != "epoch" else
                     {m: r["summary"] for m, r in result.items()}, indent=2))


if __name__ == "__main__":
    main()
