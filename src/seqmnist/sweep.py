"""Sweeps: a grid of models x views x datasets x seeds from a TOML spec, run on this machine (or,
through a runner from ``cluster``, on Ray), with every finished run kept and every interrupted one
resumed when the same command runs again.

    models = ["lstm", "cnn"]
    views = ["rows"]          # optional: each model's default view when absent
    datasets = ["mnist"]
    seeds = [0, 1, 2, 3, 4]
    [recipe]                  # anything `seqmnist train` accepts: preset, epochs, limit, ...
    preset = "fast"
    [overrides.cnn]           # optional, per model
    epochs = 3

``seqmnist sweep SPEC.toml [--out DIR] [--dry-run]``. Each run of the grid has its own folder,
``DIR/runs/<model>-<dataset>-<view>-seed<seed>/``, holding one seqmnist run: a finished run there
is skipped, an interrupted one resumed from its checkpoint, so a killed sweep costs at most one
epoch per run in flight. At the end, one report per dataset (as ``compare`` writes it for the same
runs) and ``DIR/sweep.md`` / ``sweep.json``: model x view x dataset with mean and interval.
"""

from __future__ import annotations

import itertools
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import tomllib

from .config import TrainConfig
from .errors import CheckpointError, UsageError
from .fileio import atomic_write, write_json
from .storage import CHECKPOINT, PREVIOUS_CHECKPOINT, WEIGHTS

SPEC_KEYS = {"models", "views", "datasets", "seeds", "recipe", "overrides"}
# TrainConfig fields a spec may not set: they are the grid's, or where and how a run is stored.
NOT_IN_RECIPE = {"model", "view", "dataset", "seed", "data_dir", "replicas", "model_options"}


@dataclass(frozen=True)
class GridRun:
    model: str
    view: str
    dataset: str
    seed: int
    config: TrainConfig

    @property
    def key(self) -> str:
        return f"{self.model}-{self.dataset}-{self.view}-seed{self.seed}"


@dataclass
class Spec:
    runs: list[GridRun]
    skipped: list[str]  # "cnn x pixels: cnn cannot read the pixels view"


def _list(spec: dict, key: str, kind: type, required: bool = True) -> list:
    if key not in spec:
        if required:
            raise UsageError(f"the spec needs {key} = [...]")
        return []
    value = spec[key]
    if not isinstance(value, list) or not value:
        raise UsageError(f"{key} must be a non-empty list, got {value!r}")
    if not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise UsageError(f"every entry of {key} must be a {kind.__name__}, got {value!r}")
    if len(set(value)) != len(value):
        raise UsageError(f"{key} lists an entry twice: {value!r}")
    return value


def _recipe(table, where: str) -> dict:
    if not isinstance(table, dict):
        raise UsageError(f"[{where}] must be a table of training settings")
    allowed = {f.name for f in fields(TrainConfig)} - NOT_IN_RECIPE
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UsageError(f"[{where}] has unknown settings {unknown}; it takes "
                         f"{', '.join(sorted(allowed))}")
    return dict(table)


def parse_spec(text: str, name: str = "spec") -> Spec:
    """The grid a TOML spec describes, every setting checked before anything runs."""
    from .data import get_spec
    from .models import get_entry
    from .views import get_view

    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{name}: not valid TOML ({exc})") from None
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise UsageError(f"{name}: unknown keys {unknown}; a spec has {', '.join(sorted(SPEC_KEYS))}")
    models = _list(spec, "models", str)
    views = _list(spec, "views", str, required=False)
    datasets = _list(spec, "datasets", str)
    seeds = _list(spec, "seeds", int)
    for model in models:
        get_entry(model)
    for view in views:
        get_view(view)
    for dataset in datasets:
        get_spec(dataset)
    if any(s < 0 for s in seeds):
        raise UsageError(f"seeds must be whole numbers of at least 0, got {seeds}")
    recipe = _recipe(spec.get("recipe", {}), "recipe")
    overrides = spec.get("overrides", {})
    if not isinstance(overrides, dict) or set(overrides) - set(models):
        raise UsageError(f"[overrides.MODEL] tables must name models of the sweep ({models})")
    runs, skipped = [], []
    for model, dataset, seed in itertools.product(models, datasets, seeds):
        entry = get_entry(model)
        for view in views or [entry.defaults["view"]]:
            if view not in entry.views:
                line = f"{model} x {view}: {model} cannot read the {view} view"
                if line not in skipped:
                    skipped.append(line)
                continue
            settings = {**recipe, **_recipe(overrides.get(model, {}), f"overrides.{model}")}
            try:
                cfg = TrainConfig(model=model, view=view, dataset=dataset, seed=seed,
                                  **settings).resolved()
            except TypeError as exc:
                raise UsageError(f"{name}: {exc}") from None
            runs.append(GridRun(model, view, dataset, seed, cfg))
    if not runs:
        raise UsageError(f"{name}: the grid is empty (" + "; ".join(skipped) + ")")
    return Spec(runs, skipped)


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the spec ({exc})") from None
    return parse_spec(text, str(path))


def run_state(folder: Path) -> tuple[str, Path | None]:
    """("done", run), ("resume", run), or ("new", None) for a grid run's folder."""
    runs = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    for run in runs:
        if (run / WEIGHTS).is_file():
            return "done", run
    for run in runs:
        if (run / CHECKPOINT).is_file() or (run / PREVIOUS_CHECKPOINT).is_file():
            return "resume", run
    return "new", None


def run_one(grid_run: GridRun, out: Path, data_dir: str | Path | None = None,
            log: Callable[[str], None] = lambda *_: None,
            facts: dict | None = None) -> tuple[str, Path]:
    """Finish one run of the grid under ``out``: skip it, resume it or start it. Returns (what
    was done, the run folder). Safe to call again after any interruption. ``facts``: more
    provenance for the run (where it ran)."""
    from .training import train

    folder = out / "runs" / grid_run.key
    state, run = run_state(folder)
    if state == "done":
        return "skipped", run
    if state == "resume":
        try:
            return "resumed", train(resume=run, data_dir=data_dir, progress=False, log=log,
                                    facts=facts).path
        except CheckpointError as exc:  # never deleted silently: the user decides
            raise CheckpointError(f"{exc}\n(remove {run} to train that run of the sweep again)"
                                  ) from None
    for abandoned in (p for p in folder.glob("*") if p.is_dir()):
        shutil.rmtree(abandoned)  # killed before its first epoch was saved: nothing to keep
    folder.mkdir(parents=True, exist_ok=True)
    cfg = replace(grid_run.config, data_dir=None)
    return "trained", train(cfg, out=folder, data_dir=data_dir, progress=False, log=log,
                            facts=facts).path


# A runner finishes every run it is given and calls ``finished(grid_run, what, path, note)`` as
# each one ends, in any order; the sweep owns the progress, the folder and the reports.
Finished = Callable[[GridRun, str, Path, str], None]
Runner = Callable[[list[GridRun], Path, "str | Path | None", Finished], None]


def run_here(runs: list[GridRun], out: Path, data_dir: str | Path | None,
             finished: Finished) -> None:
    """The embedded runner: one run after another on this machine, each on all the cores
    (measured faster than side by side on 2 cores: BENCHMARKS.md)."""
    for grid_run in runs:
        start = time.perf_counter()
        what, path = run_one(grid_run, out, data_dir)
        finished(grid_run, what, path, f"{time.perf_counter() - start:.1f} s")


def sweep(spec: Spec | str | Path, out: str | Path | None = None,
          data_dir: str | Path | None = None, progress: bool = True,
          log: Callable[[str], None] = print, runner: Runner | None = None) -> dict:
    """Run every run of the grid with ``runner`` (default: ``run_here``, this machine; the CLI's
    ``--ray`` gives ``cluster.ray_runner``), then write the reports. Returns the summary."""
    from tqdm.auto import tqdm

    if not isinstance(spec, Spec):
        name = Path(spec).stem
        spec = load_spec(spec)
    else:
        name = "sweep"
    out = Path(out) if out else Path("sweeps") / name
    for line in spec.skipped:
        log(f"skipped: {line}")
    done: dict[str, Path] = {}
    bar = tqdm(total=len(spec.runs), unit="run", desc="sweep", disable=None if progress else True)

    def finished(grid_run: GridRun, what: str, path: Path, note: str) -> None:
        done[grid_run.key] = Path(path)
        bar.update()
        tqdm.write(f"{what:8s} {grid_run.key} ({note}) -> {path}")

    try:
        (runner or run_here)(spec.runs, out, data_dir, finished)
    finally:
        bar.close()
    summary = write_sweep_report([(r, done[r.key]) for r in spec.runs], out, data_dir)
    log(f"Sweep of {len(done)} runs: {summary['report']}")
    return summary


def write_sweep_report(done: list[tuple[GridRun, Path]], out: Path,
                       data_dir: str | Path | None = None) -> dict:
    """One comparison report per dataset (the same as ``compare --runs`` on those runs) and the
    grid's table of model x view x dataset."""
    from .comparison import finished_run
    from .data import load_dataset
    from .reports import write_report

    by_dataset: dict[str, list[Path]] = {}
    for grid_run, path in done:
        by_dataset.setdefault(grid_run.dataset, []).append(path)
    reports, rows = {}, []
    for dataset, paths in by_dataset.items():
        ds = load_dataset(dataset, data_dir)
        result = write_report([finished_run(p, data_dir) for p in paths],
                              out / f"report-{dataset}", ds.x_test)
        reports[dataset] = result["report"]
        for g in result["groups"]:
            acc = g["accuracy"]
            ci = acc["ci_seeds"] or acc["ci_images"]
            rows.append(dict(model=g["model"], view=g["view"], dataset=dataset,
                             seeds=g["seeds"], mean=acc["mean"], std=acc["std"], ci=ci,
                             report=str(Path(result["report"]).relative_to(out)),
                             runs=[str(Path(r).relative_to(out)) for r in g["runs"]]))
    md = ["# seqmnist sweep", "", "| model | view | dataset | seeds | test accuracy (mean ± std) "
          "| 95% interval | report |", "| --- | --- | --- | --- | --- | --- | --- |"]
    md += [f"| {r['model']} | {r['view']} | {r['dataset']} | {len(r['seeds'])} | "
           f"{r['mean'] * 100:.2f}%"
           + (f" ± {r['std'] * 100:.2f}" if len(r["seeds"]) > 1 else " (one seed: no spread)")
           + f" | {r['ci'][0] * 100:.2f} to {r['ci'][1] * 100:.2f} | "
           f"[{r['dataset']}]({r['report']}) |" for r in rows]
    md += ["", "Intervals: t across seeds with two or more seeds, else bootstrap over test "
           "images. Every run folder is under `runs/`; each dataset's report holds the pairwise "
           "tests and the verdict."]
    atomic_write(out / "sweep.md", "\n".join(md) + "\n")
    write_json(out / "sweep.json", dict(rows=rows, reports=reports))
    return dict(rows=rows, reports=reports, report=str(out / "sweep.md"))


def describe(spec: Spec) -> str:
    """The dry run: every run of the grid, and what is skipped."""
    lines = [f"{len(spec.runs)} runs:"]
    for r in spec.runs:
        c = r.config
        lines.append(f"  {r.key}: {c.epochs} epochs, batch {c.batch_size}, lr {c.lr:g} "
                     f"({c.schedule}), preset {c.preset}" + (f", limit {c.limit}" if c.limit else ""))
    lines += [f"skipped: {s}" for s in spec.skipped]
    return "\n".join(lines)

