"""Figures: training curves, confusion matrices, image galleries. Used by a run folder (training)
and by the comparison report (reports).

Plots use matplotlib's object API with the Agg canvas: no pyplot state, safe on servers and threads.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ..core.fileio import atomic_write

METRIC_NAMES = {"loss": "loss", "accuracy": "accuracy"}


def figure(width: float = 6.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def save_figure(fig: Figure, path: Path) -> None:
    atomic_write(path, png(fig))


def epoch_axis(ax, last_epoch: int) -> None:
    """Whole-number epoch ticks, and room around a single epoch's points."""
    ax.set_xlabel("epoch")
    ax.set_xlim(0.5, max(last_epoch, 1) + 0.5)
    step = max(1, -(-last_epoch // 12))
    ax.set_xticks(range(1, max(last_epoch, 1) + 1, step))


def history_figure(series: dict[str, list[dict]], metric: str, title: str,
                   bands: dict[str, dict] | None = None) -> Figure:
    """Training (dashed line, open squares) and validation (solid line, dots) ``metric`` per
    epoch, one colour per series. ``bands``: {label: {"epoch": [...], "low": [...], "high":
    [...]}} shades the validation curve's spread (e.g. min to max across seeds). The markers
    tell the two apart even where a single epoch draws no line."""
    fig = figure()
    ax = fig.add_subplot()
    last = 1
    for i, (label, history) in enumerate(series.items()):
        epochs = [h["epoch"] for h in history]
        last = max([last, *epochs])
        colour = f"C{i}"
        prefix = f"{label}: " if label else ""
        ax.plot(epochs, [h[metric] for h in history], "--s", color=colour, markersize=4,
                markerfacecolor="white", label=f"{prefix}training")
        ax.plot(epochs, [h[f"val_{metric}"] for h in history], "-o", color=colour, markersize=4,
                label=f"{prefix}validation")
        band = (bands or {}).get(label)
        if band:  # a shaded band between epochs, and a bar at each (visible for one epoch)
            ax.fill_between(band["epoch"], band["low"], band["high"], color=colour, alpha=0.15,
                            linewidth=0)
            mid = [h[f"val_{metric}"] for h in history]
            # a mean of equal values can round a hair outside their min and max: no negative bar
            ax.errorbar(band["epoch"], mid,
                        yerr=[[max(0.0, m - lo) for m, lo in zip(mid, band["low"])],
                              [max(0.0, hi - m) for m, hi in zip(mid, band["high"])]],
                        fmt="none", ecolor=colour, capsize=3, linewidth=1)
    ax.set_title(title)
    epoch_axis(ax, last)
    ax.set_ylabel(METRIC_NAMES.get(metric, metric))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_history(history: list[dict], folder: Path, title: str = "") -> None:
    """``loss.png`` and ``accuracy.png``, each training vs validation."""
    for metric, name in (("loss", "Loss"), ("accuracy", "Accuracy")):
        fig = history_figure({"": history}, metric, f"{name} per epoch: {title}")
        save_figure(fig, folder / f"{metric}.png")


def _confusion_axes(fig: Figure, ax, cm: np.ndarray, classes: list[str], title: str,
                    vmax: int) -> None:
    cm = np.asarray(cm)
    shown = np.ma.masked_equal(cm, 0)  # zeros stay white
    image = ax.imshow(shown, cmap="Blues", norm=LogNorm(vmin=1, vmax=max(vmax, 2)))
    n = len(classes)
    long_names = max(map(len, classes)) > 2
    ax.set_xticks(range(n), classes, rotation=45 if long_names else 0,
                  ha="right" if long_names else "center", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = np.sqrt(max(vmax, 1))  # the middle of the log scale
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                    color="white" if cm[i, j] > threshold else "black")
    ax.set_title(title, fontsize=10)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("test images (log colour scale)", fontsize=8)


def confusion_figure(cm: np.ndarray, classes: list[str], title: str) -> Figure:
    fig = figure(6.0, 5.0)
    _confusion_axes(fig, fig.add_subplot(), cm, classes, title, int(np.max(cm)) if np.size(cm)
                    else 1)
    return fig


def confusions_figure(matrices: dict[str, np.ndarray], classes: list[str]) -> Figure:
    """Several models' confusion matrices side by side, on one colour scale."""
    n = len(matrices)
    fig = figure(5.2 * n, 4.8)
    vmax = max((int(np.max(m)) for m in matrices.values() if np.size(m)), default=1)
    for k, (title, cm) in enumerate(matrices.items()):
        _confusion_axes(fig, fig.add_subplot(1, n, k + 1), cm, classes, title, vmax)
    fig.tight_layout()
    return fig


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str = "") -> None:
    save_figure(confusion_figure(cm, classes, title), path)


def gallery_figure(images: np.ndarray, items: list[list], classes: list[str], title: str,
                   cols: int = 8, rows: int = 3, caption=None) -> Figure:
    """A grid of test images: ``items`` are [index, true, predicted, confidence] (the most
    confident mistakes) unless ``caption(item)`` gives each image's own caption."""
    shown = items[:cols * rows]
    lines = max((caption(item).count("\n") + 1 for item in shown), default=2) \
        if caption is not None else 2
    fig = figure(cols * 1.1 + (0.5 if lines > 2 else 0),
                 max(1, -(-len(shown) // cols)) * (1.1 + 0.15 * lines) + 0.4)
    fig.suptitle(title)
    for k, item in enumerate(shown):
        ax = fig.add_subplot(max(1, -(-len(shown) // cols)), cols, k + 1)
        ax.imshow(images[item[0]], cmap="gray_r")
        if caption is None:
            _, true, pred, conf = item
            text = f"{classes[true][:7]}→{classes[pred][:7]}\n{conf:.0%}"
        else:
            text = caption(item)
        ax.set_title(text, fontsize=7)
        ax.axis("off")
    return fig
