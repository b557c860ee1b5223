"""Training and inference speed of every registered sequence model on rows (28 steps) and on
pixels (784 steps), and the CNN on the image, on this machine, through `seqmnist.train` itself.

    python benchmarks/models.py [--rows-images 6000] [--pixel-images 1000] [--models ...]

Each model trains one epoch on the first N training images of MNIST (tutorial recipe: batch 64,
Adam, default backend), after one warm-up epoch on a few batches; the training seconds are scaled
to a 60,000-image epoch (the cost per image is flat in the number of images), and inference
throughput is measured on the 10,000 test images. Results go to benchmarks/out/models.json and a
Markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SEQMNIST_DATA") or HERE.parent.parent / "shared" / "data") / "mnist"


def measure(model: str, view: str, images: int, test_images: int | None = None) -> dict:
    from seqmnist import TrainConfig, train
    from seqmnist.data.datasets import Dataset, load_dataset

    ds = load_dataset("mnist", DATA)
    if test_images:  # evaluation on the first test images only (long sequences are slow to read)
        ds = Dataset(ds.name, ds.x_train, ds.y_train, ds.x_test[:test_images],
                     ds.y_test[:test_images], ds.classes, ds.source)
    with tempfile.TemporaryDirectory() as tmp:
        train(TrainConfig(model=model, view=view, epochs=1, limit=256), out=tmp, dataset=ds,
              progress=False, log=lambda *_: None)  # warm-up: allocations, thread pools
        start = time.perf_counter()
        result = train(TrainConfig(model=model, view=view, epochs=1, limit=images), out=tmp,
                       dataset=ds, progress=False, log=lambda *_: None)
        wall = time.perf_counter() - start
    seconds = result.history[0]["seconds"]
    return dict(model=model, view=view, images=images, test_images=len(ds.x_test),
                params=result.metrics["params"],
                backend=result.config.backend, train_seconds=seconds,
                epoch_seconds_60k=seconds * 60000 / images,
                train_images_per_second=images / seconds,
                inference_images_per_second=result.metrics["inference_images_per_second"],
                test_accuracy_after_one_epoch=result.metrics["test_accuracy"], wall_seconds=wall)


def main() -> None:
    from seqmnist.models.registry import MODELS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--rows-images", type=int, default=6000)
    p.add_argument("--pixel-images", type=int, default=1000)
    p.add_argument("--test-images", type=int, default=None,
                   help="evaluate on the first N test images only (default: all 10,000)")
    p.add_argument("--views", nargs="+", default=["rows", "pixels"])
    args = p.parse_args()
    rows = []
    for name in args.models:
        views = ["image"] if "image" in MODELS[name].views else args.views
        for view in views:
            images = args.pixel_images if view == "pixels" else args.rows_images
            rows.append(measure(name, view, images, args.test_images))
            print(json.dumps(rows[-1]), flush=True)
    import torch

    meta = dict(python=platform.python_version(), torch=torch.__version__,
                cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                started=time.strftime("%Y-%m-%d %H:%M:%S"), args=vars(args))
    (HERE / "out").mkdir(exist_ok=True)
    name = "models" + ("-" + "-".join(args.models) if args.models != list(MODELS) else "")
    (HERE / "out" / f"{name}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print("| model | view | parameters | backend | s / 60k-image epoch | train img/s | "
          "inference img/s (test images) | test acc. after 1 epoch (training images) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['view']} | {r['params']:,} | {r['backend']} | "
              f"{r['epoch_seconds_60k']:,.0f} | {r['train_images_per_second']:,.0f} | "
              f"{r['inference_images_per_second']:,.0f} ({r['test_images']:,}) | "
              f"{r['test_accuracy_after_one_epoch']:.2%} ({r['images']:,}) |")


if __name__ == "__main__":
    sys.exit(main())
