"""The ``seqmnist`` command line: parse, then call the same functions a Python user would.

Choices (models, views, datasets, presets, backends) come from the registries. Only the parser of
the command being run is built, so ``seqmnist --help`` answers without importing torch; a
command's own parser imports the registries it offers.

Imports inside functions: this file is the one place they are the rule. Each command imports what
it runs inside its own function, because ``seqmnist --help`` (which imports only this file and
``core.errors``) takes 0.03-0.05 s where importing torch and the comparison takes 1.8 s (measured
with ``/usr/bin/time`` on a 2-core EPYC). Everywhere else imports sit at the top of the module;
inside a function there remain only third-party ones: the extras (onnx, onnxruntime, Ray, h5py,
Captum, TensorBoard, uvicorn) and the heavy libraries (torch, scipy, statsmodels, safetensors) in
modules whose light parts other commands read without them.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable
from pathlib import Path

EPILOG = "Start with: seqmnist compare --epochs 1 --limit 6000   (a one-minute look)"


class Parser(argparse.ArgumentParser):
    """Usage errors are one line (with a "did you mean" where one fits) and exit code 2."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def int_at_least(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number in [minimum, maximum]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum:,}, got {value:,}")
        return value
    return parse


nonnegative_int = int_at_least(0)
# A training setting's range is checked in one place, TrainConfig.resolved() (and a model
# option's by its model): the command line only reads the value as a number.
whole_number = int_at_least(-(2**63))


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def duration(text: str) -> float:
    """An argparse type: a duration (``90s``, ``10m``, ``2h``), in seconds."""
    from .core.errors import UsageError
    from .core.units import parse_duration

    try:
        return parse_duration(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def key_value(text: str) -> tuple[str, object]:
    """An argparse type: KEY=VALUE, the value read as JSON where it is JSON (numbers, lists)."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except RecursionError:
        raise argparse.ArgumentTypeError(f"{key}: the value is nested too deeply to be a model "
                                         "option") from None
    except ValueError:
        return key, value


def one_of(names, what: str) -> Callable[[str], str]:
    """An argparse type accepting one of ``names``, suggesting the closest on a typo."""
    names = list(names)

    def parse(text: str) -> str:
        if text in names:
            return text
        close = difflib.get_close_matches(text, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise argparse.ArgumentTypeError(f"unknown {what} {text!r}{hint} (choose from "
                                         f"{', '.join(names)})")
    parse.__name__ = what  # argparse names the type in some messages
    return parse


def choices_help(text: str, names, default: str | None) -> str:
    shown = f"{text}: {', '.join(names)}"
    return shown + (f" (default: {default})" if default else "")


def add_training_options(p: argparse.ArgumentParser) -> None:
    from .data.datasets import DATASETS
    from .data.views import VIEWS
    from .training.config import (
        BACKENDS,
        PRECISIONS,
        PRESET_HELP,
        PRESETS,
        PROTOCOL_HELP,
        SCHEDULES,
        TUTORIAL_RECIPE,
    )

    p.add_argument("--dataset", type=one_of(DATASETS, "dataset"),
                   help=choices_help("dataset", DATASETS, "mnist"))
    p.add_argument("--view", type=one_of(VIEWS, "view"), help=choices_help(
        "how the image is read", VIEWS, "the model's own: rows for recurrent models, image for cnn"))
    p.add_argument("--epochs", type=whole_number, help=f"epochs (default: the preset's, else "
                   f"{TUTORIAL_RECIPE['epochs']}, the tutorial's)")
    p.add_argument("--budget", type=duration, metavar="DURATION", help="train for this much "
                   "training time instead of a number of epochs (90s, 10m, 2h): the learning "
                   "rate's schedule ends at it, validation after each tenth (default: epochs)")
    p.add_argument("--batch-size", type=whole_number, help=f"batch size (default: the preset's, "
                   f"else {TUTORIAL_RECIPE['batch_size']}, the tutorial's)")
    p.add_argument("--lr", type=number, help="learning rate, the peak one with a one-cycle "
                   "schedule (default: the preset's, else the model's: 1e-3 recurrent, 1e-4 cnn)")
    p.add_argument("--seed", type=whole_number, help="random seed (default: 0)")
    p.add_argument("--permutation", type=whole_number, metavar="N", help="the permuted view's "
                   "pixel order: one fixed order, the same for every seed and model (default: "
                   "0; -1: each seed's own, as runs made before the order was fixed)")
    p.add_argument("--limit", type=whole_number, metavar="N", help="train on the first N "
                   "training images only, for a quick look (default: all of them)")
    p.add_argument("--preset", type=one_of(PRESETS, "preset"), help=choices_help(
        "recipe", [f"{k} ({v})" for k, v in PRESET_HELP.items() if k in PRESETS], "tutorial"))
    p.add_argument("--protocol", type=one_of(PROTOCOL_HELP, "protocol"), help=choices_help(
        "evaluation protocol", [f"{k} ({v})" for k, v in PROTOCOL_HELP.items()], "tutorial"))
    p.add_argument("--validation-images", type=whole_number, metavar="N", help="research "
                   "protocol: hold out the last N training images for validation (default: "
                   "5,000, or a tenth of fewer than 20,000)")
    p.add_argument("--patience", type=whole_number, help="research protocol: stop after "
                   "this many epochs without a better validation accuracy (default: 5)")
    p.add_argument("--precision", type=one_of(PRECISIONS, "precision"), help=choices_help(
        "training precision", PRECISIONS, "auto: bf16 autocast for the CNN where the hardware "
        "has bf16, else fp32"))
    p.add_argument("--schedule", type=one_of(SCHEDULES, "schedule"), help=choices_help(
        "learning-rate schedule", SCHEDULES, "the preset's, else constant"))
    p.add_argument("--backend", type=one_of(BACKENDS, "backend"), help=choices_help(
        "what computes the LSTM", BACKENDS, "auto: seqmnist's kernel where it can run, else "
        "torch; `seqmnist doctor` shows which"))
    p.add_argument("--threads", type=whole_number, help="CPU threads for PyTorch "
                   "(default: PyTorch's, one per core)")
    p.add_argument("--device", type=str, help="auto, cpu, cuda or cuda:N (default: auto, "
                   "the GPU if PyTorch sees one)")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="use only deterministic algorithms (default: off)")
    add_data_and_progress(p)
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events "
                   "into each run folder's tensorboard/ (default: off; extra "
                   "seqmnist[tensorboard])")


TRAIN_FIELDS = ("dataset", "view", "epochs", "budget", "batch_size", "lr", "seed", "permutation",
                "limit", "preset", "validation_images",
                "precision", "schedule", "backend", "threads", "device", "deterministic",
                "protocol", "patience")


def add_data_dir(p: argparse.ArgumentParser, text: str = "folder holding the dataset's files, "
                 "used instead of searching") -> None:
    """--data-dir, the same for every command that reads a dataset."""
    p.add_argument("--data-dir", type=Path, help=f"{text} (default: search SEQMNIST_DATA, the "
                   "cache, then download)")


def add_data_and_progress(p: argparse.ArgumentParser) -> None:
    """Where training finds its data, and its progress bars: for every command that trains."""
    add_data_dir(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: "
                   "shown on a terminal)")


def add_plugin(p: argparse.ArgumentParser) -> None:
    """--plugin, for every command that takes a model or a run: models from the user's own code
    (``main`` loads them before any parser offers the model names)."""
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py|MODULE",
                   help="load models from your own file or module first (repeatable; default: "
                   "none; installed packages' seqmnist.models entry points load without it)")


def plugins_asked(argv: list[str]) -> list[str]:
    """The --plugin values in ``argv``, read before the parser is built: the parser's model
    choices must already hold the plug-ins' models."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "--plugin" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            found.append(arg.split("=", 1)[1])
    return found


def _models_arg(p: argparse.ArgumentParser, **kwargs) -> None:
    from .models.registry import list_models

    p.add_argument("model", type=one_of(list_models(), "model"), metavar="MODEL", **kwargs)


def build_compare(p: argparse.ArgumentParser) -> None:
    from .models.registry import list_models

    p.add_argument("models", nargs="*", type=one_of(list_models(), "model"), metavar="MODEL",
                   help=choices_help("models to train", list_models(), "lstm cnn"))
    p.add_argument("--runs", nargs="+", type=Path, default=[], metavar="RUN",
                   help="finished run folders to include instead of (or besides) training "
                   "(default: none)")
    p.add_argument("--out", type=Path, help="report folder (default: reports/<time>-<dataset>)")
    p.add_argument("--runs-dir", type=Path, help="where new runs go (default: OUT/runs/ with "
                   "--out, where the same command again skips finished runs and resumes "
                   "interrupted ones; else runs/)")
    p.add_argument("--seeds", type=int_at_least(1, 1000), default=1, metavar="N",
                   help="train every model with N seeds (--seed, --seed + 1, ...) and report "
                   "mean, spread, intervals and paired tests (default: 1)")
    p.add_argument("--jobs", type=int_at_least(1, 256), help="runs trained at the same time, "
                   "side by side in this process, each on its share of the cores (default: one "
                   "per core with several seeds, else 1)")
    add_training_options(p)
    add_plugin(p)


def build_train(p: argparse.ArgumentParser) -> None:
    from .models.registry import list_models

    _models_arg(p, nargs="?", help=choices_help("model to train", list_models(), None) +
                " (none with --resume)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="parent of run folders "
                   "(default: runs/)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue an interrupted run "
                   "from its last complete epoch (default: start a new run)")
    p.add_argument("--hidden", type=whole_number, help="recurrent units per layer "
                   "(default: 50)")
    p.add_argument("--layers", type=whole_number, help="recurrent layers (default: 2)")
    p.add_argument("--bidirectional", action="store_true", help="bidirectional recurrent layers "
                   "(default: off)")
    p.add_argument("--model-option", action="append", type=key_value, default=[],
                   metavar="KEY=VALUE", help="any option of the model's constructor, e.g. "
                   "d_model=128 or channels=[16,32] (repeatable; default: the model's own)")
    add_training_options(p)
    add_plugin(p)


def build_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="a finished run folder")
    add_data_dir(p)
    p.add_argument("--json", action="store_true", help="print JSON (default: one line of text)")
    add_plugin(p)


def build_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="a finished run folder")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE",
                   help="PNG, JPEG, BMP, GIF or WebP files of digits, any size")
    p.add_argument("--json", action="store_true", help="print JSON (default: text)")
    add_plugin(p)


def build_summary(p: argparse.ArgumentParser) -> None:
    from .data.datasets import DATASETS
    from .data.views import VIEWS
    from .models.registry import list_models

    _models_arg(p, help=choices_help("model", list_models(), None))
    p.add_argument("--dataset", type=one_of(DATASETS, "dataset"), default="mnist",
                   help=choices_help("input size and classes from", DATASETS, "mnist"))
    p.add_argument("--view", type=one_of(VIEWS, "view"), help=choices_help(
        "how the image is read", VIEWS, "the model's own"))
    add_plugin(p)


def build_data(p: argparse.ArgumentParser) -> None:
    from .data.datasets import DATASETS

    p.add_argument("action", nargs="?", type=one_of(("list", "fetch", "verify"), "action"),
                   default="list", help="list: where each dataset was found; fetch: download; "
                   "verify: check checksums (default: list)")
    p.add_argument("name", nargs="?", type=one_of(DATASETS, "dataset"),
                   help=choices_help("dataset", DATASETS, "all of them"))
    add_data_dir(p, "folder to look in or fetch into")


def build_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", type=Path, metavar="RUN",
                   help="run folders to serve (default: the latest run of each model)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"),
                   help="where to look for runs (default: runs/)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: "
                   "127.0.0.1, this machine only)")
    p.add_argument("--port", type=int_at_least(1, 65535), default=8000,
                   help="port (default: 8000)")
    add_plugin(p)


def build_import_keras(p: argparse.ArgumentParser) -> None:
    from .data.datasets import DATASETS
    from .data.views import VIEWS

    p.add_argument("file", type=Path, help="a model saved by Keras: legacy HDF5 (.h5, as the "
                   "tutorial's model.save('mnist_cnn.h5')) or a Keras 3 archive (.keras)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="parent of the run folder "
                   "(default: runs/)")
    p.add_argument("--dataset", type=one_of(DATASETS, "dataset"), default="mnist",
                   help=choices_help("test set to evaluate it on", DATASETS, "mnist"))
    p.add_argument("--view", type=one_of(VIEWS, "view"), help=choices_help(
        "how the model reads the image", VIEWS, "rows for recurrent models, image for CNNs"))
    add_data_dir(p)


def build_export(p: argparse.ArgumentParser) -> None:
    from .reports.export import FORMATS

    p.add_argument("run", type=Path, help="a finished run folder")
    p.add_argument("--format", type=one_of(FORMATS, "format"), default="onnx", help=choices_help(
        "onnx (checked with onnxruntime on the test set) or card (a shareable model folder with "
        "a model card)", FORMATS, "onnx"))
    p.add_argument("--out", type=Path, help="the ONNX file or the model folder (default: "
                   "RUN/model.onnx; a folder is required for card)")
    add_data_dir(p, "folder holding the dataset's files, for the ONNX check")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime check "
                   "(default: check)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file (or an "
                   "earlier card's folder); a run's own files are never replaced (default: "
                   "refuse)")
    add_plugin(p)


def build_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", type=Path, help="a TOML file: models, views, datasets, seeds lists and "
                   "a [recipe] table (see the README's example)")
    p.add_argument("--out", type=Path, help="the sweep's folder: runs/, reports, sweep.md "
                   "(default: sweeps/<spec name>)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and stop (default: run "
                   "them)")
    p.add_argument("--yes", action="store_true", help="start a grid of more than 500 runs (default: "
                   "refuse it, saying how long it would take)")
    add_data_and_progress(p)
    p.add_argument("--ray", metavar="ADDRESS", help="run on the Ray cluster at HOST:PORT, or auto "
                   "to start a local Ray here (extra seqmnist[ray]; default: this machine, "
                   "no Ray)")
    p.add_argument("--cpus-per-run", type=int, default=1, help="with --ray: CPUs each run "
                   "declares and trains on (default: 1)")
    p.add_argument("--gpus-per-run", type=float, help="with --ray: the share of a GPU each run "
                   "declares (default: 0.25 where the cluster has GPUs, else 0)")
    add_plugin(p)


def build_explain(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", type=Path, metavar="RUN", help="finished run folders "
                   "(or pretrained:NAME)")
    p.add_argument("--pretrained", nargs="+", default=[], metavar="NAME",
                   help="the pretrained runs shipped with seqmnist to explain (lstm, gru, cnn), "
                   "beside any RUN given (default: none)")
    p.add_argument("--index", nargs="+", type=nonnegative_int, default=[], metavar="N",
                   help="test images to explain (default: one read right per class, the most "
                   "confident mistakes and, with several runs, images they disagree on)")
    p.add_argument("--image", nargs="+", type=Path, default=[], metavar="FILE",
                   help="your own image files, prepared the MNIST way (default: none)")
    p.add_argument("--out", type=Path, help="folder for explain.html and explain.json "
                   "(default: reports/<time>-explain)")
    add_data_dir(p)
    p.add_argument("--open", action="store_true", help="open explain.html in the browser "
                   "(default: only write it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown "
                   "on a terminal)")
    add_plugin(p)


def build_check_model(p: argparse.ArgumentParser) -> None:
    from .data.datasets import DATASETS
    from .data.views import VIEWS

    _models_arg(p, help="the model to check (yours with --plugin)")
    p.add_argument("--view", nargs="+", type=one_of(VIEWS, "view"), metavar="VIEW",
                   help="views to check (default: every view the model declares)")
    p.add_argument("--dataset", type=one_of(DATASETS, "dataset"), default="mnist",
                   help=choices_help("image size and classes from", DATASETS, "mnist"))
    add_plugin(p)


def cmd_check_model(args: argparse.Namespace) -> int:
    """A table of pass/fail; exit 0 only when every check passes."""
    from .models import check_view
    from .reports.contract import check_contract, table

    for view in args.view or []:
        check_view(args.model, view)
    checks = check_contract(args.model, args.dataset, args.view)
    print(table(checks))
    return 1 if any(c.passed is False for c in checks) else 0


def build_models(p: argparse.ArgumentParser) -> None:
    add_plugin(p)


def cmd_models(args: argparse.Namespace) -> int:
    """Every registered model, the views it reads, what it can do and where it came from."""
    from .models.plugins import FAILED, source
    from .models.registry import MODELS

    for name, entry in MODELS.items():
        can = [w for w, ok in (("steps", entry.steps), ("states", entry.states),
                               ("onnx", entry.onnx)) if ok]
        print(f"{name:<12} {source(name):<28} views: {', '.join(entry.views)}"
              f"{'; ' + ', '.join(can) if can else ''}")
    for line in FAILED:
        print(f"warning: {line}", file=sys.stderr)
    return 0


def build_doctor(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON (default: text)")


def _train_kwargs(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k, None) for k in TRAIN_FIELDS}


def cmd_train(args: argparse.Namespace) -> int:
    from .core.errors import UsageError
    from .models.registry import list_models
    from .runs.train import train
    from .training.config import config_from_args

    if args.resume is not None:
        if args.model is not None:
            raise UsageError("--resume takes its settings from the run; give no MODEL with it")
        given = [f"--{k.replace('_', '-')}" for k, v in _train_kwargs(args).items()
                 if v is not None and k != "data_dir"]
        given += [f"--{k.replace('_', '-')}" for k in ("hidden", "layers")
                  if getattr(args, k) is not None]
        given += ["--bidirectional"] * bool(args.bidirectional) + \
            ["--model-option"] * bool(args.model_option)
        if given:
            raise UsageError(f"--resume continues the run with its own settings (they are in "
                             f"{args.resume}/config.json); {', '.join(given)} would be ignored: "
                             "leave them out, or start a new run")
        train(resume=args.resume, data_dir=args.data_dir, progress=not args.no_progress,
              tensorboard=args.tensorboard)
        return 0
    if args.model is None:
        raise UsageError(f"give a MODEL to train ({', '.join(list_models())}) or --resume RUN")
    options = {k: getattr(args, k) for k in ("hidden", "layers") if getattr(args, k) is not None}
    if args.bidirectional:
        options["bidirectional"] = True
    options.update(dict(args.model_option))
    cfg = config_from_args(args.model, model_options=options, **_train_kwargs(args))
    train(cfg, out=args.out, data_dir=args.data_dir, progress=not args.no_progress,
          tensorboard=args.tensorboard)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .experiments.comparison import compare

    compare(args.models, runs=args.runs, seeds=args.seeds, jobs=args.jobs, out=args.out,
            runs_dir=args.runs_dir,
            data_dir=args.data_dir, progress=not args.no_progress, tensorboard=args.tensorboard,
            **_train_kwargs(args))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .core.fileio import dumps
    from .evaluation.evaluate import evaluate
    from .runs.storage import load_run

    run = load_run(args.run)
    ev = evaluate(run, args.data_dir)
    result = dict(run=str(run.path), model=run.config.model, dataset=run.config.dataset,
                  view=run.config.view, test_accuracy=ev.accuracy, test_loss=ev.loss,
                  images=len(ev.labels), images_per_second=round(ev.images_per_second, 1))
    if args.json:
        print(dumps(result))
    else:
        print(f"{run.path}: {run.config.model} on {run.config.dataset} ({run.config.view}): "
              f"test accuracy {ev.accuracy:.4f}, test loss {ev.loss:.4f} "
              f"({len(ev.labels):,} images, {ev.images_per_second:,.0f} images/s)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Each image gets its answer or its error; the exit code is 2 if any image failed."""
    from .core.errors import SeqmnistError
    from .core.fileio import dumps
    from .evaluation.predict import predict
    from .runs.storage import load_run

    run = load_run(args.run)
    results = []
    for path in args.images:
        try:
            (r,) = predict(run, [path])
            results.append(dict(image=str(path), prediction=r["prediction"], top3=r["top3"]))
        except SeqmnistError as exc:
            results.append(dict(image=str(path), error=str(exc)))
    failed = sum("error" in r for r in results)
    if args.json:
        print(dumps(results))
    else:
        for r in results:
            if "error" in r:
                print(f"seqmnist predict: error: {r['error']}", file=sys.stderr)
            else:
                top = ", ".join(f"{name} {prob:.1%}" for name, prob in r["top3"])
                print(f"{r['image']}: {r['prediction']}  ({top})")
    if failed:
        print(f"seqmnist predict: {failed} of {len(results)} images failed", file=sys.stderr)
    return 2 if failed else 0


def cmd_summary(args: argparse.Namespace) -> int:
    from .data.datasets import get_spec
    from .data.views import VIEWS
    from .models.checks import check_model
    from .models.registry import check_view, create_model, get_entry
    from .models.summary import summary_text

    view = args.view or get_entry(args.model).defaults["view"]
    check_view(args.model, view)
    spec = get_spec(args.dataset)
    shape = VIEWS[view].shape(*spec.image_shape)
    check_model(args.model, shape, len(spec.classes), {})
    model = create_model(args.model, shape, len(spec.classes))
    print(summary_text(model, shape, f"{args.model} ({view}, {args.dataset})"))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .core.errors import UsageError
    from .data.datasets import DATASETS
    from .data.sources import fetch, locate, verify

    names = [args.name] if args.name else list(DATASETS)
    if args.action == "list":
        for name in names:
            spec = DATASETS[name]
            where = "bundled with scikit-learn" if not spec.downloadable else \
                (str(locate(name, args.data_dir) or "not found (seqmnist data fetch " + name + ")"))
            print(f"{name:<15} {spec.description}\n{'':<15} {where}")
        return 0
    if args.action == "fetch":
        if not args.name:
            raise UsageError("name the dataset to fetch, e.g. seqmnist data fetch mnist")
        print(f"{args.name}: files in {fetch(args.name, args.data_dir)}")
        return 0
    bad = 0
    for name in (n for n in names if DATASETS[n].downloadable):
        for check in verify(name, args.data_dir):
            status = "ok" if check.ok else (check.error or f"MISMATCH: expected {check.expected}, "
                                                           f"got {check.actual}")
            bad += not check.ok
            print(f"{name:<15} {check.path or '-'}: {status}")
    return 2 if bad else 0  # files that are not what they claim: bad input


def cmd_serve(args: argparse.Namespace) -> int:
    from .web import serve

    serve(args.runs, runs_dir=args.runs_dir, host=args.host, port=args.port)
    return 0


def cmd_import_keras(args: argparse.Namespace) -> int:
    from .runs.keras_import import import_keras

    import_keras(args.file, out=args.out, dataset=args.dataset, data_dir=args.data_dir,
                 view=args.view)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .core.errors import UsageError
    from .reports.export import export_card, export_onnx
    from .runs.storage import load_run

    run = load_run(args.run)
    if args.format == "card":
        if args.out is None:
            raise UsageError("give --out DIR: the folder to write the model and its card to")
        print(f"model folder: {export_card(run, args.out, force=args.force)}")
        return 0
    x = None
    if not args.no_check:
        from .data.datasets import load_dataset
        from .data.views import to_input

        ds = load_dataset(run.config.dataset, args.data_dir)
        x = to_input(ds.x_test, run.config.view, run.config.order_seed).numpy()
    path, worst = export_onnx(run, args.out, force=args.force, check=x)
    print(f"ONNX: {path}")
    if worst is not None:
        print(f"onnxruntime agrees with PyTorch on the {len(x):,} test images "
              f"(largest difference in probability {worst:.1e})")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .core.errors import UsageError
    from .experiments.sweep import check_size, describe, load_spec, sweep

    spec = load_spec(args.spec)
    if args.dry_run:
        print(describe(spec))
        return 0
    check_size(spec, args.yes)
    runner = None
    if args.ray is not None:
        from .experiments.cluster import ray_runner
        runner = ray_runner(args.ray, args.cpus_per_run, args.gpus_per_run)
    elif args.cpus_per_run != 1 or args.gpus_per_run is not None:
        raise UsageError("--cpus-per-run and --gpus-per-run go with --ray")
    sweep(spec, out=args.out or Path("sweeps") / args.spec.stem, data_dir=args.data_dir,
          progress=not args.no_progress, runner=runner)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .core.errors import UsageError
    from .core.fileio import output_folder
    from .reports.explainer import explain_set, write_explanations
    from .runs.pretrained import path_of

    runs = [*args.runs, *(path_of(name) for name in args.pretrained)]
    if not runs:
        raise UsageError("give the runs to explain (run folders), or --pretrained lstm (the "
                         "models shipped with seqmnist)")
    with output_folder(args.out, "explanation", default="explain") as out:
        explained = explain_set(runs, args.index, args.image, args.data_dir,
                                progress=not args.no_progress)
        files = write_explanations(explained, out)
    explanations = explained.explanations
    models = sorted({e.model for e in explanations})
    print(f"Explained {len(explanations) // len(runs)} images with "
          f"{', '.join(models)}: {files['html']} (numbers in {files['json']})")
    if args.open:
        import webbrowser

        webbrowser.open(files["html"].resolve().as_uri())
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import report

    info, text = report()
    print(json.dumps(info, indent=2) if args.json else text)
    return 0


# name: (one-line help, builder of its arguments, what runs it)
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "compare": ("train models (default: lstm cnn) or reuse runs, and write a report",
                build_compare, cmd_compare),
    "train": ("train one model; writes a run folder", build_train, cmd_train),
    "evaluate": ("reload a run and report its test metrics", build_evaluate, cmd_evaluate),
    "predict": ("classify image files with a trained run", build_predict, cmd_predict),
    "summary": ("a model's layers and parameter count (Keras-style)", build_summary, cmd_summary),
    "data": ("list datasets; fetch or verify their files", build_data, cmd_data),
    "serve": ("web page: draw a digit, watch the models read it", build_serve, cmd_serve),
    "sweep": ("run a grid of models x views x datasets x seeds from a TOML spec; rerun to "
              "resume", build_sweep, cmd_sweep),
    "import-keras": ("import a model trained with Keras (.h5 or .keras) as a run folder",
                     build_import_keras, cmd_import_keras),
    "export": ("export a run to ONNX, or as a shareable model folder with a model card",
               build_export, cmd_export),
    "explain": ("look inside: what models do while they read images, in one offline page",
                build_explain, cmd_explain),
    "models": ("list every model: built-in, from a --plugin, or from an installed package",
               build_models, cmd_models),
    "check-model": ("check that a model keeps the registry's contract (yours with --plugin)",
                    build_check_model, cmd_check_model),
    "doctor": ("what this machine runs: versions, CPU features, LSTM kernel, backend",
               build_doctor, cmd_doctor),
}


# commands that train: the allocator keeps freed memory for reuse in their process
# (``system.keep_freed_memory``, measured faster; a library call leaves it as it was)
TRAINING_COMMANDS = ("train", "compare", "sweep")


def build_parser(command: str | None = None, everything: bool = False) -> argparse.ArgumentParser:
    """The parser; the arguments of ``command`` (or of every command) are filled in."""
    from ._version import __version__

    parser = Parser(prog="seqmnist", description="Read an image as a sequence: train LSTMs and "
                    "CNNs on MNIST and compare them.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"seqmnist {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=Parser)
    for name, (text, builder, _run) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        if everything or name == command:
            builder(p)
    return parser


def _command_of(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from .core.errors import SeqmnistError

    asked = plugins_asked(argv)
    if asked:  # before the parser: its model choices must hold the plug-ins' models
        from .models import load_plugin

        try:
            for spec in asked:
                load_plugin(spec)
        except SeqmnistError as exc:
            print(f"seqmnist: error: {exc}", file=sys.stderr)
            return exc.exit_code
    try:
        args = build_parser(_command_of(argv)).parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)

    if args.command in TRAINING_COMMANDS:  # process-wide, so set here and never by a library call
        from .core.system import keep_freed_memory

        keep_freed_memory()
    try:
        return COMMANDS[args.command][2](args)
    except SeqmnistError as exc:
        print(f"seqmnist: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("seqmnist: interrupted", file=sys.stderr)
        return 130
    except MemoryError as exc:  # whatever asked for it, one line that says what was too big
        print(f"seqmnist: error: out of memory while running `seqmnist {args.command}`"
              f"{': ' + str(exc) if str(exc) else ''}; this machine cannot hold what it was "
              "asked to load or build (a smaller --limit, --batch-size or model)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
