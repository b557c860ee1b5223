"""The comparison report: ``report.md``, a self-contained ``report.html`` and ``comparison.json``
(every number in them, from analysis.py), with the figures beside them as PNG files.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .analysis import analyse
from .evaluation import dataset_view
from .fileio import atomic_write, write_json
from .plots import (
    confusions_figure,
    figure,
    gallery_figure,
    history_figure,
    png,
    save_figure,
)


def _interval(ci, scale: float = 100, unit: str = "") -> str:
    return "–" if not ci else f"{ci[0] * scale:.2f} to {ci[1] * scale:.2f}{unit}"


def seconds(x: float) -> str:
    """Seconds with enough digits to be read: 0.034, 1.27, 34.1."""
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


def _group_row(g: dict) -> list[str]:
    acc, loss = g["accuracy"], g["loss"]
    spread = f" ± {acc['std'] * 100:.2f}" if acc["n"] > 1 else ""
    lspread = f" ± {loss['std']:.4f}" if loss["n"] > 1 else ""
    return [g["name"], str(acc["n"]), f"{acc['mean'] * 100:.2f}%{spread}",
            _interval(acc["ci_seeds"]), _interval(acc["ci_images"]),
            f"{loss['mean']:.4f}{lspread}", f"{g['params']:,}",
            seconds(g["seconds_per_epoch"]["mean"]),
            f"{g['inference_images_per_second']['mean']:,.0f}", str(g["epochs"])]


GROUP_HEADERS = ["model", "seeds", "test accuracy (mean ± std)", "95% CI across seeds",
                 "95% CI over test images", "test loss", "parameters", "s / epoch",
                 "inference img/s", "epochs"]
PAIR_HEADERS = ["pair (a vs b)", "a − b (points)", "95% CI", "interval from", "seeds (a / b)",
                "both right", "a only", "b only", "both wrong", "McNemar p (Holm)"]
RECIPE_HEADERS = ["model", "training images", "epochs", "batch", "learning rate", "schedule",
                  "preset", "protocol", "precision", "backend", "seeds"]
PROVENANCE_HEADERS = ["model", "seqmnist", "PyTorch", "Python", "OS", "CPU / GPU", "device",
                      "threads", "replicas", "started"]


def _seed_pair(p: dict, i: int) -> str:
    if "seed_pairs" not in p:
        return str(i + 1)
    a, b = p["seed_pairs"][i]
    return str(a) if a == b else f"{a} / {b}"


def _pair_rows(p: dict) -> list[list[str]]:
    rows = []
    for i, t in enumerate(p["mcnemar"]):
        first = i == 0
        rows.append([f"{p['a']} vs {p['b']}" if first else "",
                     f"{p['difference']:+.2f}" if first else "",
                     f"{p['ci'][0]:.2f} to {p['ci'][1]:.2f}" if first else "",
                     p["ci_method"] if first else "", _seed_pair(p, i), f"{t['both_right']:,}",
                     f"{t['only_a']:,}", f"{t['only_b']:,}", f"{t['both_wrong']:,}",
                     f"{t['p_holm']:.2g}"])
    return rows


def _recipe_row(g: dict) -> list[str]:
    r = g["recipe"]
    used, total = g["train_images"], g["train_images_total"]
    images = f"{used:,} of {total:,}" if used and total and used < total else f"{used or 0:,}"
    lr = f"{r['lr']:g}" + (" (peak)" if r["schedule"] == "onecycle" else "")
    return [g["name"], images, str(r["epochs"]), str(r["batch_size"]), lr, r["schedule"],
            r["preset"], r["protocol"], r["precision"], ", ".join(r["backend"]),
            ", ".join(map(str, g["seeds"]))]


def _fmt(v) -> str:
    if isinstance(v, list):
        return " / ".join(_fmt(x) for x in v)
    return "–" if v is None else str(v)


def _provenance_row(g: dict) -> list[str]:
    p = g["provenance"]
    hardware = p.get("gpu") or p.get("cpu")
    return [g["name"], _fmt(p.get("seqmnist")), _fmt(p.get("torch")), _fmt(p.get("python")),
            _fmt(p.get("os")), _fmt(hardware), _fmt(p.get("device")), _fmt(p.get("threads")),
            _fmt(p.get("replicas")), _fmt(p.get("started"))]


def _per_class_table(groups: list[dict]) -> tuple[list[str], list[list[str]]]:
    classes = groups[0]["classes"]
    headers = ["class"] + [g["name"] for g in groups]
    rows = []
    for c in classes:
        row = [c]
        for g in groups:
            s = g["per_class"].get(c)
            row.append("–" if s is None else f"{s['mean'] * 100:.2f}%" +
                       (f" ± {s['std'] * 100:.2f}" if s["n"] > 1 else ""))
        rows.append(row)
    return headers, rows


def anytime_figure(groups: list[dict]) -> Figure | None:
    """Test accuracy after the first k steps, per model (band: min to max across seeds)."""
    shown = [g for g in groups if g.get("anytime")]
    if not shown:
        return None
    fig = figure()
    ax = fig.add_subplot()
    for i, g in enumerate(shown):
        a = g["anytime"]
        ax.plot(a["steps"], a["mean"], "-o", markersize=3, color=f"C{i}",
                label=f"{g['name']} ({a['of']} steps)")
        ax.fill_between(a["steps"], a["low"], a["high"], color=f"C{i}", alpha=0.15, linewidth=0)
    ax.set_xlabel("steps read")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Anytime accuracy: answering after the first k steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def curves_figure(groups: list[dict], metric: str) -> Figure:
    series, bands = {}, {}
    for g in groups:
        c = g["curves"]
        series[g["name"]] = [dict(epoch=e, **{metric: c[metric]["mean"][i],
                                              f"val_{metric}": c[f"val_{metric}"]["mean"][i]})
                             for i, e in enumerate(c["epoch"])]
        if len(g["seeds"]) > 1:
            bands[g["name"]] = dict(epoch=c["epoch"], low=c[f"val_{metric}"]["low"],
                                    high=c[f"val_{metric}"]["high"])
    title = f"{metric.capitalize()} per epoch" + (" (mean over seeds; band: min to max of "
                                                  "validation)" if bands else "")
    return history_figure(series, metric, title, bands)


INSIDE_IMAGES, INSIDE_PER_CLASS = 500, 10  # test images behind the report's inside view


def inside_view(runs: list, groups: list[dict], test_images, test_labels) -> dict:
    """For each group of a sequence model, how its first seed reads the test set
    (``evaluation.dataset_view`` on the first INSIDE_IMAGES test images): when it knows, per
    class, and which stretches of steps matter per class. Empty without the test set."""
    if test_images is None or test_labels is None:
        return {}
    from types import SimpleNamespace

    by_path = {str(r.path): r for r in runs}
    ds = SimpleNamespace(x_test=test_images, y_test=test_labels)
    out = {}
    for g in groups:
        view = dataset_view(by_path[g["runs"][0]], ds, INSIDE_IMAGES, INSIDE_PER_CLASS)
        if view is not None:
            out[g["name"]] = dict(seed=g["seeds"][0], steps=view["steps"], block=view["block"],
                                  images=view["images"], median_decided_at=view["median_decided_at"],
                                  importance=np.round(view["importance"], 5).tolist())
    return out


def _inside_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    inside = result.get("inside") or {}
    names = list(inside)
    classes = result["groups"][0]["classes"]
    rows = [[c] + [("–" if inside[n]["median_decided_at"].get(c) is None else
                    f"{inside[n]['median_decided_at'][c] + 1:g} of {inside[n]['steps']}")
                   for n in names] for c in classes]
    return ["class", *names], rows


def importance_figure(result: dict) -> Figure | None:
    """Per sequence model: which stretches of steps matter for each class (steps x classes)."""
    inside = result.get("inside") or {}
    if not inside:
        return None
    classes = result["groups"][0]["classes"]
    fig = figure(3.2 * len(inside) + 0.8, 3.6)
    axes = fig.subplots(1, len(inside), squeeze=False)[0]
    top = max(float(np.abs(np.array(v["importance"])).max()) for v in inside.values()) or 1.0
    for ax, (name, v) in zip(axes, inside.items()):
        values = np.array(v["importance"])
        im = ax.imshow(values, aspect="auto", cmap="RdBu_r", vmin=-top, vmax=top,
                       extent=(-0.5, len(classes) - 0.5, len(values) + 0.5, 0.5))  # from 1
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(classes)), classes, fontsize=7,
                      rotation=90 if max(map(len, classes)) > 2 else 0)
        ax.set_ylabel("step" if v["block"] == 1 else f"stretch of {v['block']} steps")
    fig.colorbar(im, ax=list(axes), label="drop of the class's probability when zeroed")
    return fig


def _figures(result: dict, test_images: np.ndarray | None) -> list[tuple[str, str, Figure]]:
    """(file stem, caption, figure) for every figure of the report, in order."""
    groups = result["groups"]
    figs = [("loss", "Loss per epoch", curves_figure(groups, "loss")),
            ("accuracy", "Accuracy per epoch", curves_figure(groups, "accuracy"))]
    anytime = anytime_figure(groups)
    if anytime is not None:
        figs.append(("anytime", "Anytime accuracy of the sequence readers", anytime))
    importance = importance_figure(result)
    if importance is not None:
        figs.append(("importance", "Which steps matter for each class (occlusion of stretches "
                     "of steps, first seed of each sequence model)", importance))
    seeds = {len(g["seeds"]) for g in groups}
    summed = "" if seeds == {1} else " (summed over seeds)"
    figs.append(("confusion", "Confusion matrices" + summed, confusions_figure(
        {g["name"] + summed: np.array(g["confusion"]) for g in groups}, groups[0]["classes"])))
    if test_images is None:
        return figs
    classes = groups[0]["classes"]
    for k, p in enumerate(result["pairs"]):
        for key, right, wrong in (("a_only", p["a"], p["b"]), ("b_only", p["b"], p["a"])):
            flips = p["flips"][key]
            if flips["images"]:
                caption = f"Images {right} gets right and {wrong} wrong in most seeds " \
                          f"({flips['count']:,} in all)"
                fig = gallery_figure(test_images, [[i] for i in flips["images"]], classes,
                                     caption, caption=lambda item: f"#{item[0]}")
                figs.append((f"flips-{k}-{key}", caption, fig))
    for k, g in enumerate(groups):
        if g["misclassified"]:
            caption = f"{g['name']}: most confident mistakes (true → predicted, confidence)"
            figs.append((f"mistakes-{k}", caption, gallery_figure(
                test_images, g["misclassified"], classes, caption)))
    return figs


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    return out + ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _quick_warning(result: dict) -> str | None:
    if not result["quick"]:
        return None
    parts = "; ".join(f"{name}: {', '.join(r)}" for name, r in result["quick"].items())
    return (f"Quick run, not a result: these models were trained below their recipe ({parts}). "
            "Their accuracy says little about what the models reach; rerun without --limit and "
            "with the recipe's epochs before drawing conclusions.")


PUBLISHED_HEADERS = ["model", "view", "ours (mean ± std)", "seeds", "epochs", "parameters",
                     "s / epoch", "published", "source"]


def _published_rows(groups: list[dict]) -> list[list[str]]:
    rows = []
    for g in groups:
        for p in g.get("published") or []:
            acc = g["accuracy"]
            rows.append([g["name"], g["view"], f"{acc['mean'] * 100:.2f}%" + (
                f" ± {acc['std'] * 100:.2f}" if acc["n"] > 1 else ""), str(acc["n"]),
                str(g["epochs"]), f"{g['params']:,}", seconds(g["seconds_per_epoch"]["mean"]),
                f"{p['accuracy']:.2f}% ({p['model']})", p["source"]])
    return rows


def protocol_note(groups: list[dict]) -> str:
    """How the reported accuracies were obtained, in words (shown near the top)."""
    kinds = {g["recipe"]["protocol"] for g in groups}
    notes = {"tutorial": "validation on the test set after every epoch, as the Keras tutorial "
                         "does (the validation curves are test-set curves)",
             "research": "the last training images held out for validation, early stopping on "
                         "them, the test set evaluated once at the end"}
    return "Protocol: " + "; ".join(f"{k}: {notes[k]}" for k in sorted(kinds)) + "."


def _sections(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    groups = result["groups"]
    sections = [("Models", GROUP_HEADERS, [_group_row(g) for g in groups])]
    published = _published_rows(groups)
    if published:
        sections.append(("Beside the published numbers", PUBLISHED_HEADERS, published))
    if result["pairs"]:
        sections.append(("Pairwise tests on the same test images", PAIR_HEADERS,
                         [row for p in result["pairs"] for row in _pair_rows(p)]))
    sections.append(("Per-class test accuracy", *_per_class_table(groups)))
    if result.get("inside"):
        sections.append(("When each sequence model knows (median step from which its answer "
                         "stays, over the test images of the class it reads right; first seed)",
                         *_inside_rows(result)))
    sections.append(("Training recipe", RECIPE_HEADERS, [_recipe_row(g) for g in groups]))
    sections.append(("Where and how each model ran", PROVENANCE_HEADERS,
                     [_provenance_row(g) for g in groups]))
    return sections


def _relative(path: str, out: Path) -> str:
    try:
        return os.path.relpath(path, out)
    except ValueError:
        return path


def write_report(runs: list, out: str | Path, test_images: np.ndarray | None = None,
                 seed: int = 0, test_labels: np.ndarray | None = None) -> dict:
    """Analyse finished ``runs`` and write ``report.md``, ``report.html``, ``comparison.json``
    and the figures under ``out``. Returns the analysis with the report's path added.
    ``test_labels``: the test set's labels, which every run's stored predictions must match."""
    out = Path(out)
    result = analyse(runs, seed=seed, labels=test_labels)
    result["inside"] = inside_view(runs, result["groups"], test_images, test_labels)
    out.mkdir(parents=True, exist_ok=True)
    figs = _figures(result, test_images)
    files = []
    for stem, caption, fig in figs:
        save_figure(fig, out / f"{stem}.png")
        files.append((f"{stem}.png", caption))
    warning = _quick_warning(result)
    title = f"seqmnist comparison on {result['dataset']} ({result['test_images']:,} test images)"
    md = [f"# {title}", ""]
    if warning:
        md += [f"> **{warning}**", ""]
    md += [result["verdict"], "", protocol_note(result["groups"]), ""]
    for name, headers, rows in _sections(result):
        md += [f"## {name}", "", *_md_table(headers, rows), ""]
    md += ["## Figures", ""] + [f"![{c}]({f})\n\n*{c}*\n" for f, c in files]
    md += ["## Method", "", result["methods"], "", "## Run folders", ""]
    md += [f"- {g['name']}: " + ", ".join(f"[{Path(r).name}]({_relative(r, out)})"
                                           for r in g["runs"]) for g in result["groups"]]
    atomic_write(out / "report.md", "\n".join(md) + "\n")
    atomic_write(out / "report.html", _html(title, warning, result, figs, out))
    write_json(out / "comparison.json", result)
    return dict(result, report=str(out / "report.html"))


def _html(title: str, warning: str | None, result: dict, figs, out: Path) -> str:
    esc = html.escape
    tables = "".join(f"<h2>{esc(name)}</h2>{_html_table(headers, rows)}"
                     for name, headers, rows in _sections(result))
    images = "".join(
        f'<figure><img alt="{esc(c)}" src="data:image/png;base64,'
        f'{base64.b64encode(png(f)).decode()}"><figcaption>{esc(c)}</figcaption></figure>'
        for _, c, f in figs)
    folders = "".join(
        f"<li>{esc(g['name'])}: " + ", ".join(
            f'<a href="{esc(_relative(r, out))}">{esc(Path(r).name)}</a>' for r in g["runs"])
        + "</li>" for g in result["groups"])
    banner = f'<p class="quick">{esc(warning)}</p>' if warning else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: .92em; }}
th, td {{ border: 1px solid #ccc; padding: .3em .6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
.verdict {{ font-size: 1.15em; background: #f3f7ff; padding: .8em 1em; border-radius: 6px; }}
.quick {{ background: #fff3cd; border: 1px solid #e0b000; padding: .8em 1em; border-radius: 6px;
          font-weight: 600; }}
figure {{ display: inline-block; margin: .5em; vertical-align: top; max-width: 100%; }}
figcaption {{ font-size: .9em; color: #444; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{esc(title)}</h1>
{banner}
<p class="verdict">{esc(result["verdict"])}</p>
<p>{esc(protocol_note(result["groups"]))}</p>
{tables}
<h2>Figures</h2>
{images}
<h2>Method</h2><p>{esc(result["methods"])}</p>
<h2>Run folders</h2><ul>{folders}</ul>
</body></html>
"""
