"""What anytime accuracy (the answer after every step, scored at 28 checkpoints) costs beside a
training epoch on the same images, for each sequence model on pixels (784 steps).

    python benchmarks/anytime.py [--images 1000] [--models s4d lru tcn transformer lstm]

One training epoch of the tutorial recipe (batch 64, Adam) on the first N MNIST training images,
then ``evaluation.anytime_accuracy`` on N test images as a pass of its own, then the final
evaluation of a training run on the same N test images without and with anytime accuracy read in
its pass (``evaluate_tensors(anytime=True)``, what ``train`` does): each timed once after a short
warm-up, in one process. ``extra`` is what anytime accuracy adds to a training run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SEQMNIST_DATA") or HERE.parent.parent / "shared" / "data") / "mnist"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--models", nargs="+", default=["s4d", "lru", "tcn", "transformer", "lstm"])
    args = p.parse_args()

    import torch

    from seqmnist.data.datasets import load_dataset
    from seqmnist.data.views import to_input
    from seqmnist.kernels.backends import install_backend, resolve_backend
    from seqmnist.models.registry import create_model
    from seqmnist.training.metrics import anytime_accuracy, evaluate_tensors
    from seqmnist.training.update import make_adam

    ds = load_dataset("mnist", DATA)
    n = args.images
    x = to_input(ds.x_train[:n], "pixels")
    y = torch.as_tensor(ds.y_train[:n])
    xt, yt = to_input(ds.x_test[:n], "pixels"), torch.as_tensor(ds.y_test[:n])
    out = {}
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, (784, 1), 10)
        install_backend(model, resolve_backend("auto", model))
        opt = make_adam([q for q in model.parameters() if q.requires_grad], 1e-3, 1e-7)

        def epoch(count: int, model=model, opt=opt) -> float:
            model.train()
            start = time.perf_counter()
            for i in range(0, count, 64):
                loss = torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
                opt.zero_grad()
                loss.backward()
                opt.step()
            return time.perf_counter() - start

        epoch(128)  # warm-up
        train_s = epoch(n)
        anytime_accuracy(model, xt[:64], yt[:64])  # warm-up
        start = time.perf_counter()
        anytime_accuracy(model, xt, yt)
        anytime_s = time.perf_counter() - start
        evaluate_tensors(model, xt[:64], yt[:64])  # warm-up
        start = time.perf_counter()
        evaluate_tensors(model, xt, yt)
        plain_s = time.perf_counter() - start
        start = time.perf_counter()
        evaluate_tensors(model, xt, yt, anytime=True)
        shared_s = time.perf_counter() - start
        out[name] = dict(train_epoch_s=round(train_s, 2), anytime_s=round(anytime_s, 2),
                         ratio=round(anytime_s / train_s, 3),
                         final_evaluation_s=round(plain_s, 2),
                         final_evaluation_with_anytime_s=round(shared_s, 2),
                         extra=round((shared_s - plain_s) / train_s, 3))
        print(name, out[name], flush=True)
    print(json.dumps(dict(images=n, threads=torch.get_num_threads(), models=out), indent=2))


if __name__ == "__main__":
    main()
