"""Reports: the comparison's ``report.md``, a self-contained ``report.html`` and
``comparison.json`` (every number in them, from analysis.py), with the figures beside them as PNG
files; and a sweep's ``sweep.md``. Each is built once as a list of blocks (headings, paragraphs,
tables, figures, links) and written as Markdown and as HTML from that one list.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..core.fileio import atomic_write, write_json
from ..core.units import format_duration
from ..evaluation.analysis import analyse
from ..runs.plots import confusions_figure, figure, gallery_figure, history_figure, png
from .dataset_view import dataset_view, reads_steps
from .document import Block, Link, heading, paragraph, table, write_document


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
            f"{g['inference_images_per_second']['mean']:,.0f}", _length(g)]


def _length(g: dict) -> str:
    """How long a group trained: its epochs, or its budget and the images it saw."""
    if not g.get("budget"):
        return str(g["epochs"])
    seen = [line["images"][-1] for line in g["timeline"] if line["images"]]
    images = f", {int(np.median(seen)):,} images" if seen else ""
    return f"budget {format_duration(g['budget'])}{images}"


GROUP_HEADERS = ["model", "seeds", "test accuracy (mean ± std)", "95% CI across seeds",
                 "95% CI over test images", "test loss", "parameters", "s / epoch",
                 "inference img/s", "epochs (or budget)"]
PAIR_HEADERS = ["pair (a vs b)", "a − b (points)", "95% CI", "interval from", "seeds (a / b)",
                "both right", "a only", "b only", "both wrong", "McNemar p (Holm)"]
RECIPE_HEADERS = ["model", "training images", "epochs (or budget)", "batch", "learning rate",
                  "schedule",
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
    order = r.get("permutation")  # the permuted view's pixel order: part of the task
    name = g["name"] + ("" if order is None else "; pixel order each seed's own" if order == -1
                        else f"; pixel order {order}")
    if g.get("budget"):
        lr += " over the budget" if r["schedule"] == "onecycle" else ", linear decay over the budget"
    return [name, images, _length(g), str(r["batch_size"]), lr, r["schedule"],
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
            _fmt(p.get("replicas")), _started(p.get("started"))]


def _started(value) -> str:
    """When the runs started, as a date and a minute that do not wrap in a table cell (hyphens
    and spaces that do not break); several runs: the first and the last."""
    values = sorted(v for v in (value if isinstance(value, list) else [value]) if v)
    if not values:
        return "–"
    short = [str(v).replace("T", " ")[:16] for v in (values[0], values[-1])]
    text = short[0] if short[0] == short[1] else f"{short[0]} to " + (
        short[1][11:] if short[1][:10] == short[0][:10] else short[1])
    return text.replace("-", "\u2011").replace(" ", "\u00a0")


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


def time_figure(groups: list[dict]) -> Figure:
    """Validation accuracy against cumulative training seconds: a thin line per seed, and with
    several seeds the band from the lowest to the highest seed (each seed's points joined by
    straight lines, the band up to the time the shortest seed ends). Groups of several views (a
    sweep's report): one panel per view, each model in the same colour in every panel."""
    views = list(dict.fromkeys(g["view"] for g in groups))
    fig = figure(6.4 if len(views) == 1 else 4.6 * len(views), 4.2)
    axes = fig.subplots(1, len(views), squeeze=False, sharey=True)[0]
    colour = {m: f"C{k}" for k, m in enumerate(dict.fromkeys(g["model"] for g in groups))}
    for ax, view in zip(axes, views):
        _time_panel(ax, [g for g in groups if g["view"] == view], colour,
                    view if len(views) > 1 else None)
    axes[0].set_ylabel("validation accuracy")
    fig.suptitle("Accuracy against training time (a line per seed; band: lowest to highest)",
                 fontsize=10)
    return fig


def _time_panel(ax, groups: list[dict], colour: dict, view: str | None) -> None:
    for g in groups:
        lines, c = g["timeline"], colour[g["model"]]
        label = g["model"] if view else g["name"]
        for k, line in enumerate(lines):
            ax.plot(line["elapsed"], line["accuracy"], "-o", markersize=2, linewidth=1,
                    color=c, alpha=0.8, label=label if k == 0 else None)
        if len(lines) > 1 and all(len(line["elapsed"]) > 1 for line in lines):
            start = max(line["elapsed"][0] for line in lines)
            end = min(line["elapsed"][-1] for line in lines)
            if end > start:
                grid = np.linspace(start, end, 100)
                at = np.array([np.interp(grid, line["elapsed"], line["accuracy"])
                               for line in lines])
                ax.fill_between(grid, at.min(0), at.max(0), color=c, alpha=0.15, linewidth=0)
    ax.set_xlabel("training seconds (validation not counted)")
    if view:
        ax.set_title(f"{view} view", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _time_rows(result: dict) -> tuple[list[str], list[list[str]]] | None:
    """The time-to-accuracy table: per group and threshold, the median training time to reach
    it over the seeds that did, its range, and how many seeds reached it."""
    table = result.get("time_to_accuracy") or {}
    if not table.get("thresholds"):
        return None
    headers = ["model", "epochs (or budget)"] + [f"to {t:.1%}".replace(".0%", "%") for t in
                                     table["thresholds"]]
    rows = []
    for g in result["groups"]:
        cells = [g["name"], _length(g)]
        for r in table["groups"][g["name"]]:
            if not r["reached"]:
                cells.append(f"not reached (0 of {r['of']})")
                continue
            spread = f" ({seconds(r['low'])} to {seconds(r['high'])} s)" \
                if r["low"] != r["high"] else ""
            cells.append(f"{seconds(r['median'])} s{spread}, {r['reached']} of {r['of']} seeds, "
                         f"{r['median_images']:,} images")
        rows.append(cells)
    return headers, rows


TIME_NOTE = ("Time to accuracy: training seconds (validation not counted) until a seed's "
             "validation accuracy first reached the threshold, read at its validation points "
             "(after each epoch, or each tenth of a budget); median over the seeds that reached "
             "it, range in brackets, and the images seen by then. Times depend on the machine "
             "(see 'Where and how each model ran').")


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
# The inside view covers at most this many sequence models, the most accurate: each is an
# occlusion pass over test images (seconds at 784 steps), and a sweep has dozens of them.
INSIDE_GROUPS = 5


def inside_readers(runs: list, groups: list[dict]) -> tuple[list[dict], int]:
    """(the groups the inside view covers, how many groups of sequence models there are): every
    sequence model's group up to INSIDE_GROUPS of them, else the INSIDE_GROUPS most accurate,
    in the report's order."""
    by_path = {str(r.path): r for r in runs}
    readers = [g for g in groups if reads_steps(by_path[g["runs"][0]].config)]
    if len(readers) <= INSIDE_GROUPS:
        return readers, len(readers)
    best = sorted(readers, key=lambda g: -g["accuracy"]["mean"])[:INSIDE_GROUPS]
    return [g for g in readers if g in best], len(readers)


def inside_view(runs: list, readers: list[dict], test_images, test_labels) -> dict:
    """For each of the ``readers`` (``inside_readers``' groups), how its first seed reads the
    test set (``evaluation.dataset_view`` on the first INSIDE_IMAGES test images): when it
    knows, per class, and which stretches of steps matter per class. Empty without the test
    set."""
    if test_images is None or test_labels is None:
        return {}
    from types import SimpleNamespace

    by_path = {str(r.path): r for r in runs}
    ds = SimpleNamespace(x_test=test_images, y_test=test_labels)
    out = {}
    for g in readers:
        view = dataset_view(by_path[g["runs"][0]], ds, INSIDE_IMAGES, INSIDE_PER_CLASS)
        if view is not None:
            out[g["name"]] = dict(seed=g["seeds"][0], steps=view["steps"], block=view["block"],
                                  images=view["images"], median_decided_at=view["median_decided_at"],
                                  importance=np.round(view["importance"], 5).tolist())
    return out


def _inside_of(result: dict) -> str:
    """'; the 5 most accurate of 18 sequence models' where the inside view left some out."""
    shown, of = len(result.get("inside") or {}), result.get("inside_of", 0)
    return f"; the {shown} most accurate of {of} sequence models" if of > shown else ""


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
        ax.set_xlabel("class")
        ax.set_ylabel("step" if v["block"] == 1 else f"stretch of {v['block']} steps")
    fig.colorbar(im, ax=list(axes), label="drop of the class's probability when zeroed")
    return fig


# Galleries of the images one model gets right and the other wrong, for every pair of up to five
# models; beyond, for each model against the most accurate (the pairs the verdict speaks of): a
# sweep of 27 models and views has 351 pairs, 702 galleries, minutes of drawing.
GALLERY_PAIRS = 10


def gallery_pairs(groups: list[dict], pairs: list[dict]) -> list[int]:
    """The indices of ``pairs`` whose galleries the report draws."""
    if len(pairs) <= GALLERY_PAIRS:
        return list(range(len(pairs)))
    best = max(groups, key=lambda g: g["accuracy"]["mean"])["name"]
    return [k for k, p in enumerate(pairs) if best in (p["a"], p["b"])]


def _figures(result: dict, test_images: np.ndarray | None) -> list[tuple[str, str, Figure]]:
    """(file stem, caption, figure) for every figure of the report, in order."""
    groups = result["groups"]
    figs = [("time", "Validation accuracy against training time", time_figure(groups)),
            ("loss", "Loss per epoch", curves_figure(groups, "loss")),
            ("accuracy", "Accuracy per epoch", curves_figure(groups, "accuracy"))]
    anytime = anytime_figure(groups)
    if anytime is not None:
        figs.append(("anytime", "Anytime accuracy of the sequence readers", anytime))
    importance = importance_figure(result)
    if importance is not None:
        figs.append(("importance", "Which steps matter for each class (occlusion of stretches "
                     f"of steps, first seed of each sequence model{_inside_of(result)})",
                     importance))
    seeds = {len(g["seeds"]) for g in groups}
    per_seed = "" if seeds == {1} else " (test images per seed: the mean over seeds, rounded)"
    figs.append(("confusion", "Confusion matrices" + per_seed, confusions_figure(
        {g["name"]: np.rint(np.array(g["confusion"]) / len(g["seeds"])).astype(int)
         for g in groups}, groups[0]["classes"])))
    if test_images is None:
        return figs
    classes = groups[0]["classes"]
    short = {g["name"]: g["model"] for g in groups}
    drawn = gallery_pairs(groups, result["pairs"])
    for k, p in enumerate(result["pairs"]):
        if k not in drawn:
            continue
        a, b = short[p["a"]], short[p["b"]]
        if a == b:  # one model read two ways: the views tell them apart
            a, b = p["a"], p["b"]
        for key, right, wrong in (("a_only", p["a"], p["b"]), ("b_only", p["b"], p["a"])):
            flips = p["flips"][key]
            if flips["images"]:
                caption = f"Images {right} gets right and {wrong} wrong in most seeds " \
                          f"({flips['count']:,} in all; each with its true class and both " \
                          "answers of the first seeds, with their confidence)"
                fig = gallery_figure(
                    test_images, flips.get("answers") or [[i] for i in flips["images"]],
                    classes, caption, caption=lambda item, a=a, b=b: _flip_caption(
                        item, classes, a, b))
                figs.append((f"flips-{k}-{key}", caption, fig))
    for k, g in enumerate(groups):
        if g["misclassified"]:
            caption = f"{g['name']}: most confident mistakes (true → predicted, confidence)"
            figs.append((f"mistakes-{k}", caption, gallery_figure(
                test_images, g["misclassified"], classes, caption)))
    return figs


def _flip_caption(item: list, classes: list[str], a: str, b: str) -> str:
    """#index, the true class, and each model's answer and confidence (reports written before
    the answers were kept show the index only)."""
    if len(item) < 6:
        return f"#{item[0]}"
    index, true, pa, ca, pb, cb = item
    return (f"#{index}: {classes[true][:7]}\n{a[:9]} {classes[pa][:7]} {ca:.0%}\n"
            f"{b[:9]} {classes[pb][:7]} {cb:.0%}")


def _quick_warning(result: dict) -> str | None:
    if not result["quick"]:
        return None
    parts = "; ".join(f"{name}: {', '.join(r)}" for name, r in result["quick"].items())
    return (f"Quick run, not a result: these models were trained below their recipe ({parts}). "
            "Their accuracy says little about what the models reach; rerun without --limit and "
            "with the recipe's epochs before drawing conclusions.")


PUBLISHED_HEADERS = ["model", "view", "ours (mean ± std)", "seeds", "epochs (or budget)",
                     "parameters", "s / epoch", "published", "source"]


def _published_rows(groups: list[dict]) -> list[list[str]]:
    rows = []
    for g in groups:
        for p in g.get("published") or []:
            acc = g["accuracy"]
            rows.append([g["name"], g["view"], f"{acc['mean'] * 100:.2f}%" + (
                f" ± {acc['std'] * 100:.2f}" if acc["n"] > 1 else ""), str(acc["n"]),
                _length(g), f"{g['params']:,}", seconds(g["seconds_per_epoch"]["mean"]),
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
                         "stays, over the test images of the class it reads right; first seed"
                         f"{_inside_of(result)})", *_inside_rows(result)))
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
    readers, result["inside_of"] = inside_readers(runs, result["groups"])
    result["inside"] = inside_view(runs, readers, test_images, test_labels)
    out.mkdir(parents=True, exist_ok=True)
    figs = [(stem, caption, png(fig)) for stem, caption, fig in _figures(result, test_images)]
    for stem, _, data in figs:  # each figure rendered once: the file and the page share it
        atomic_write(out / f"{stem}.png", data)
    warning = _quick_warning(result)
    title = f"seqmnist comparison on {result['dataset']} ({result['test_images']:,} test images)"
    blocks = [paragraph(warning, "warning")] if warning else []
    blocks += [paragraph(result["verdict"], "verdict"), paragraph(protocol_note(result["groups"]))]
    timed = _time_rows(result)
    if timed is not None:  # accuracy as a function of compute, beside the verdict
        blocks += [heading("Accuracy against training time"), Block("figures", items=tuple(
            (f"{stem}.png", caption, data) for stem, caption, data in figs if stem == "time")),
            table(*timed), paragraph(TIME_NOTE)]
        figs = [f for f in figs if f[0] != "time"]
    for name, headers, rows in _sections(result):
        blocks += [heading(name), table(headers, rows)]
    blocks += [heading("Figures"), Block("figures", items=tuple(
        (f"{stem}.png", caption, data) for stem, caption, data in figs))]
    blocks += [heading("Method"), paragraph(result["methods"]), heading("Run folders"),
               Block("links", items=tuple(
                   (g["name"], tuple(Link(Path(r).name, _relative(r, out)) for r in g["runs"]))
                   for g in result["groups"]))]
    write_document(out, "report", title, blocks)
    write_json(out / "comparison.json", result)
    return dict(result, report=str(out / "report.html"))


def write_sweep_summary(rows: list[dict], out: Path) -> Path:
    """``out/sweep.md``: the grid's model x view x dataset table, each row linking its dataset's
    comparison report (``rows`` from the sweep, paths relative to ``out``)."""
    headers = ["model", "view", "dataset", "seeds", "test accuracy (mean ± std)",
               "95% interval", "report"]
    body = [[r["model"], r["view"], r["dataset"], str(len(r["seeds"])),
             f"{r['mean'] * 100:.2f}%" + (f" ± {r['std'] * 100:.2f}" if len(r["seeds"]) > 1
                                          else " (one seed: no spread)"),
             _interval(r["ci"]), Link(r["dataset"], r["report"])] for r in rows]
    blocks = [table(headers, body), paragraph(
        "Intervals: t across seeds with two or more seeds, else bootstrap over test images. "
        "Every run folder is under `runs/`; each dataset's report holds the pairwise tests and "
        "the verdict.")]
    write_document(out, "sweep", "seqmnist sweep", blocks, html_too=False)
    return out / "sweep.md"
