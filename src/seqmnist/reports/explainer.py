"""Look inside: what a model does while it reads an image, step by step.

    from seqmnist import explain
    e = explain("runs/RUN", 0)       # test image 0 (or a 28 x 28 uint8 array, or an image file)
    e.belief, e.decided_at, e.state["layer1.c"]   # arrays; in Jupyter `e` draws itself

For one image and one run, ``explain`` gives: the probabilities after every step (``belief``) and
the first step from which the final answer stays on top (``decided_at``); inside the model at
each step (``state``: a recurrent layer's hidden and cell states and gates, the last attention
layer's weights over the steps read so far, the size of a state-space layer's state); which steps
mattered, two ways (``occlusion``: the final answer's probability minus its probability with that
one step zeroed; ``attribution``: integrated gradients from an all-zero input, with Captum, summed
over each step's features); and for every model, the CNN too, a 28 x 28 occlusion map over the
image (``saliency``). ``seqmnist explain`` writes them as ``explain.json`` and one offline
``explain.html`` (``explain_page.py``). Steps count from 0 in the arrays, from 1 on the page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import SeqmnistError, UsageError
from ..core.fileio import atomic_write, dumps
from ..core.progress import bar as progress_bar
from ..data.datasets import load_dataset
from ..data.images import prepare_image
from ..data.views import VIEWS, to_input
from ..evaluation.evaluate import torch_copy
from ..models.registry import get_entry
from ..runs.storage import Run, load_predictions, load_run
from .dataset_view import dataset_view, step_features
from .explain_html import render

PATCH, STRIDE = 4, 2  # the saliency map's occluding patches
IG_STEPS = 32  # integrated gradients: points on the path from the baseline
ROUND = 4  # decimals kept in explain.json


def _plain(v):
    """Arrays as lists (floats rounded to ROUND places), inside dicts too: JSON's numbers."""
    if isinstance(v, np.ndarray):
        return np.round(v.astype(np.float64), ROUND).tolist() if v.dtype.kind == "f" \
            else v.tolist()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


@dataclass
class Explanation:
    """Everything seqmnist can show about one model reading one image (arrays are numpy)."""

    run: str
    model: str
    view: str
    dataset: str
    index: int | None  # the test-set index, or None for a user's image
    label: str | None
    classes: list[str]
    image: np.ndarray  # (H, W) uint8, white ink on black, as the model was given it
    prediction: str
    probabilities: np.ndarray  # (classes,)
    saliency: np.ndarray  # (H, W): drop of the answer's probability when a patch is zeroed
    steps: int | None = None  # T, for sequence models
    order: list[int] | None = None  # pixel read at each step (views of one pixel per step)
    reading: dict | None = None  # how the view reads the image (``reading``), for the pages
    belief: np.ndarray | None = None  # (T, classes)
    decided_at: int | None = None
    occlusion: np.ndarray | None = None  # (T,)
    attribution: np.ndarray | None = None  # (T,)
    attribution_delta: float | None = None  # Captum's completeness gap
    state: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (T, units)
    unit_order: dict[str, list[int]] = field(default_factory=dict)  # name -> units, in order
    path: np.ndarray | None = None  # (T, 2): its features after each step in its run's PCA map

    def to_dict(self) -> dict:
        """The explanation as explain.json holds it (plain lists, rounded)."""
        return {k: _plain(v) for k, v in self.__dict__.items()}

    def _repr_html_(self) -> str:

        return render([self.to_dict()], inline=True)


class Cancelled(SeqmnistError):
    """The caller gave up on the explanation (the page's client went away): the work stops."""


_STOP: ContextVar[Callable[[], bool] | None] = ContextVar("seqmnist_explain_stop", default=None)


@contextmanager
def stop_when(stop: Callable[[], bool]) -> Iterator[None]:
    """Within the block (in this thread or task), explanations check ``stop()`` between batches
    and raise ``Cancelled`` once it is true, so no CPU is spent on an answer nobody reads."""
    token = _STOP.set(stop)
    try:
        yield
    finally:
        _STOP.reset(token)


def _check() -> None:
    stop = _STOP.get()
    if stop is not None and stop():
        raise Cancelled("the explanation was no longer wanted")


def _probabilities(model, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for part in x.split(batch):
            _check()
            out.append(model(part).softmax(-1))
    return torch.cat(out)


def decided_at(belief: np.ndarray, answer: int) -> int:
    """The first step from which ``answer`` is the top class at every later step."""
    top = belief.argmax(-1)
    wrong = np.flatnonzero(top != answer)
    return int(wrong[-1] + 1) if len(wrong) else 0


def _occlude_steps(model, x: torch.Tensor, answer: int, p: float) -> np.ndarray:
    """For each step t: p(answer) minus p(answer) when step t's input is set to zero."""
    steps = x.shape[1]
    copies = x.repeat(steps, 1, 1)
    copies[torch.arange(steps), torch.arange(steps)] = 0
    return p - _probabilities(model, copies)[:, answer].numpy()


def saliency(model, image: np.ndarray, view: str, seed: int, answer: int, p: float) -> np.ndarray:
    """A (H, W) map: the mean drop of p(answer) over the PATCH x PATCH patches (every STRIDE
    pixels) that cover each pixel, each patch zeroed in the image before the view reads it, so
    sequence models and the CNN are compared on the same picture."""
    h, w = image.shape
    tops = range(0, max(h - PATCH, 0) + 1, STRIDE)
    lefts = range(0, max(w - PATCH, 0) + 1, STRIDE)
    boxes = [(t, lf) for t in tops for lf in lefts]
    copies = np.repeat(image[None], len(boxes), axis=0)
    for k, (t, lf) in enumerate(boxes):
        copies[k, t:t + PATCH, lf:lf + PATCH] = 0
    drops = p - _probabilities(model, to_input(copies, view, seed))[:, answer].numpy()
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for (t, lf), d in zip(boxes, drops):
        total[t:t + PATCH, lf:lf + PATCH] += d
        count[t:t + PATCH, lf:lf + PATCH] += 1
    return total / np.maximum(count, 1)


def integrated_gradients(model, x: torch.Tensor, answer: int) -> tuple[np.ndarray, float]:
    """Integrated gradients of the answer's logit from an all-zero input (Captum), summed over
    each step's features: (T,), and Captum's convergence delta (completeness: the sum equals
    f(x) - f(0) up to it)."""
    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        raise UsageError("attributions need Captum: pip install 'seqmnist[explain]'") from None
    ig = IntegratedGradients(model)
    with torch.enable_grad():
        attr, delta = ig.attribute(x, baselines=torch.zeros_like(x), target=answer,
                                   n_steps=IG_STEPS, internal_batch_size=IG_STEPS,
                                   return_convergence_delta=True)
    per_step = attr.detach()[0].sum(-1).cpu().numpy()
    return per_step, float(delta.abs().max())


def inside(run: Run, x: torch.Tensor) -> dict[str, np.ndarray]:
    """What the model holds after each step for one input x (1, T, F), as the model itself says
    (``forward_states``, declared by ``states`` in its registry entry): names such as
    ``layer1.h`` to (T, units) arrays. Empty for a model that declares none (the TCN)."""
    if not get_entry(run.config.model).states:
        return {}
    with torch.no_grad():
        found = run.model.forward_states(x)
    return {name: value[0].detach().float().cpu().numpy() for name, value in found.items()}


def unit_order(run: Run, state: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """An order of each state's units that makes structure visible: the last recurrent layer's
    units by the class whose output weight they feed most (then by that weight), the others by
    the step at which they are most active."""
    head = getattr(run.model, "head", None)
    out = {}
    last = max((int(k.split(".")[0][5:]) for k in state if k.startswith("layer")), default=0)
    for name, values in state.items():
        if values.ndim != 2 or name.endswith(".attention"):
            continue
        units = values.shape[1]
        if name.startswith(f"layer{last}.") and isinstance(head, torch.nn.Linear) \
                and head.weight.shape[1] == units:
            w = head.weight.detach().numpy()
            cls = w.argmax(0)
            out[name] = sorted(range(units), key=lambda u: (cls[u], -w[cls[u], u]))
        else:
            peak = np.abs(values).argmax(0)
            out[name] = sorted(range(units), key=lambda u: (peak[u], u))
    return out


def reading(view: str, seed: int, shape: tuple[int, int]) -> dict | None:
    """How the view reads the image, for the pages: what one step reads (``unit``), the step
    at which each pixel is read (``read_at``, H x W), and whether that order is not the
    picture's own (``scrambled``: the pages also lay the pixels out in reading order)."""
    v = VIEWS[view]
    read_at = v.read_at(*shape, seed)
    if read_at is None:
        return None
    return {"unit": v.unit or "step", "read_at": read_at.tolist(), "scrambled": v.scrambled}


def explain(run: Run | str | Path, image: int | np.ndarray | str | Path,
            data_dir: str | Path | None = None, dataset=None) -> Explanation:
    """Explain ``run`` reading one image: a test-set index, a (H, W) uint8 array (white ink on
    black, MNIST-style), or an image file (prepared the MNIST way)."""
    run = run if isinstance(run, Run) else load_run(run)
    if isinstance(image, (bool, float)) or image is None or \
            not isinstance(image, (int, np.integer, np.ndarray, str, Path)):
        raise UsageError(f"explain's image is a test-set index (int), a (H, W) uint8 array or an "
                         f"image file's path; got {type(image).__name__} {image!r:.40}")
    return _explain(torch_copy(run), *_image(run, image, data_dir, dataset))


def _image(run: Run, image, data_dir, dataset) -> tuple[np.ndarray, int | None, str | None]:
    """(pixels, test-set index or None, true label or None) of the image to explain."""

    cfg = run.config
    size = run.image_shape
    if dataset is not None and dataset.name != cfg.dataset:
        raise UsageError(f"{run.path} was trained on {cfg.dataset}, not {dataset.name}: its "
                         f"answers are {cfg.dataset}'s classes; explain it on {cfg.dataset}")
    if isinstance(image, (int, np.integer)) and not isinstance(image, bool):
        ds = dataset or load_dataset(cfg.dataset, data_dir or cfg.data_dir)
        if not 0 <= image < len(ds.x_test):
            raise UsageError(f"--index {image} is outside the {cfg.dataset} test set "
                             f"(0..{len(ds.x_test) - 1})")
        return ds.x_test[image], int(image), run.classes[int(ds.y_test[image])]
    if isinstance(image, np.ndarray):
        pixels = np.asarray(image)
        if pixels.shape != size or pixels.dtype != np.uint8:
            raise UsageError(f"an image array must be {size[0]} x {size[1]} uint8, got "
                             f"{pixels.shape} {pixels.dtype}")
        return pixels, None, None
    return prepare_image(Path(image), size), None, None


def _explain(run: Run, pixels: np.ndarray, index: int | None, label: str | None
             ) -> Explanation:
    """``explain`` for a run whose model is already a private torch copy (``torch_copy``)."""
    cfg, model, classes = run.config, run.model, run.classes
    size = tuple(pixels.shape)
    x = to_input(pixels[None], cfg.view, cfg.order_seed)
    probs = _probabilities(model, x)[0].numpy()
    answer = int(probs.argmax())
    out = Explanation(run=str(run.path), model=cfg.model, view=cfg.view, dataset=cfg.dataset,
                      index=index, label=label, classes=list(classes), image=pixels,
                      prediction=classes[answer], probabilities=probs,
                      saliency=saliency(model, pixels, cfg.view, cfg.order_seed, answer,
                                        float(probs[answer])))
    if VIEWS[cfg.view].kind == "sequence" and get_entry(cfg.model).steps:
        _check()
        with torch.inference_mode():
            belief = model.forward_steps(x).softmax(-1)[0].numpy()
        out.steps = int(x.shape[1])
        out.reading = reading(cfg.view, cfg.order_seed, size)
        if out.steps == size[0] * size[1]:  # one pixel per step: which one, step by step
            out.order = np.argsort(np.asarray(out.reading["read_at"]).ravel(),
                                   kind="stable").tolist()
        out.belief = belief
        out.decided_at = decided_at(belief, answer)
        out.occlusion = _occlude_steps(model, x, answer, float(probs[answer]))
        _check()
        out.attribution, out.attribution_delta = integrated_gradients(model, x.clone(), answer)
        _check()
        out.state = inside(run, x)
        out.unit_order = unit_order(run, out.state)
    return out


def default_set(runs: list[Run], per_class: int = 1, mistakes: int = 3,
                disagreements: int = 3, images: int | None = None) -> list[int]:
    """A small, telling set of test images: one correctly read image per class (by the first
    run), its most confident mistakes, and with several runs the images they disagree on most
    clearly. From the runs' stored predictions: nothing is recomputed."""

    # ``images``: the test set's size; a prediction file of another length is refused by name
    preds = [load_predictions(r.path, r.num_classes, images) for r in runs]
    first = preds[0]
    labels, guess, prob = first["labels"], first["predictions"], first["probabilities"]
    chosen: list[int] = []
    for c in range(runs[0].num_classes):
        right = np.flatnonzero((labels == c) & (guess == c))
        chosen += [int(i) for i in right[:per_class]]
    wrong = np.flatnonzero(guess != labels)
    confidence = prob[wrong, guess[wrong]]
    chosen += [int(i) for i in wrong[np.argsort(-confidence, kind="stable")[:mistakes]]]
    if len(preds) > 1:
        answers = np.stack([p["predictions"] for p in preds])
        split = np.flatnonzero((answers != answers[0]).any(0))
        spread = np.stack([p["probabilities"].max(1) for p in preds])[:, split].min(0)
        chosen += [int(i) for i in split[np.argsort(-spread, kind="stable")[:disagreements]]]
    return list(dict.fromkeys(chosen))  # in order, once each


def explain_runs(runs: list[str | Path | Run], indices: list[int] | None = None,
                 images: list[str | Path] | None = None, data_dir: str | Path | None = None,
                 progress: bool = True, dataset=None) -> list[Explanation]:
    """Every run explained on every chosen image (the default set when none is given).
    ``dataset``: the runs' dataset, when already loaded."""
    loaded = [r if isinstance(r, Run) else load_run(r) for r in runs]
    datasets = {r.config.dataset for r in loaded}
    if len(datasets) > 1:
        raise UsageError(f"runs to explain together must read the same dataset, got "
                         f"{', '.join(sorted(datasets))}")
    ds = dataset or load_dataset(loaded[0].config.dataset, data_dir or loaded[0].config.data_dir)
    if ds.name != loaded[0].config.dataset:
        raise UsageError(f"the runs were trained on {loaded[0].config.dataset}, not {ds.name}; "
                         f"explain them on {loaded[0].config.dataset}")
    chosen: list[int | Path] = list(indices or []) + [Path(p) for p in images or []]
    if not chosen:
        chosen = default_set(loaded, images=len(ds.x_test))
    for i in chosen:
        if isinstance(i, int) and not 0 <= i < len(ds.x_test):
            raise UsageError(f"--index {i} is outside the {ds.name} test set "
                             f"(0..{len(ds.x_test) - 1})")
    private = [torch_copy(run) for run in loaded]  # one copy per run, for every image
    out = []
    with progress_bar(total=len(chosen) * len(loaded), unit="image", desc="explain",
                      enabled=progress) as bar:
        for item in chosen:
            for run in private:
                out.append(_explain(run, *_image(run, item, data_dir, ds)))
                bar.update()
    return out


def project_path(explanation: Explanation, run: Run, view: dict) -> None:
    """The explained image's features after every step, in its run's PCA map (``path``);
    ``run``'s model computes with the torch backend (a ``torch_copy``)."""
    model = run.model
    x = to_input(explanation.image[None], run.config.view, run.config.order_seed)
    feats = step_features(model, x)[0].double().numpy()
    explanation.path = (feats - view["basis"]["mean"]) @ view["basis"]["axes"].T


@dataclass
class ExplainSet:
    """What ``seqmnist explain`` writes: every explanation, and each sequence run's view of the
    test set (``dataset_view``), keyed by run folder."""

    explanations: list[Explanation]
    datasets: dict[str, dict]

    def to_dict(self) -> dict:
        return {"images": [e.to_dict() for e in self.explanations],
                "datasets": {k: _plain({a: b for a, b in v.items() if a != "basis"})
                             for k, v in self.datasets.items()}}


def explain_set(runs: list[str | Path | Run], indices: list[int] | None = None,
                images: list[str | Path] | None = None, data_dir: str | Path | None = None,
                progress: bool = True, dataset_images: int = 1000) -> ExplainSet:
    """``explain_runs`` and, for every sequence run, its view of the test set, with each
    explained image's path through that run's PCA map."""

    loaded = [r if isinstance(r, Run) else load_run(r) for r in runs]
    ds = load_dataset(loaded[0].config.dataset, data_dir or loaded[0].config.data_dir)
    explanations = explain_runs(loaded, indices, images, data_dir, progress, dataset=ds)
    views = {}
    for run in loaded:
        view = dataset_view(run, ds, dataset_images)
        if view is not None:
            views[str(run.path)] = view
    by_path = {str(r.path): torch_copy(r) for r in loaded if str(r.path) in views}
    for e in explanations:
        if e.run in views:
            project_path(e, by_path[e.run], views[e.run])
    return ExplainSet(explanations, views)


def write_explanations(explained: ExplainSet | list[Explanation],
                       out: str | Path) -> dict[str, Path]:
    """``out/explain.json`` (every number the page shows) and ``out/explain.html`` (the page,
    offline), each written whole under a temporary name and renamed into place."""

    if not isinstance(explained, ExplainSet):
        explained = ExplainSet(list(explained), {})
    out = Path(out)
    data = explained.to_dict()
    # both made before either is written: a failure leaves neither file, never one of the two
    text, page = dumps(data, indent=None) + "\n", render(data["images"], data["datasets"])
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "explain.json", text)
        atomic_write(out / "explain.html", page)
    except OSError as exc:
        raise UsageError(f"cannot write under {out}: {exc.strerror or exc}") from None
    return {"json": out / "explain.json", "html": out / "explain.html"}
