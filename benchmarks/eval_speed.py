"""Evaluation speed at 784 steps (pixels), every sequence model, on this machine: what sizes
the board (benchmarks/board.toml), where evaluation, not training, takes most of the time.

    python benchmarks/eval_speed.py [--images 1000] [--models mingru minlstm]

For each model (seqmnist's defaults, fresh weights, the backend ``auto`` picks for inference):
images per second of ``evaluate_tensors`` (the validation and test pass, no per-step answers)
and of the final pass with every step's answer (``anytime=True``), on ``--images`` random
784-step inputs; and for the models with a scan and a recurrence (minGRU, minLSTM) the training
step at batch 256 (forward and backward). Prints a Markdown table; writes
benchmarks/out/eval-speed.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def images_per_second(model, x, y, anytime: bool) -> float:
    from seqmnist.training.metrics import evaluate_tensors

    evaluate_tensors(model, x[:100], y[:100], 1000, "fp32", anytime=anytime)  # warm-up
    start = time.perf_counter()
    evaluate_tensors(model, x, y, 1000, "fp32", anytime=anytime)
    return len(x) / (time.perf_counter() - start)


def main() -> None:
    from seqmnist.kernels.backends import inference_backend, install_backend
    from seqmnist.models.registry import MODELS, create_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--models", nargs="+",
                        default=[m for m, e in MODELS.items() if "pixels" in e.views])
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.rand(args.images, 784, 1)
    y = torch.randint(0, 10, (args.images,))
    rows = []
    for name in args.models:
        model = create_model(name, (784, 1), 10).eval()
        install_backend(model, inference_backend("auto", model))
        row = dict(model=name, validation=images_per_second(model, x, y, False),
                   anytime=images_per_second(model, x, y, True) if MODELS[name].steps else None)
        if name in ("mingru", "minlstm"):  # trained by the scan: its cost beside the answers
            net = create_model(name, (784, 1), 10).train()
            batch = torch.rand(256, 784, 1)
            net(batch[:8]).sum().backward()  # warm-up
            start = time.perf_counter()
            net(batch).sum().backward()
            row["train_step_256"] = time.perf_counter() - start
        rows.append(row)
        print(row, flush=True)
    print("\n| model | validation img/s | with every step's answer img/s | training step, batch 256 |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        step = f"{r['train_step_256']:.1f} s" if "train_step_256" in r else "–"
        anytime = f"{r['anytime']:.0f}" if r["anytime"] else "–"
        print(f"| {r['model']} | {r['validation']:.0f} | {anytime} | {step} |")
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "eval-speed.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
