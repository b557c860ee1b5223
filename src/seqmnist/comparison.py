"""Compare models: train each (or reuse finished runs) and write one report.

    from seqmnist import compare
    compare(["lstm", "cnn"], epochs=1, limit=6000, out="reports/quick")
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

from .config import TrainConfig
from .data import load_dataset
from .errors import UsageError
from .storage import load_run


def compare(models: list[str] | None = None, *, runs: list[str | Path] | None = None,
            out: str | Path | None = None, runs_dir: str | Path = "runs",
            data_dir: str | Path | None = None, progress: bool = True, log=print,
            **config) -> dict:
    """Train ``models`` with the same settings (``config`` = TrainConfig fields), add finished
    ``runs``, and write ``report.md`` / ``report.html`` under ``out``. Returns the report summary."""
    from .reports import write_report
    from .training import train

    models = list(models) if models else ([] if runs else ["lstm", "cnn"])
    finished = [load_run(r) for r in runs or []]
    dataset_name = config.get("dataset") or (finished[0].config.dataset if finished else "mnist")
    if any(r.config.dataset != dataset_name for r in finished):
        raise UsageError("runs to compare must all use the same dataset")
    base = TrainConfig(**{k: v for k, v in config.items() if v is not None})
    configs = [replace(base, model=m).resolved() for m in models]  # fail fast on bad options
    ds = load_dataset(dataset_name, data_dir)
    for cfg in configs:
        log(f"\n=== {cfg.model} ===")
        result = train(cfg, out=runs_dir, data_dir=data_dir, dataset=ds, progress=progress, log=log)
        finished.append(load_run(result.path))
    if not finished:
        raise UsageError("nothing to compare: give model names or --runs")
    out = Path(out) if out else Path("reports") / datetime.now().strftime(
        f"%Y%m%d-%H%M%S-{dataset_name}")
    summary = write_report(finished, out, ds.x_test)
    log(f"\n{summary['verdict']}\nReport: {summary['report']}")
    return summary
