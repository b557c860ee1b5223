"""How long looking inside takes, on this machine: ``seqmnist explain`` on its default set for one
LSTM run of the tutorial's architecture (2 x LSTM(50), rows), and the page's live inside view of
one drawing (``/api/explain``'s work: every served model explained on one image).

    python benchmarks/explain.py LSTM_RUN [CNN_RUN] [--repeats 30]

The runs' weights do not change the cost (only their architecture does), so a one-epoch run is
as good as a trained one here. The default set uses the run's stored predictions on the full
MNIST test set. Results: printed as JSON (BENCHMARKS.md section 12 has the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SEQMNIST_DATA") or HERE.parent.parent / "shared" / "data") / "mnist"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()

    import torch

    from seqmnist.data.datasets import load_dataset
    from seqmnist.reports.explainer import explain_runs
    from seqmnist.runs.storage import load_run
    from seqmnist.web import explain_all

    runs = [load_run(r) for r in args.runs]
    ds = load_dataset("mnist", DATA)
    result = dict(cpu=platform.processor() or platform.machine(), threads=torch.get_num_threads(),
                  torch=torch.__version__, models=[r.config.model for r in runs])
    for run in runs:  # the command's default set, one run at a time, twice (the second counts)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            done = explain_runs([run], data_dir=DATA, progress=False)
            times.append(time.perf_counter() - start)
        result[f"default set, {run.config.model}"] = dict(images=len(done),
                                                          seconds=round(times[-1], 2),
                                                          first_seconds=round(times[0], 2))
    drawing = ds.x_test[0]  # a prepared 28 x 28 digit, as the page sends after preparing it
    for chosen in ([runs[0]], runs) if len(runs) > 1 else ([runs[0]],):
        explain_all(chosen, drawing)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            explain_all(chosen, drawing)
            times.append(time.perf_counter() - start)
        q = statistics.quantiles(times, n=100)
        key = "live inside view, " + " + ".join(r.config.model for r in chosen)
        result[key] = dict(p50_ms=round(statistics.median(times) * 1000, 1),
                           p99_ms=round(q[98] * 1000, 1), repeats=args.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
