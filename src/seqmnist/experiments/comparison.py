"""Compare models: train each with several seeds (or reuse finished runs) and write one report.

    from seqmnist import compare
    compare(["lstm", "cnn"], seeds=3, epochs=1, limit=6000, out="reports/quick")
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

from ..core.errors import CheckpointError, UsageError
from ..core.fileio import output_folder
from ..core.progress import bar as progress_bar
from ..core.progress import beside
from ..core.system import keep_freed_memory
from ..data.datasets import load_dataset
from ..data.views import VIEWS
from ..evaluation.evaluate import evaluate
from ..models.layers import draws_from_global_rng
from ..models.registry import create_model
from ..reports.report import write_report
from ..runs.schema import RunMetrics
from ..runs.slots import run_slot, slot_key
from ..runs.storage import PREDICTIONS, Run, inside_a_run, load_run, save_predictions
from ..runs.train import train
from ..training.config import TrainConfig, config_from_args
from ..training.trainer import stop_on_signals
from ..training.update import step_seconds


def finished_run(path: str | Path | Run, data_dir: str | Path | None = None) -> Run:
    """A finished run ready to be compared: its metrics complete, its per-image predictions on
    disk (computed from its weights and saved beside them when an older run lacks them)."""
    run = path if isinstance(path, Run) else load_run(path)
    missing = [k for k in RunMetrics.REQUIRED if (run.metrics or {}).get(k) is None]
    if missing:
        raise CheckpointError(f"{run.path}: metrics.json is missing or incomplete (no "
                              f"{', '.join(missing)}); retrain the run")
    if not (run.path / PREDICTIONS).is_file():
        ev = evaluate(run, data_dir)
        save_predictions(run.path, ev.predictions, ev.probabilities, ev.labels)
    return run


def choose_jobs(runs: int, seeds: int, jobs: int | None) -> int:
    """Runs to train at once. Several seeds of a model finish sooner side by side, one run
    per core with one thread each, than one after another on all cores (2 LSTM seeds, fast
    preset, 12,000 images: 15.6 s against 28.4 s; BENCHMARKS.md): the small models use one
    core well, and start-up, data loading and evaluation overlap. One seed keeps one run at a
    time, each on every core (measured faster for one LSTM and one CNN: section 5)."""
    if jobs is not None:
        return max(1, min(jobs, runs))
    return max(1, min(os.cpu_count() or 1, runs)) if seeds > 1 else 1


def _train_here(cfg: TrainConfig, runs_dir, data_dir, threads: int, tensorboard: bool,
                slots: Path | None = None, dataset=None, together: dict | None = None
                ) -> tuple[str, str, float]:
    """One run of a comparison, in this process (a worker thread) or a worker process: (what
    was done: "trained", "resumed" or "skipped"; the run folder; seconds)."""
    import torch


    torch.set_num_threads(threads)  # per thread: OpenMP keeps it for the calling thread
    start = time.perf_counter()
    cfg = replace(cfg, threads=threads)
    facts = dict(trained_together=together) if together else None
    if slots is not None:  # a resumable comparison: the run's slot under --out
        what, path = run_slot(slot_key(cfg), cfg, Path(slots), data_dir, tensorboard=tensorboard,
                              facts=facts, dataset=dataset)
        return what, str(path), time.perf_counter() - start
    result = train(cfg, out=runs_dir, data_dir=data_dir, progress=False, log=lambda *_: None,
                   tensorboard=tensorboard, dataset=dataset, facts=facts)
    return "trained", str(result.path), time.perf_counter() - start


def _train_in_worker(cfg: TrainConfig, runs_dir: str, data_dir: str | None, threads: int,
                     tensorboard: bool, slots: str | None = None,
                     together: dict | None = None) -> tuple[str, str, float]:

    keep_freed_memory()  # a worker process of this comparison's own: set as the command line does
    return _train_here(cfg, runs_dir, data_dir, threads, tensorboard,
                       None if slots is None else Path(slots), None, together)


def seconds_per_image(configs: list[TrainConfig], image_shape: tuple[int, int],
                      num_classes: int) -> list[float]:
    """A measured training cost per image for each config: one training step of its model on a
    batch of blank images, one thread, best of three (after a warm-up), divided by the batch."""
    import torch


    def key(cfg: TrainConfig) -> tuple:
        return cfg.model, cfg.view, cfg.batch_size, repr(sorted(cfg.model_options.items()))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers train
    per_image: dict[tuple, float] = {}
    try:
        for cfg in configs:
            if key(cfg) in per_image:
                continue
            shape = VIEWS[cfg.view].shape(*image_shape)
            model = create_model(cfg.model, shape, num_classes, **cfg.model_options)
            x = torch.zeros(min(cfg.batch_size, 32), *shape)
            per_image[key(cfg)] = step_seconds(model, x, tries=4) / len(x)
    finally:
        torch.set_num_threads(threads)
    return [per_image[key(c)] for c in configs]


def longest_first(configs: list[TrainConfig], ds) -> list[int]:
    """The order in which to start runs side by side: the most expensive first (longest
    processing time first), so that the runs started last are short ones and no core idles long
    at the end while one slow run finishes alone. A run's cost is measured, not guessed
    (``seconds_per_image``), times its epochs and training images, or its budget. Ties keep the
    given order."""
    per_image = seconds_per_image(configs, ds.image_shape, ds.num_classes)
    total = len(ds.x_train)
    cost = [c.budget if c.budget is not None else p * c.epochs * min(c.limit or total, total)
            for p, c in zip(per_image, configs)]
    return sorted(range(len(configs)), key=lambda i: -cost[i])


def train_side_by_side(configs: list[TrainConfig], jobs: int, runs_dir, data_dir, tensorboard,
                       log, ds, slots: Path | None = None, progress: bool = True) -> list[Path]:
    """Train ``configs`` ``jobs`` at a time, each on its share of the cores, the most expensive
    first (``longest_first``); a line per finished run. Returns the run folders in the order of
    ``configs``. A failed run stops the comparison with its error.

    Side by side in threads of this process where every model draws its random numbers from
    its own generators (``models.draws_from_global_rng``): the runs share the imports, the
    dataset in memory and the start-up, and each still trains exactly as it would alone on one
    thread, ``train --threads 1`` (tested bit for bit in test_sweep.py): its weights built
    under one lock from its seed, its own shuffle and dropout generators.
    Otherwise (the transformer's attention dropout) in worker processes."""
    import torch


    threads = max(1, (os.cpu_count() or 1) // jobs)
    with torch.device("meta"):
        shared = not any(draws_from_global_rng(create_model(
            c.model, VIEWS[c.view].shape(*ds.image_shape), ds.num_classes, **c.model_options))
            for c in configs)
    together = dict(runs=len(configs), at_once=jobs, threads_each=threads,
                    how="threads of one process" if shared else "worker processes")
    order = longest_first(configs, ds)
    paths: list[Path] = [Path()] * len(configs)
    if shared:
        from concurrent.futures import ThreadPoolExecutor

        with stop_on_signals(), ThreadPoolExecutor(
                jobs, thread_name_prefix="run", initializer=torch.set_num_threads,
                initargs=(threads,)) as pool:
            futures = {pool.submit(_train_here, configs[i], runs_dir, data_dir, threads,
                                   tensorboard, slots, ds, together): i for i in order}
            _collect(futures, configs, paths, log, progress)
        return paths
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = {pool.submit(_train_in_worker, configs[i], str(runs_dir),
                               None if data_dir is None else str(data_dir), threads,
                               tensorboard, None if slots is None else str(slots), together): i
                   for i in order}
        _collect(futures, configs, paths, log, progress)
    return paths


def _collect(futures: dict, configs: list[TrainConfig], paths: list[Path], log,
             progress: bool = True) -> None:
    """Wait for the runs, a line per finished one; meanwhile a bar of runs on a terminal, or a
    line every few seconds naming the runs in training where output is not a terminal."""
    from concurrent.futures import FIRST_COMPLETED, wait

    pending, done = set(futures), 0
    with progress_bar(total=len(configs), desc="runs", unit="run", enabled=progress) as bar:
        while pending:
            finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in finished:
                i = futures[future]
                try:
                    what, path, seconds = future.result()
                except BaseException:  # a failed or interrupted run: start no other
                    for f in futures:
                        f.cancel()
                    raise
                done += 1
                took = f"{seconds:.1f} s, " if what != "skipped" else "already finished: "
                line = (f"{what} {configs[i].model}, seed {configs[i].seed} ({done} of "
                        f"{len(configs)}): {took}{path}")
                with beside(bar):  # whatever log writes to, the bar is redrawn after it
                    log(line)
                paths[i] = Path(path)
                bar.update()
            running = [configs[futures[f]] for f in pending if f.running()]
            bar.set_postfix(training=", ".join(f"{c.model} seed {c.seed}" for c in running) or "-",
                            refresh=False)
            bar.refresh()


def compare(models: list[str] | None = None, *, runs: list[str | Path] | None = None,
            seeds: int = 1, out: str | Path | None = None, runs_dir: str | Path | None = None,
            data_dir: str | Path | None = None, progress: bool = True, log=print,
            tensorboard: bool = False, jobs: int | None = None, **config) -> dict:
    """Train each of ``models`` with seeds s, s+1, ... (``seeds`` of them; s is ``seed``, default
    0) and the same settings (``config`` = TrainConfig fields), add finished ``runs``, and write
    ``report.md``, ``report.html`` and ``comparison.json`` under ``out``. Returns the analysis.
    ``jobs``: runs trained at the same time, side by side on their shares of the cores
    (``train_side_by_side``; default: one per core when there are several seeds, else one).
    With ``out`` and no ``runs_dir``, each run has its slot under ``out/runs/`` and the same call
    again after a kill skips the finished runs and resumes the interrupted ones (as a sweep
    does); else new runs go under ``runs_dir`` (default ``runs/``)."""

    if seeds < 1:
        raise UsageError(f"seeds must be at least 1, got {seeds}")
    run_folder = inside_a_run(Path(out)) if out is not None else None
    if run_folder is not None:  # the report's figures would replace the run's own plots
        raise UsageError(f"--out {out} is inside the run folder {run_folder}: a report there "
                         "would replace the run's own files; give another folder")
    models = list(models) if models else ([] if runs else ["lstm", "cnn"])
    base = config_from_args("lstm", **config)
    configs = [replace(base, model=m, seed=base.seed + k).resolved()  # fail fast on bad options
               for m in models for k in range(seeds)]
    if not configs and not runs:
        raise UsageError("nothing to compare: give model names or --runs")
    given = [load_run(r) for r in runs or []]
    dataset_name = config.get("dataset") or (given[0].config.dataset if given else "mnist")
    if any(r.config.dataset != dataset_name for r in given):
        raise UsageError("runs to compare must all use the same dataset")
    # the report's folder is made (or claimed) and held before any work, for the whole command
    with output_folder(out, "comparison", default=dataset_name) as folder:
        finished = [finished_run(r, data_dir) for r in given]
        ds = load_dataset(dataset_name, data_dir)
        slots = folder if out is not None and runs_dir is None and configs else None
        paths = _train_all(configs, seeds, jobs, slots, Path(runs_dir or "runs"), data_dir, ds,
                           progress, log, tensorboard)
        finished += [load_run(path) for path in paths]
        log(f"Writing the report on {len(finished)} runs (paired tests, figures, galleries)...")
        summary = write_report(finished, folder, ds.x_test, test_labels=ds.y_test)
    caveat = f"{summary['caveat']}\n" if summary.get("caveat") else ""
    log(f"\n{caveat}{summary['verdict']}\nReport: {summary['report']}")
    return summary


def _train_all(configs: list[TrainConfig], seeds: int, jobs: int | None, slots: Path | None,
               runs_dir: Path, data_dir, ds, progress: bool, log, tensorboard: bool
               ) -> list[Path]:
    """The run folders of ``configs``, trained (or, in ``slots``, skipped or resumed)."""

    jobs = choose_jobs(len(configs), seeds, jobs)
    if jobs > 1:
        log(f"Training {len(configs)} runs, {jobs} at a time (one per core, one thread each: "
            "measured faster for several seeds, BENCHMARKS.md), the longest first")
        return train_side_by_side(configs, jobs, runs_dir, data_dir, tensorboard, log, ds, slots,
                                  progress)
    paths = []
    for i, cfg in enumerate(configs, 1):
        log(f"\n=== {cfg.model}, seed {cfg.seed} ({i} of {len(configs)}) ===")
        if slots is not None:
            what, path = run_slot(slot_key(cfg), cfg, slots, data_dir, log,
                                  tensorboard=tensorboard, progress=progress)
            if what != "trained":
                log(f"{what} {path}")
            paths.append(path)
        else:
            paths.append(train(cfg, out=runs_dir, data_dir=data_dir, dataset=ds,
                               progress=progress, log=log, tensorboard=tensorboard).path)
    return paths
