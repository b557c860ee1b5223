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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

from ..core.errors import SeqmnistError, UsageError
from ..core.fileio import output_folder, read_regular_file, write_json
from ..core.progress import bar as progress_bar
from ..core.progress import print_beside
from ..core.units import format_duration, parse_duration
from ..data.datasets import get_spec, load_dataset
from ..data.views import get_view
from ..models.plugins import load_plugin
from ..models.registry import get_entry
from ..reports.report import write_report, write_sweep_summary
from ..runs.slots import run_slot, slot_key
from ..training.config import TrainConfig
from .comparison import finished_run, seconds_per_image

SPEC_KEYS = {"models", "views", "datasets", "seeds", "recipe", "overrides", "plugins"}
# TrainConfig fields a spec may not set: they are the grid's, or where and how a run is stored.
NOT_IN_RECIPE = {"model", "view", "dataset", "seed", "data_dir", "replicas", "model_options"}
MAX_RUNS = 10_000  # a grid larger than this is refused: split it into several specs
CONFIRM_RUNS = 500  # a grid larger than this needs --yes, after its estimated time is shown


@dataclass(frozen=True)
class GridRun:
    model: str
    view: str
    dataset: str
    seed: int
    config: TrainConfig
    # the spec's plug-ins, for a worker elsewhere to load first: (spec, kind, sha256, source),
    # a file's source shipped with the task
    plugins: tuple = ()

    @property
    def key(self) -> str:
        return slot_key(self.config)


@dataclass
class Spec:
    runs: list[GridRun]
    skipped: list[str]  # "cnn x pixels: cnn cannot read the pixels view"


class SweepLocked(SeqmnistError):
    """Another sweep is running on the same folder."""


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
    table = dict(table)
    if "budget" in table:  # budget = "5m", as on the command line
        try:
            table["budget"] = parse_duration(table["budget"])
        except UsageError as exc:
            raise UsageError(f"[{where}] budget: {exc}") from None
    return table


def parse_spec(text: str, name: str = "spec", base: Path | None = None) -> Spec:
    """The grid a TOML spec describes, every setting checked before anything runs; its
    ``plugins`` (files, relative to ``base``, the spec's folder, or modules) load first."""

    try:
        spec = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{name}: not valid TOML ({exc})") from None
    except RecursionError:
        raise UsageError(f"{name}: nested too deeply to be a sweep spec") from None
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise UsageError(f"{name}: unknown keys {unknown}; a spec has {', '.join(sorted(SPEC_KEYS))}")
    shipped = []
    for plugin in _list(spec, "plugins", str, required=False):
        where = Path(plugin)
        if plugin.endswith(".py") and not where.is_absolute() and base is not None:
            plugin = str(base / where)
        record = load_plugin(plugin)
        source = Path(record["plugin"]).read_text() if record["kind"] == "file" else None
        shipped.append((record["plugin"], record["kind"], record["sha256"], source))
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
    size = len(models) * len(datasets) * len(seeds) * max(1, len(views))
    if size > MAX_RUNS:
        raise UsageError(f"{name}: the grid has up to {size:,} runs, more than the {MAX_RUNS:,} "
                         "one sweep takes; split it into several specs")
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
            except (TypeError, UsageError) as exc:
                raise UsageError(f"{name}: {exc}") from None
            runs.append(GridRun(model, view, dataset, seed, cfg, tuple(shipped)))
    if not runs:
        raise UsageError(f"{name}: the grid is empty (" + "; ".join(skipped) + ")")
    return Spec(runs, skipped)


def load_spec(path: str | Path) -> Spec:

    path = Path(path)
    data = read_regular_file(path, 1 << 20, UsageError)  # a spec is a few lines; never a pipe
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: cannot read the spec ({exc})") from None
    return parse_spec(text, str(path), path.parent)


def run_one(grid_run: GridRun, out: Path, data_dir: str | Path | None = None,
            log: Callable[[str], None] = lambda *_: None,
            facts: dict | None = None) -> tuple[str, Path]:
    """Finish one run of the grid under ``out`` (its slot ``out/runs/<key>``, ``slots.run_slot``):
    skip it, resume it or start it. Returns (what was done, the run folder)."""
    return run_slot(grid_run.key, grid_run.config, out, data_dir, log, facts)


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

    if not isinstance(spec, Spec):
        name = Path(spec).stem
        spec = load_spec(spec)
    else:
        name = "sweep"
    out = Path(out) if out else Path("sweeps") / name
    with output_folder(out, "sweep", error=SweepLocked):
        return _sweep_locked(spec, out, data_dir, progress, log, runner)


def _sweep_locked(spec: Spec, out: Path, data_dir, progress: bool, log, runner) -> dict:
    for line in spec.skipped:
        log(f"skipped: {line}")
    done: dict[str, Path] = {}
    bar = progress_bar(total=len(spec.runs), unit="run", desc="sweep", enabled=progress)

    def finished(grid_run: GridRun, what: str, path: Path, note: str) -> None:
        done[grid_run.key] = Path(path)
        bar.update()
        print_beside(bar, f"{what:8s} {grid_run.key} ({note}) -> {path}")

    try:
        (runner or run_here)(spec.runs, out, data_dir, finished)
    finally:
        bar.close()
    summary = write_sweep_report([(r, done[r.key]) for r in spec.runs], out, data_dir)
    log(f"Sweep of {len(done)} runs: {summary['report']}")
    return summary


def estimate_seconds(spec: Spec) -> float:
    """Training time of the whole grid on one core, measured rather than guessed: one timed
    training step of each model (``comparison.seconds_per_image``) x epochs x images, or a
    budget run's budget. Evaluation
    and start-up are not counted, so the real time is longer."""

    total = 0.0
    for dataset in sorted({r.dataset for r in spec.runs}):
        ds = get_spec(dataset)
        configs = [r.config for r in spec.runs if r.dataset == dataset]
        for cost, cfg in zip(seconds_per_image(configs, ds.image_shape, len(ds.classes)),
                             configs):
            images = min(cfg.limit or ds.train_images, ds.train_images)
            total += cfg.budget if cfg.budget is not None else cost * cfg.epochs * images
    return total


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"about {seconds / size:,.1f} {unit}"
    return f"about {seconds:.0f} seconds"


def check_size(spec: Spec, yes: bool) -> None:
    """A grid of more than CONFIRM_RUNS runs starts only with ``yes``; the refusal says how
    long it would take."""
    if len(spec.runs) <= CONFIRM_RUNS or yes:
        return
    raise UsageError(f"the grid has {len(spec.runs):,} runs: {_duration(estimate_seconds(spec))} "
                     f"of training on one core (measured: one step of each model x epochs x "
                     f"images; evaluation not counted). Give --yes to start it anyway "
                     f"(more than {CONFIRM_RUNS} runs need it)")


def write_sweep_report(done: list[tuple[GridRun, Path]], out: Path,
                       data_dir: str | Path | None = None) -> dict:
    """One comparison report per dataset (the same as ``compare --runs`` on those runs) and the
    grid's table of model x view x dataset."""

    by_dataset: dict[str, list[Path]] = {}
    for grid_run, path in done:
        by_dataset.setdefault(grid_run.dataset, []).append(path)
    reports, rows = {}, []
    for dataset, paths in by_dataset.items():
        ds = load_dataset(dataset, data_dir)
        result = write_report([finished_run(p, data_dir) for p in paths],
                              out / f"report-{dataset}", ds.x_test, test_labels=ds.y_test)
        reports[dataset] = result["report"]
        for g in result["groups"]:
            acc = g["accuracy"]
            ci = acc["ci_seeds"] or acc["ci_images"]
            rows.append(dict(model=g["model"], view=g["view"], dataset=dataset,
                             seeds=g["seeds"], mean=acc["mean"], std=acc["std"], ci=ci,
                             report=str(Path(result["report"]).relative_to(out)),
                             runs=[str(Path(r).relative_to(out)) for r in g["runs"]]))
    write_sweep_summary(rows, out)
    write_json(out / "sweep.json", dict(rows=rows, reports=reports))
    return dict(rows=rows, reports=reports, report=str(out / "sweep.md"))


def describe(spec: Spec) -> str:
    """The dry run: every run of the grid, and what is skipped."""
    lines = [f"{len(spec.runs)} runs:"]
    if len(spec.runs) > CONFIRM_RUNS:
        lines[0] = (f"{len(spec.runs)} runs ({_duration(estimate_seconds(spec))} of training on "
                    "one core, evaluation not counted):")
    for r in spec.runs:
        c = r.config
        length = f"{c.epochs} epochs" if c.budget is None else \
            f"a budget of {format_duration(c.budget)}"
        lines.append(f"  {r.key}: {length}, batch {c.batch_size}, lr {c.lr:g} "
                     f"({c.schedule}), preset {c.preset}" + (f", limit {c.limit}" if c.limit else ""))
    lines += [f"skipped: {s}" for s in spec.skipped]
    return "\n".join(lines)

