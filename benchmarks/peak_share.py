"""How much of this machine a training step uses: for the tutorial's LSTM and CNN with the fast
recipe's batch sizes, one training step (forward, backward, Adam; seqmnist's own update, the
backend and precision ``auto`` picks here) on one thread, against what one thread reaches in a
large fp32 matrix product in the same run.

    python benchmarks/peak_share.py
    SEQMNIST_LSTM_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/peak_share.py

FLOPs are matrix products and convolutions, 2 per multiply-add, forward and backward;
elementwise work (the gates' maths, activations, Adam) is not counted. The CNN's are counted by
PyTorch's ``torch.utils.flop_counter.FlopCounterMode`` on its forward and backward through
autograd; it does not see inside PyTorch's fused LSTM, so the LSTM's are counted by hand: per
layer, step and image 2 (I + H) 4H forward (input and recurrent projections of the four gates)
and twice that backward (the inputs' and the weights' gradients), plus the dense layer's. The
reference is the best of several 1024 x 1024 x 1024 ``torch.mm`` calls on one thread in the
step's precision (fp32, or bf16 where the CNN trains in bf16): what this core reaches in
practice, not its datasheet peak. Writes benchmarks/out/peak-share.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from seqmnist.kernels.backends import install_backend, resolve_backend
from seqmnist.models.registry import create_model, get_entry
from seqmnist.training.config import TrainConfig
from seqmnist.training.trainer import resolve_precision
from seqmnist.training.update import Update

OUT = Path(__file__).resolve().parent / "out"


def best_seconds(fn, tries: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.rand(1024, 1024, dtype=dtype), torch.rand(1024, 1024, dtype=dtype)
    return 2 * 1024 ** 3 / best_seconds(lambda: torch.mm(a, b), 10) / 1e9


def lstm_flops(model, steps: int) -> float:
    """Matrix-product FLOPs of one image's forward and backward through a recurrent
    classifier's LSTM layers and dense head (see the module's docstring)."""
    total = 0.0
    for layer in model.recurrent_layers:
        rnn = layer.rnn
        total += 3 * 2 * (rnn.input_size + rnn.hidden_size) * 4 * rnn.hidden_size * steps
    head = model.head
    return total + 3 * 2 * head.in_features * head.out_features


def measure(name: str) -> dict:
    entry = get_entry(name)
    cfg = TrainConfig(model=name, preset="fast", threads=1, replicas=1).resolved()
    shape = (28, 28) if cfg.view == "rows" else (1, 28, 28)
    torch.manual_seed(0)
    counted = create_model(name, shape, 10)
    x, y = torch.rand(cfg.batch_size, *shape), torch.randint(0, 10, (cfg.batch_size,))
    if name == "lstm":
        flops = lstm_flops(counted, shape[0]) * cfg.batch_size
    else:
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(counted(x), y).backward()
        flops = counter.get_total_flops()
    model = create_model(name, shape, 10)
    precision = resolve_precision(cfg, torch.device("cpu"))
    backend = resolve_backend("auto", model, "cpu", precision)
    install_backend(model, backend)
    if x.dim() == 4:
        model, x = model.to(memory_format=torch.channels_last), \
            x.contiguous(memory_format=torch.channels_last)
    cfg = TrainConfig(**{**cfg.__dict__, "precision": precision, "backend": backend})
    update = Update(model, cfg, steps_per_epoch=1000, threads=1)
    model.train()
    seconds = best_seconds(lambda: update(x, y), 5)
    update.close()
    return dict(model=name, batch=cfg.batch_size, backend=backend, precision=precision,
                mflop_per_image=flops / cfg.batch_size / 1e6, step_seconds=seconds,
                gflops=flops / seconds / 1e9, presets=list(entry.presets))


def main() -> None:
    torch.set_num_threads(1)
    limits = {k: os.environ[k] for k in ("SEQMNIST_LSTM_ISA", "ATEN_CPU_CAPABILITY",
                                         "ONEDNN_MAX_CPU_ISA") if k in os.environ}
    reference = {"fp32": matmul_gflops(), "bf16": matmul_gflops(torch.bfloat16)}
    rows = [measure(name) for name in ("lstm", "cnn")]
    print(f"one thread, limits {limits or 'none'}; 1024^3 torch.mm: {reference['fp32']:.1f} "
          f"GFLOP/s in fp32, {reference['bf16']:.1f} in bf16")
    print("| model | batch | backend, precision | MFLOP per image (fwd + bwd) | step | GFLOP/s "
          "| share of the matmul |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        r["share"] = r["gflops"] / reference[r["precision"]]
        print(f"| {r['model']} | {r['batch']} | {r['backend']}, {r['precision']} | "
              f"{r['mflop_per_image']:.1f} | {r['step_seconds'] * 1000:.1f} ms | "
              f"{r['gflops']:.1f} | {r['share']:.0%} |")
    OUT.mkdir(exist_ok=True)
    (OUT / "peak-share.json").write_text(json.dumps(dict(
        limits=limits, matmul_gflops=reference, rows=rows,
        torch=torch.__version__, capability=torch.backends.cpu.get_cpu_capability()), indent=1))


if __name__ == "__main__":
    main()
