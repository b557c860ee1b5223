"""The ``seqmnist`` command line: parse, then call the same functions a Python user would.

Nothing heavy is imported at module level, so ``seqmnist --help`` answers without loading torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODEL_NAMES = ("lstm", "gru", "rnn", "cnn")  # checked against the registry in a test
DATASET_NAMES = ("mnist", "fashion-mnist", "digits")
VIEW_NAMES = ("rows", "columns", "pixels", "permuted", "image")


def int_at_least(minimum: int):
    """An argparse type: a whole number no smaller than ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_training_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", choices=DATASET_NAMES, help="dataset (default: mnist)")
    p.add_argument("--view", choices=VIEW_NAMES, help="how the image is read (default: the "
                   "model's: rows for recurrent models, image for cnn)")
    p.add_argument("--epochs", type=positive_int, help="epochs (default: 10, the tutorial's)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (default: 64)")
    p.add_argument("--lr", type=positive_float, help="learning rate (default: the model's: "
                   "1e-3 recurrent, 1e-4 cnn)")
    p.add_argument("--seed", type=nonnegative_int, help="random seed (default: 0)")
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="train on the first N training images only (smoke runs)")
    p.add_argument("--preset", choices=("tutorial", "fast"), help="tutorial: the Keras recipe "
                   "as written (default); fast: same architecture, tuned to finish sooner")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), help="training precision "
                   "(default auto: bf16 autocast for the CNN where the hardware has bf16)")
    p.add_argument("--schedule", choices=("constant", "onecycle"), help="learning-rate schedule")
    p.add_argument("--threads", type=positive_int, help="CPU threads for PyTorch")
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="use only deterministic algorithms (same seed, same weights)")
    p.add_argument("--data-dir", type=Path, help="folder holding the dataset's files")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


TRAIN_FIELDS = ("dataset", "view", "epochs", "batch_size", "lr", "seed", "limit", "preset",
                "precision", "schedule", "threads", "device", "deterministic")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="seqmnist", description="Read an image as a sequence: train LSTMs and CNNs on MNIST "
        "and compare them.", epilog="Start with: seqmnist compare --epochs 1")
    parser.add_argument("--version", action="version", version=f"seqmnist {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("compare", help="train models (default: lstm cnn) and write a report")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help=f"models to train ({', '.join(MODEL_NAMES)}); default: lstm cnn")
    p.add_argument("--runs", nargs="+", type=Path, default=[], metavar="RUN",
                   help="finished run folders to include instead of (or besides) training")
    p.add_argument("--out", type=Path, help="report folder (default: reports/<time>-<dataset>)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where new runs go")
    add_training_options(p)

    p = sub.add_parser("train", help="train one model; writes a run folder")
    p.add_argument("model", nargs="?", choices=MODEL_NAMES, help="model to train")
    p.add_argument("--out", type=Path, default=Path("runs"), help="parent of run folders "
                   "(default: runs/)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue an interrupted run")
    p.add_argument("--hidden", type=positive_int, help="recurrent units per layer (default 50)")
    p.add_argument("--layers", type=positive_int, help="recurrent layers (default 2)")
    p.add_argument("--bidirectional", action="store_true", help="bidirectional recurrent layers")
    add_training_options(p)

    p = sub.add_parser("evaluate", help="reload a run and report its test metrics")
    p.add_argument("run", type=Path)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("predict", help="classify image files with a trained run")
    p.add_argument("run", type=Path)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("summary", help="Keras-style summary of a model (layers, parameters)")
    p.add_argument("model", choices=MODEL_NAMES)
    p.add_argument("--dataset", choices=DATASET_NAMES, default="mnist")
    p.add_argument("--view", choices=VIEW_NAMES)

    p = sub.add_parser("data", help="list datasets; fetch or verify their files")
    p.add_argument("action", nargs="?", choices=("list", "fetch", "verify"), default="list")
    p.add_argument("name", nargs="?", choices=DATASET_NAMES)
    p.add_argument("--data-dir", type=Path)

    p = sub.add_parser("serve", help="web page: draw a digit, watch the models read it")
    p.add_argument("runs", nargs="*", type=Path, metavar="RUN",
                   help="run folders to serve (default: the latest run of each model)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=nonnegative_int, default=8000)
    return parser


def _train_kwargs(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k, None) for k in TRAIN_FIELDS}


def cmd_train(args: argparse.Namespace) -> int:
    from .errors import UsageError
    from .training import config_from_args, train

    if args.resume is not None:
        if args.model is not None:
            raise UsageError("--resume takes its settings from the run; give no MODEL with it")
        train(resume=args.resume, data_dir=args.data_dir, progress=not args.no_progress)
        return 0
    if args.model is None:
        raise UsageError("give a MODEL to train (lstm, gru, rnn, cnn) or --resume RUN")
    options = {k: getattr(args, k) for k in ("hidden", "layers") if getattr(args, k) is not None}
    if args.bidirectional:
        options["bidirectional"] = True
    cfg = config_from_args(args.model, model_options=options, **_train_kwargs(args))
    train(cfg, out=args.out, data_dir=args.data_dir, progress=not args.no_progress)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .comparison import compare

    compare(args.models, runs=args.runs, out=args.out, runs_dir=args.runs_dir,
            data_dir=args.data_dir, progress=not args.no_progress, **_train_kwargs(args))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate
    from .storage import load_run

    run = load_run(args.run)
    ev = evaluate(run, args.data_dir)
    result = dict(run=str(run.path), model=run.config.model, dataset=run.config.dataset,
                  view=run.config.view, test_accuracy=ev.accuracy, test_loss=ev.loss,
                  images=len(ev.labels), images_per_second=round(ev.images_per_second, 1))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{run.path}: {run.config.model} on {run.config.dataset} ({run.config.view}): "
              f"test accuracy {ev.accuracy:.4f}, test loss {ev.loss:.4f} "
              f"({len(ev.labels):,} images, {ev.images_per_second:,.0f} images/s)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .images import predict

    results = predict(args.run, args.images)
    if args.json:
        print(json.dumps([dict(image=str(p), prediction=r["prediction"], top3=r["top3"])
                          for p, r in zip(args.images, results)], indent=2))
        return 0
    for path, r in zip(args.images, results):
        top = ", ".join(f"{name} {prob:.1%}" for name, prob in r["top3"])
        print(f"{path}: {r['prediction']}  ({top})")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from .data import get_spec
    from .models import check_view, create_model, get_entry, summary_text
    from .views import VIEWS

    view = args.view or get_entry(args.model).defaults["view"]
    check_view(args.model, view)
    size = {"digits": (8, 8)}.get(args.dataset, (28, 28))
    shape = VIEWS[view].shape(*size)
    model = create_model(args.model, shape, len(get_spec(args.dataset).classes))
    print(summary_text(model, shape, f"{args.model} ({view}, {args.dataset})"))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .data import DATASETS, locate
    from .download import fetch, verify
    from .errors import DataError

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
            raise DataError("name the dataset to fetch, e.g. seqmnist data fetch mnist")
        print(f"{args.name}: files in {fetch(args.name, args.data_dir)}")
        return 0
    bad = 0
    for name in (n for n in names if DATASETS[n].downloadable):
        for check in verify(name, args.data_dir):
            status = "ok" if check.ok else (check.error or f"MISMATCH: expected {check.expected}, "
                                                           f"got {check.actual}")
            bad += not check.ok
            print(f"{name:<15} {check.path or '-'}: {status}")
    return 1 if bad else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .web import serve

    serve(args.runs, runs_dir=args.runs_dir, host=args.host, port=args.port)
    return 0


COMMANDS = dict(train=cmd_train, compare=cmd_compare, evaluate=cmd_evaluate, predict=cmd_predict,
                summary=cmd_summary, data=cmd_data, serve=cmd_serve)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import SeqmnistError

    try:
        return COMMANDS[args.command](args)
    except SeqmnistError as exc:
        print(f"seqmnist: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("seqmnist: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
