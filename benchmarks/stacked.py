"""K seeds of one model in one training step, three ways, per step at batch 64 on this machine:

- one after another: K ordinary steps (autograd, Adam), all threads each;
- stacked: the K models' parameters stacked (``torch.func.stack_module_state``), one
  ``vmap(grad_and_value(...))`` over the K batches, one Adam over the stacked parameters
  (Adam is elementwise: K independent ones);
- side by side: K ordinary steps in threads, one thread each, cores shared out
  (what ``seqmnist compare --seeds K --no-stack`` does), with autograd and Adam, and with
  seqmnist's own update (``Update``, the model's backend: the LSTM kernel for the LSTM);
- together: seqmnist's stacked step (training/together.py, kernels/stacked.py), one group of
  K/cores seeds per core, each seed's update driven by its own thread as the trainers drive
  them (what ``seqmnist compare --seeds K`` does for a model whose registry entry ``stacks``).

    python benchmarks/stacked.py --models gru lstm --seeds 4 --steps 30

Dropout is off in all three (``vmap`` draws dropout masks from one global generator, so a
stacked seed would not get its own). Prints and writes benchmarks/out/stacked.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
from stacked_step import SeedGroup
from torch.func import functional_call, grad_and_value, stack_module_state, vmap
from torch.nn import functional as F

from seqmnist.kernels.backends import install_backend, resolve_backend
from seqmnist.models.registry import create_model
from seqmnist.training.config import TrainConfig
from seqmnist.training.update import Update

OUT = Path(__file__).resolve().parent / "out"
STACKED = ("gru", "rnn", "mingru", "minlstm")  # the models stacked_step stacks


def timed(step, n: int) -> float:
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n * 1000


def measure(name: str, k: int, batch: int, steps: int, cores: int) -> dict:
    torch.manual_seed(0)
    models = [install_backend(create_model(name, (28, 28), 10, dropout=0.0), "torch")
              for _ in range(k)]
    x, y = torch.rand(k, batch, 28, 28), torch.randint(0, 10, (k, batch))
    opts = [torch.optim.Adam([p for p in m.parameters() if p.requires_grad], 1e-3)
            for m in models]

    def solo(i: int) -> None:
        opts[i].zero_grad(set_to_none=True)
        F.cross_entropy(models[i](x[i]), y[i]).backward()
        opts[i].step()

    torch.set_num_threads(cores)
    sequential = timed(lambda: [solo(i) for i in range(k)], steps)

    params, buffers = stack_module_state(models)
    names = [n for n, p in params.items() if p.requires_grad]
    fixed = {n: p for n, p in params.items() if not p.requires_grad}
    stacked = {n: params[n].detach().clone() for n in names}
    opt = torch.optim.Adam(list(stacked.values()), 1e-3)
    layout = copy.deepcopy(models[0]).to("meta")

    def loss(trained, fixed_, buffers_, xb, yb):
        return F.cross_entropy(functional_call(layout, ({**trained, **fixed_}, buffers_), (xb,)),
                               yb)

    def stacked_step() -> None:
        grads, _ = vmap(grad_and_value(loss))(stacked, fixed, buffers, x, y)
        for n in names:
            stacked[n].grad = grads[n]
        opt.step()

    vmapped = timed(stacked_step, steps)
    groups = [list(range(i, k, cores)) for i in range(cores)]
    with ThreadPoolExecutor(cores, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        def threaded() -> None:
            for f in [pool.submit(lambda g: [solo(i) for i in g], g) for g in groups]:
                f.result()
        side_by_side = timed(threaded, steps)
    torch.set_num_threads(cores)
    one = timed(lambda: solo(0), steps)
    own = [Update(create_model(name, (28, 28), 10, dropout=0.0),
                  replace(config(name, i, batch), backend=resolve_backend("auto", models[i])),
                  1000, 1) for i in range(k)]
    with ThreadPoolExecutor(cores, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        def own_threaded() -> None:
            jobs = [pool.submit(lambda g: [own[i](x[i], y[i]) for i in g], g) for g in groups]
            for f in jobs:
                f.result()
        side_by_side_own = timed(own_threaded, steps)
    return dict(model=name, seeds=k, batch=batch, cores=cores, one_seed_ms=one,
                one_after_another_ms=sequential, stacked_vmap_ms=vmapped,
                side_by_side_threads_ms=side_by_side,
                side_by_side_own_update_ms=side_by_side_own,
                backend=own[0].replicas.steps[0].__class__.__name__,
                together_ms=together(name, k, batch, steps, cores, x, y)
                if name in STACKED else None)


def config(name: str, seed: int, batch: int) -> TrainConfig:
    return TrainConfig(model=name, seed=seed, batch_size=batch, epochs=1, replicas=1,
                       precision="fp32", backend="torch", lr=1e-3)


def together(name: str, k: int, batch: int, steps: int, cores: int, x, y) -> float:
    """ms per step of K seeds in SeedGroups, one group per core (K/cores seeds each, one
    thread), each seed's update called by its own thread as the trainers call them."""
    per = -(-k // cores)
    groups = [SeedGroup(min(per, k - start), 1) for start in range(0, k, per)]
    updates = [groups[i // per].join(i % per, create_model(name, (28, 28), 10, dropout=0.0),
                                     config(name, i, batch), 1000) for i in range(k)]
    barrier = threading.Barrier(k + 1)

    def drive(i: int) -> None:
        torch.set_num_threads(1)
        for count in (3, steps):  # three to warm up, then the timed ones
            barrier.wait()
            for _ in range(count):
                updates[i](x[i], y[i])

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(k)]
    for t in threads:
        t.start()
    barrier.wait()  # warm-up
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["gru", "lstm"])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    rows = [measure(m, args.seeds, args.batch, args.steps, cores) for m in args.models]
    for r in rows:
        print(f"{r['model']}: one seed {r['one_seed_ms']:.1f} ms; {r['seeds']} seeds one after "
              f"another {r['one_after_another_ms']:.1f} ms, stacked (vmap) "
              f"{r['stacked_vmap_ms']:.1f} ms, side by side in threads "
              f"{r['side_by_side_threads_ms']:.1f} ms (seqmnist's update, {r['backend']}: "
              f"{r['side_by_side_own_update_ms']:.1f} ms), together (stacked step) "
              + (f"{r['together_ms']:.1f} ms" if r['together_ms'] else "-") + " per step")
    OUT.mkdir(exist_ok=True)
    (OUT / "stacked.json").write_text(json.dumps(dict(args=vars(args), rows=rows), indent=2))


if __name__ == "__main__":
    main()
