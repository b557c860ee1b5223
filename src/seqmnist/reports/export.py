"""Take a run anywhere: ONNX for deployment (checked with onnxruntime), and a shareable model
folder with a model card, in the layout model hubs accept.

    seqmnist export RUN --format onnx [--out FILE]    # extra: seqmnist[export]
    seqmnist export RUN --format card --out DIR       # model.safetensors, config.json, README.md
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..core import stats
from ..core.errors import SeqmnistError, UsageError
from ..core.fileio import atomic_write, read_json, write_json
from ..data.views import VIEWS, permutation
from ..evaluation.analysis import recipe_key
from ..kernels.backends import install_backend
from ..models.registry import MODELS
from ..runs import pretrained
from ..runs.storage import PREDICTIONS, WEIGHTS, Run, is_run_folder, load_predictions, load_run
from ..training.config import TrainConfig

FORMATS = ("onnx", "card")
OPSET = 17
ONNX_TOLERANCE = 1e-4
CARD_FILES = (WEIGHTS, "config.json", "metrics.json", "README.md")
ONNX_NAME = "model.onnx"  # the one file export writes inside a run folder


def _place_file(out: Path, run: Run, force: bool) -> Path:
    """Where an exported file may go: never over a run's own files (only ``model.onnx`` is
    written inside a run folder), never over an existing file unless ``force``; the parent
    folder is made if missing. Raises UsageError naming the problem."""
    if pretrained.is_pretrained(out):
        raise UsageError(f"{run.path} is a pretrained run shipped with seqmnist and is not "
                         "written to; give --out FILE")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give the file to write, e.g. "
                         f"{out / ONNX_NAME}")
    parent = out.parent
    if (is_run_folder(parent) or (parent / "config.json").exists()) and out.name != ONNX_NAME:
        raise UsageError(f"--out {out} is inside the run folder {parent}; export writes only "
                         f"{ONNX_NAME} there and never replaces a run's own files")
    if out.exists() or out.is_symlink():
        if not force:
            raise UsageError(f"--out {out} exists; give --force to replace it, or another path")
        if not out.is_file() or out.is_symlink():
            raise UsageError(f"--out {out} is not a regular file; it is not replaced")
    _make_parent(parent)
    return out


def _make_parent(parent: Path) -> None:
    for above in (parent, *parent.parents):
        if above.exists():
            if not above.is_dir():
                raise UsageError(f"cannot write under {parent}: {above} is a file, not a folder")
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write under {parent}: {exc.strerror or exc}") from None
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write under {parent}: not writable")


def _write_out(out: Path, data: bytes | str) -> None:
    """Write the file under a temporary name beside it and rename it into place."""
    try:
        atomic_write(out, data)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None


def onnx_refusal(run: Run) -> str | None:
    """Why ``run``'s model cannot go to ONNX, or None when it can."""

    if not MODELS[run.config.model].onnx:
        have = ", ".join(n for n, e in MODELS.items() if e.onnx)
        return f"model {run.config.model!r} has no ONNX export yet ({have} have)"
    return None


def export_onnx(run: Run | str | Path, out: str | Path | None = None, force: bool = False,
                check: np.ndarray | None = None) -> tuple[Path, float | None]:
    """Write ``run``'s model as ONNX (opset 17): inputs ``x`` with a dynamic batch size, and for
    sequence models a dynamic number of steps, so a partial image can be scored; output
    ``logits``. Computed with the torch backend (the native kernel is not traceable). With
    ``check`` (inputs in the view's layout), onnxruntime's answers are compared with PyTorch's
    before the file is put in place. Returns the path and the largest difference (or None).
    An existing ``out`` is replaced only with ``force``; a run's own files never are."""


    run = run if isinstance(run, Run) else load_run(run)
    why = onnx_refusal(run)
    if why:
        raise UsageError(f"cannot export {run.path} to ONNX: {why}")
    out = _place_file(Path(out) if out else run.path / ONNX_NAME, run, force)
    model = install_backend(run.model, "torch").eval()
    data = with_metadata(onnx_bytes(model, run.input_shape), input_description(run))
    worst = check_onnx(data, run, check, name=str(out)) if check is not None else None
    _write_out(out, data)
    return out, worst


def onnx_bytes(model, input_shape: tuple[int, ...]) -> bytes:
    """``model`` (on the torch backend) as ONNX: input ``x`` with a dynamic batch size, and for
    sequence models a dynamic number of steps; output ``logits``."""
    import torch

    example = torch.zeros(1, *input_shape)
    sequence = len(input_shape) == 2
    axes = {"x": {0: "batch", 1: "steps"} if sequence else {0: "batch"}, "logits": {0: "batch"}}
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["x"],
                              output_names=["logits"], dynamic_axes=axes, opset_version=OPSET)
    except ImportError as exc:
        raise SeqmnistError(f"ONNX export needs its extra: pip install 'seqmnist[export]' "
                            f"({exc})") from None
    return buf.getvalue()


def input_description(run: Run) -> dict[str, str]:
    """How to feed ``run``'s model, written into the ONNX file's metadata and the model card:
    the view, the input's layout and scaling, the pixel order (the permutation itself for the
    permuted view), the image size and the classes."""

    cfg = run.config
    h, w = run.image_shape
    layout = {"rows": f"(batch, {h} steps, {w} features): row t of the image at step t",
              "columns": f"(batch, {w} steps, {h} features): column t, top to bottom, at step t",
              "pixels": f"(batch, {h * w} steps, 1): pixel t in row-major order at step t",
              "permuted": f"(batch, {h * w} steps, 1): pixel order[t] (row-major index) at step t",
              "image": f"(batch, 1, {h}, {w}): the image with one channel"}
    out = {"seqmnist.view": cfg.view,
           "seqmnist.view_description": VIEWS[cfg.view].description,
           "seqmnist.input": "x, float32 " + layout.get(cfg.view, str(tuple(run.input_shape))) +
           f"; each pixel is its grey value / 255, white ink on black, of a {h} x {w} image "
           "prepared the MNIST way",
           "seqmnist.image_shape": json.dumps([h, w]),
           "seqmnist.dataset": cfg.dataset,
           "seqmnist.classes": json.dumps(run.classes),
           "seqmnist.output": "logits, float32 (batch, classes): softmax gives the probabilities"}
    if cfg.view == "permuted":
        out["seqmnist.pixel_order"] = json.dumps(permutation(h * w, cfg.order_seed).tolist())
        out["seqmnist.permutation"] = str(cfg.order_seed)
    return out


def with_metadata(model: bytes, props: dict[str, str]) -> bytes:
    """The ONNX model's bytes with ``props`` in its metadata (metadata_props)."""
    import onnx

    proto = onnx.load_from_string(model)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def check_onnx(model: str | Path | bytes, run: Run, x: np.ndarray, name: str = "") -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's class probabilities on
    inputs ``x`` (in the view's layout) for an ONNX file or its bytes; raises if it exceeds
    ONNX_TOLERANCE."""
    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        raise SeqmnistError("checking the ONNX file needs onnxruntime: pip install "
                            "'seqmnist[export]'") from None
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                   providers=["CPUExecutionProvider"])
    path = name or model
    worst = 0.0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            batch = x[i:i + 1000].astype(np.float32)
            theirs = session.run(None, {"x": batch})[0]
            theirs = np.exp(theirs - theirs.max(1, keepdims=True))
            theirs /= theirs.sum(1, keepdims=True)
            ours = run.model(torch.from_numpy(batch)).softmax(-1).numpy()
            worst = max(worst, float(np.abs(theirs - ours).max()))
    if not worst <= ONNX_TOLERANCE:
        raise SeqmnistError(f"{path}: onnxruntime differs from PyTorch by {worst:.2e} "
                            f"(more than {ONNX_TOLERANCE:g})")
    return worst


def _seed_siblings(run: Run) -> list[dict]:
    """metrics.json of the finished runs beside ``run`` with the same recipe (its other seeds)."""
    key, found = recipe_key(run.config), []
    for folder in sorted(run.path.parent.iterdir()):
        if not (folder / WEIGHTS).is_file():
            continue
        try:  # their config and metrics files are enough: no model is built
            config = TrainConfig.from_dict(read_json(folder / "config.json"))
            accuracy = (read_json(folder / "metrics.json", {}) or {}).get("test_accuracy")
        except SeqmnistError:
            continue
        if recipe_key(config) == key and isinstance(accuracy, (int, float)):
            found.append(dict(seed=config.seed, accuracy=accuracy))
    return found


def _number(value, spec: str) -> str:
    """A recorded number as the card prints it; '?' where an older run did not record it."""
    return format(value, spec) if isinstance(value, (int, float)) else "?"


def _count(value) -> str:
    return _number(value, ",")


def model_card(run: Run) -> str:
    """A model card (README.md with the YAML front matter model hubs read)."""

    cfg, m = run.config, run.metrics
    prov = m.get("provenance") or read_json(run.path / "provenance.json", {}) or {}
    acc = m.get("test_accuracy")
    lines_acc = []
    if acc is not None:
        text = f"- Test accuracy: **{acc:.2%}** on {_count(m.get('test_images'))} test images"
        if (run.path / PREDICTIONS).is_file():
            p = load_predictions(run.path, run.num_classes)
            lo, hi = stats.bootstrap_mean(p["predictions"] == p["labels"])
            text += f" (95% bootstrap interval over test images: {lo:.2%} to {hi:.2%})"
        lines_acc.append(text)
    seeds = _seed_siblings(run)
    if len(seeds) > 1:
        values = [s["accuracy"] for s in seeds]
        mean, std = stats.mean_std(values)
        ci = stats.t_interval(values)
        listed = ", ".join(str(s["seed"]) for s in seeds)
        lines_acc.append(f"- Across {len(seeds)} seeds of the same recipe ({listed}): "
                         f"{mean:.2%} ± {std * 100:.2f} points (95% t interval {ci[0]:.2%} to "
                         f"{ci[1]:.2%})")
    used, total = m.get("train_images"), m.get("train_images_total")
    imported = prov.get("imported_from")
    recipe = "imported from a Keras file: " + str(imported) if imported else (
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, Adam lr {cfg.lr:g} ({cfg.schedule}), "
        f"preset {cfg.preset}, {cfg.precision}, backend {cfg.backend}, seed {cfg.seed}")
    quick = used and total and used < total
    how = input_description(run)
    feeding = [f"- View: `{cfg.view}` ({how['seqmnist.view_description']})",
               f"- Input: {how['seqmnist.input']}"]
    if "seqmnist.pixel_order" in how:
        feeding.append(f"- Pixel order: the permutation `seqmnist.data.views.permutation("
                       f"{' * '.join(map(str, json.loads(how['seqmnist.image_shape'])))}, "
                       f"{cfg.order_seed})`; an ONNX export carries it as `seqmnist.pixel_order`")
    feeding.append("- An ONNX export (`seqmnist export RUN`) carries all of this in its metadata "
                   "(`seqmnist.*` keys)")
    return "\n".join([
        "---",
        "library_name: seqmnist",
        "license: mit",
        f"datasets:\n- {cfg.dataset}",
        "tags:\n- image-classification\n- sequence-model\n- seqmnist\n- pytorch",
        "metrics:\n- accuracy",
        "---",
        "",
        f"# {cfg.model} reading {cfg.dataset} ({cfg.view} view)",
        "",
        f"A `{cfg.model}` model trained with seqmnist, which reads an image as a sequence. "
        "Load it with `seqmnist.load_run(FOLDER)`; the configuration "
        "needed to rebuild it is in `config.json` and in the metadata of `model.safetensors`.",
        "",
        "## Results",
        "",
        *(lines_acc or ["- (no test metrics recorded)"]),
        f"- Parameters: {_count(m.get('params'))}",
        "",
        "## Training",
        "",
        f"- Data: {cfg.dataset}, {used if used else '?'} of {total if total else '?'} training "
        "images" + (" (a quick run below the recipe: not a result)" if quick else ""),
        f"- Recipe: {recipe}",
        f"- Time: {_number(m.get('train_seconds'), '.1f')} s of training, "
        f"{_number(m.get('seconds_per_epoch'), '.3g')} s per epoch",
        f"- Hardware and software: {prov.get('cpu') or '?'}"
        f"{' + ' + prov['gpu'] if prov.get('gpu') else ''}, {prov.get('device', '?')}, "
        f"PyTorch {prov.get('torch', '?')}, seqmnist {prov.get('seqmnist', '?')}",
        "",
        "## How to feed it",
        "",
        *feeding,
        "",
        "## Intended use and limits",
        "",
        f"For teaching and research on reading images as sequences. It was trained and tested on "
        f"{cfg.dataset} only: {' x '.join(map(str, m.get('image_shape') or (28, 28)))} grey images of "
        "one centred item, prepared the MNIST way (white on black, fitted in a 20 x 20 box, "
        "centred by mass). It is not meant for other images, handwriting in the wild, or any "
        "decision about people; its accuracy on other data is unknown.",
        "",
    ])


def export_card(run: Run | str | Path, out: str | Path, force: bool = False) -> Path:
    """A shareable model folder: model.safetensors, config.json, metrics.json and a model card
    (README.md); ``load_run(out)`` loads it back. The folder is filled under a temporary name
    beside it and renamed into place, so it is whole or absent. An existing folder is replaced
    only with ``force``, and only if it holds nothing but an earlier card's files."""
    run = run if isinstance(run, Run) else load_run(run)
    out = Path(out)
    if out.resolve() == run.path.resolve() or run.path.resolve() in out.resolve().parents:
        raise UsageError("give --out a folder outside the run's own")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the model and its card")
    old = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if old and not force:
        raise UsageError(f"{out} exists and is not empty; give a new folder (or --force to "
                         "replace an earlier card there)")
    if old and not set(old) <= set(CARD_FILES):
        raise UsageError(f"{out} holds files that are not a model card's ({', '.join(old[:3])}"
                         "...); it is not replaced, even with --force")
    _make_parent(out.parent)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise UsageError(f"cannot write under {out.parent}: {exc.strerror or exc}") from None
    try:
        shutil.copyfile(run.path / WEIGHTS, staging / WEIGHTS)
        write_json(staging / "config.json", read_json(run.path / "config.json", {}))
        if (run.path / "metrics.json").is_file():
            write_json(staging / "metrics.json", run.metrics.to_dict())
        atomic_write(staging / "README.md", model_card(run))
        if out.exists():
            trash = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, trash)
            os.replace(staging, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, out)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
