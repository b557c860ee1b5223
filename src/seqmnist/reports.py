"""Plots and the comparison report (``report.md`` and a self-contained ``report.html``).

Plots use matplotlib's object API with the Agg canvas: no pyplot state, safe on servers and threads.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .storage import atomic_write


def _figure(width: float = 6.0, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def save_figure(fig: Figure, path: Path) -> None:
    atomic_write(path, _png(fig))


def history_figure(series: dict[str, list[dict]], metric: str, title: str) -> Figure:
    """Training (dashed) vs validation (solid) ``metric`` per epoch, one colour per run."""
    fig = _figure()
    ax = fig.add_subplot()
    for i, (label, history) in enumerate(series.items()):
        epochs = [h["epoch"] for h in history]
        colour = f"C{i}"
        prefix = f"{label}: " if len(series) > 1 else ""
        ax.plot(epochs, [h[metric] for h in history], "--o", color=colour, markersize=3,
                label=f"{prefix}training {metric}")
        ax.plot(epochs, [h[f"val_{metric}"] for h in history], "-o", color=colour, markersize=3,
                label=f"{prefix}validation {metric}")
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_history(history: list[dict], folder: Path, title: str = "") -> None:
    """``loss.png`` and ``accuracy.png``, each training vs validation, correctly titled."""
    for metric, name in (("loss", "Loss"), ("accuracy", "Accuracy")):
        fig = history_figure({"": history}, metric, f"Training and Validation {name}: {title}")
        save_figure(fig, folder / f"{metric}.png")


def confusion_figure(cm: np.ndarray, classes: list[str], title: str) -> Figure:
    cm = np.asarray(cm)
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.imshow(np.log1p(cm), cmap="Blues")
    n = len(classes)
    ax.set_xticks(range(n), classes, rotation=45 if max(map(len, classes)) > 2 else 0, ha="right"
                  if max(map(len, classes)) > 2 else "center")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = np.log1p(cm).max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if np.log1p(cm[i, j]) > threshold else "black")
    ax.set_title(title)
    return fig


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str = "") -> None:
    save_figure(confusion_figure(cm, classes, title), path)


def gallery_figure(images: np.ndarray, mistakes: list[list], classes: list[str], title: str,
                   cols: int = 8, rows: int = 3) -> Figure:
    """The most confident mistakes: the image, its true class and what the model said."""
    shown = mistakes[:cols * rows]
    fig = _figure(cols * 1.1, max(1, -(-len(shown) // cols)) * 1.35 + 0.4)
    fig.suptitle(title)
    for k, (idx, true, pred, conf) in enumerate(shown):
        ax = fig.add_subplot(-(-len(shown) // cols), cols, k + 1)
        ax.imshow(images[idx], cmap="gray_r")
        ax.set_title(f"{classes[true][:7]}→{classes[pred][:7]}\n{conf:.0%}", fontsize=7)
        ax.axis("off")
    return fig


def _data_uri(fig: Figure) -> str:
    return "data:image/png;base64," + base64.b64encode(_png(fig)).decode()


def _fmt_row(r: dict) -> list[str]:
    return [r["name"], f"{r['test_accuracy']:.2%}", f"{r['test_loss']:.4f}", f"{r['params']:,}",
            f"{r['seconds_per_epoch']:.1f}", f"{r['inference_images_per_second']:,.0f}",
            str(r["epochs"])]


HEADERS = ["model", "test accuracy", "test loss", "parameters", "s / epoch", "inference img/s",
           "epochs"]


def verdict(rows: list[dict]) -> str:
    """One sentence: who is more accurate, and at what cost."""
    if len(rows) == 1:
        r = rows[0]
        return f"{r['name']} reached {r['test_accuracy']:.2%} test accuracy."
    best = max(rows, key=lambda r: r["test_accuracy"])
    others = [r for r in rows if r is not best]
    runner = max(others, key=lambda r: r["test_accuracy"])
    gap = best["test_accuracy"] - runner["test_accuracy"]
    ratio = best["params"] / max(runner["params"], 1)
    size = f"{ratio:.0f}x the parameters" if ratio >= 1 else f"{1 / ratio:.0f}x fewer parameters"
    return (f"{best['name']} is the most accurate at {best['test_accuracy']:.2%}, "
            f"{gap * 100:.2f} points ahead of {runner['name']} ({runner['test_accuracy']:.2%}), "
            f"with {size} and {best['seconds_per_epoch']:.1f}s vs "
            f"{runner['seconds_per_epoch']:.1f}s per epoch.")


def write_report(runs: list, out: str | Path, test_images: np.ndarray | None = None) -> dict:
    """Write ``report.md``, ``report.html`` and the PNGs they use for finished ``runs``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [dict(name=f"{r.config.model} ({r.config.view})", **r.metrics) for r in runs]
    series = {row["name"]: r.history for row, r in zip(rows, runs)}
    figures = {
        "loss": history_figure(series, "loss", "Loss per epoch (dashed: training)"),
        "accuracy": history_figure(series, "accuracy", "Accuracy per epoch (dashed: training)"),
    }
    for row, r in zip(rows, runs):
        key = r.config.model if r.config.model not in figures else row["name"]
        figures[f"confusion-{key}"] = confusion_figure(np.array(row["confusion"]), row["classes"],
                                                       f"{row['name']}: confusion")
        if test_images is not None and row.get("misclassified"):
            figures[f"mistakes-{key}"] = gallery_figure(
                test_images, row["misclassified"], row["classes"],
                f"{row['name']}: most confident mistakes (true→predicted)")
    files = {}
    for key, fig in figures.items():
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in key) + ".png"
        save_figure(fig, out / name)
        files[key] = name
    sentence = verdict(rows)
    table = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    table += ["| " + " | ".join(_fmt_row(r)) + " |" for r in rows]
    dataset = runs[0].config.dataset
    md = [f"# seqmnist comparison on {dataset}", "", sentence, "", *table, "",
          "Run folders: " + ", ".join(f"`{r.path}`" for r in runs), ""]
    md += [f"## {k}\n\n![{k}]({v})\n" for k, v in files.items()]
    atomic_write(out / "report.md", "\n".join(md))
    atomic_write(out / "report.html", _html(dataset, sentence, rows, runs, figures))
    return dict(verdict=sentence, rows=rows, report=str(out / "report.html"))


def _html(dataset: str, sentence: str, rows: list[dict], runs: list, figures: dict) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in _fmt_row(r)) + "</tr>"
                   for r in rows)
    imgs = "".join(f'<figure><img alt="{esc(k)}" src="{_data_uri(f)}"><figcaption>{esc(k)}'
                   f"</figcaption></figure>" for k, f in figures.items())
    folders = "".join(f"<li><code>{esc(str(r.path))}</code></li>" for r in runs)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>seqmnist: comparison on {esc(dataset)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: .35em .7em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.verdict {{ font-size: 1.2em; background: #f3f7ff; padding: .8em 1em; border-radius: 6px; }}
figure {{ display: inline-block; margin: .5em; vertical-align: top; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>seqmnist: comparison on {esc(dataset)}</h1>
<p class="verdict">{esc(sentence)}</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{imgs}
<h2>Run folders</h2><ul>{folders}</ul>
</body></html>
"""
