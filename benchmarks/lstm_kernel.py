"""One training step of the tutorial's LSTM classifier on one core, three ways, measured in the
same process in interleaved rounds (the machine's speed drifts, so only same-round ratios count):

- ``nn.LSTM``: the model through autograd with PyTorch's LSTM (oneDNN): the ``torch`` backend;
- ``kernel layer``: the model through autograd with seqmnist's LSTM layer (``lstm_kernel.lstm``
  installed by the ``native`` backend, as evaluation uses it);
- ``kernel step``: the ``native`` backend's training step (``lstm_kernel.ClassifierStep``), the
  whole step in the kernel (what training uses: each core runs one on half of a batch of 64).

    python benchmarks/lstm_kernel.py [--batches 32 64 128 256] [--rounds 7]
    python benchmarks/lstm_kernel.py --loop        # where a training step's time goes

Prints microseconds per image (forward + backward, loss and gradients; no optimizer) for each
batch size, the median over rounds, and each way's median ratio to nn.LSTM. With --loop: the
tutorial recipe's training loop (batch 64 of real MNIST split over one replica per core, fused
Adam), median milliseconds per step for each part, and each replica's own time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from seqmnist.data.datasets import load_dataset
from seqmnist.data.views import to_input
from seqmnist.kernels import lstm_kernel
from seqmnist.kernels.backends import install_backend, training_step
from seqmnist.models.registry import create_model
from seqmnist.training.parallel import Replicas
from seqmnist.training.update import make_adam


def per_image_us(step, n: int, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - start) / calls / n * 1e6


def ways_for(model: torch.nn.Module, n: int) -> dict:
    """The three ways of running one step on a batch of n random images."""
    x, y = torch.rand(n, 28, 28), torch.randint(0, 10, (n,))
    fused = training_step(model, "native", "fp32", torch.Generator().manual_seed(0))

    def autograd_step(backend: str):
        install_backend(model, backend)
        model.zero_grad(set_to_none=True)
        (F.cross_entropy(model(x), y, reduction="sum") / n).backward()

    return {"nn.LSTM": lambda: autograd_step("torch"),
            "kernel layer": lambda: autograd_step("native"),
            "kernel step": lambda: fused.forward_backward(x, y, n)}


def loop(steps: int = 400, batch: int = 64) -> None:
    """The training loop's parts, as training/trainer.py runs them (two replicas on two cores)."""
    ds = load_dataset("mnist")
    x_all, y_all = to_input(ds.x_train, "rows", 0, torch.device("cpu")), torch.as_tensor(ds.y_train)
    threads = torch.get_num_threads()
    replicas = Replicas(create_model("lstm"), threads, seed=0, backend="native")
    replicas.train()
    opt = make_adam(replicas.params[0], 1e-3, 1e-7)
    torch.set_num_threads(1)
    own: dict[int, list[float]] = {i: [] for i in range(len(replicas))}

    def timed(i, step):
        def run(*a):
            start = time.perf_counter()
            result = step(*a)
            own[i].append(time.perf_counter() - start)
            return result
        return run

    for i, step in enumerate(replicas.steps):
        step.forward_backward = timed(i, step.forward_backward)
    perm = torch.randperm(len(x_all))
    parts: dict[str, list[float]] = {k: [] for k in ("step", "gather", "forward+backward", "adam",
                                                     "copy weights")}
    for i in range(0, steps * batch, batch):
        t0 = time.perf_counter()
        idx = perm[i:i + batch]
        xb, yb = x_all.index_select(0, idx), y_all.index_select(0, idx)
        t1 = time.perf_counter()
        replicas.forward_backward(xb, yb)
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        replicas.sync()
        t4 = time.perf_counter()
        for k, v in zip(parts, (t4 - t0, t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[k].append(v)
    replicas.close()
    print(f"{len(replicas)} replicas, batch {batch}, {steps} steps; median ms per step:")
    for k, v in parts.items():
        print(f"  {k:18s} {statistics.median(v) * 1e3:6.3f}")
    for i, v in own.items():
        print(f"  replica {i} alone   {statistics.median(v[10:]) * 1e3:6.3f}  (its half-batch)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--loop", action="store_true", help="time the parts of the training loop")
    args = p.parse_args()
    if not lstm_kernel.available():
        raise SystemExit(f"the LSTM kernel is not available here: {lstm_kernel.status()[1]}")
    if args.loop:
        return loop()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("lstm").train()
    print("| batch | nn.LSTM µs/image | kernel layer | kernel step | layer / nn.LSTM | step / nn.LSTM |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n in args.batches:
        ways = ways_for(model, n)
        calls = max(4, 2048 // n)
        for step in ways.values():  # warm-up
            per_image_us(step, n, 3)
        times: dict[str, list[float]] = {k: [] for k in ways}
        for _ in range(args.rounds):
            for name, step in ways.items():
                times[name].append(per_image_us(step, n, calls))
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = {k: statistics.median(a / b for a, b in zip(times[k], times["nn.LSTM"]))
                 for k in ways}
        print(f"| {n} | {med['nn.LSTM']:.0f} | {med['kernel layer']:.0f} | "
              f"{med['kernel step']:.0f} | {ratio['kernel layer']:.2f} | "
              f"{ratio['kernel step']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
