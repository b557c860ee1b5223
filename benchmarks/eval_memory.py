"""One evaluation pass at 784 steps (pixels) of one model: seconds, images per second and the
process's peak memory, for 1,000 random inputs with every step's answer (``anytime=True``, the
final test pass). One model per process, so that the peak is that model's:

    for m in mingru transformer s4d tcn lstm; do python benchmarks/eval_memory.py $m; done

(BENCHMARKS.md section 27 ran it against an older checkout with ``PYTHONPATH=OLD/src``.)
"""

import resource
import sys
import time

import torch

from seqmnist.kernels.backends import inference_backend, install_backend
from seqmnist.models.registry import create_model
from seqmnist.training.metrics import evaluate_tensors

name = sys.argv[1]
torch.manual_seed(0)
x, y = torch.rand(1000, 784, 1), torch.randint(0, 10, (1000,))
model = create_model(name, (784, 1), 10).eval()
install_backend(model, inference_backend("auto", model))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
ev = evaluate_tensors(model, x, y, 1000, "fp32", anytime=True)
s = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{name}: {s:.1f} s, {1000 / s:.0f} img/s, peak RSS {peak / 1e6:.2f} GB "
      f"(before evaluating {base / 1e6:.2f} GB), accuracy {ev.accuracy:.4f}")
