"""K seeds of one model in one training step, three ways, per step at batch 64 on this machine:

- one after another: K ordinary steps (autograd, Adam), all threads each;
- stacked: the K models' parameters stacked (``torch.func.stack_module_state``), one
  ``vmap(grad_and_value(...))`` over the K batches, one Adam over the stacked parameters
  (Adam is elementwise: K independent ones);
- side by side: K ordinary steps in threads, one thread each, cores shared out
  (what ``seqmnist compare --seeds K`` does).

    python benchmarks/stacked.py --models gru lstm --seeds 4 --steps 30

Dropout is off in all three (``vmap`` draws dropout masks from one global generator, so a
stacked seed would not get its own). Prints and writes benchmarks/out/stacked.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.func import functional_call, grad_and_value, stack_module_state, vmap
from torch.nn import functional as F

from seqmnist.kernels.backends import install_backend
from seqmnist.models.registry import create_model

OUT = Path(__file__).resolve().parent / "out"


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
    return dict(model=name, seeds=k, batch=batch, cores=cores, one_seed_ms=one,
                one_after_another_ms=sequential, stacked_vmap_ms=vmapped,
                side_by_side_threads_ms=side_by_side)


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
              f"{r['side_by_side_threads_ms']:.1f} ms per step")
    OUT.mkdir(exist_ok=True)
    (OUT / "stacked.json").write_text(json.dumps(dict(args=vars(args), rows=rows), indent=2))


if __name__ == "__main__":
    main()
