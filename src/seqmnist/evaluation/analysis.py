"""What a set of finished runs says: runs grouped by recipe (seeds of one model form a group),
every group's numbers with their spread, and every pair of groups tested on the same test images.

``analyse(runs)`` returns one plain dict (written as ``comparison.json``); ``reports.py`` draws
it. Nothing here trains or plots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core import stats
from ..core.errors import UsageError
from ..runs.schema import FIELDS
from ..runs.storage import Run, load_predictions
from ..training.config import TrainConfig
from .published import published

FLIPS_KEPT = 100


@dataclass
class Group:
    """Runs of one recipe that differ only in their seed, sorted by seed."""

    name: str
    runs: list[Run]

    @property
    def config(self) -> TrainConfig:
        return self.runs[0].config

    @property
    def seeds(self) -> list[int]:
        return [r.config.seed for r in self.runs]


def recipe_key(cfg: TrainConfig) -> tuple:
    return tuple((k, repr(v)) for k, v in sorted(cfg.recipe().items()))


def group_runs(runs: list[Run]) -> list[Group]:
    """Group runs by recipe, in the order their recipes first appear; name each group by model
    and view, adding the settings that tell two groups of the same model and view apart."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault(recipe_key(run.config), []).append(run)
    out = []
    for members in groups.values():
        members.sort(key=lambda r: r.config.seed)
        seeds = [r.config.seed for r in members]
        if len(set(seeds)) != len(seeds):
            dup = sorted({s for s in seeds if seeds.count(s) > 1})
            raise UsageError(f"two runs of the same recipe have the same seed ({dup}): "
                             + ", ".join(str(r.path) for r in members if r.config.seed in dup))
        out.append(members)
    names = [f"{m[0].config.model} ({m[0].config.view}"
             f"{', order drawn from each seed' if m[0].config.permutation == -1 else ''})"
             for m in out]
    for i, members in enumerate(out):
        twins = [j for j, n in enumerate(names) if n == names[i]]
        if len(twins) > 1:
            mine = dict(recipe_key(members[0].config))
            differing = sorted({k for j in twins for k, v in recipe_key(out[j][0].config)
                                if mine.get(k) != v})
            extra = ", ".join(f"{k} {getattr(members[0].config, k)}" for k in differing)
            names[i] = f"{names[i][:-1]}, {extra})"
    return [Group(n, m) for n, m in zip(names, out)]


def summary(values) -> dict:
    mean, std = stats.mean_std(values)
    ci = stats.t_interval(values)
    return dict(mean=mean, std=std, values=[float(v) for v in values], n=len(values),
                ci_seeds=list(ci) if ci else None)


def quick_reasons(group: Group) -> list[str]:
    """Why a group's runs are below their recipe (a quick look, not a result), in words."""
    cfg, m = group.config, group.runs[0].metrics
    if (m.get("provenance") or {}).get("imported_from"):
        return []  # trained elsewhere (Keras): its recipe is not seqmnist's to judge
    reasons = []
    used, total = m.get("train_images"), m.get("train_images_total")
    if cfg.limit is not None and used and total and used < total:
        held = m.get("validation_images")
        reasons.append(f"trained on {used:,} of {total:,} training images"
                       + (f" ({held:,} of them held out for validation)" if held else ""))
    try:
        recipe_epochs = TrainConfig(model=cfg.model, preset=cfg.preset).resolved().epochs
    except UsageError:
        recipe_epochs = None
    if recipe_epochs and cfg.epochs < recipe_epochs and cfg.budget is None:
        reasons.append(f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} instead of the "
                       f"{cfg.preset} recipe's {recipe_epochs}")
    return reasons


def _curves(group: Group) -> dict:
    epochs = min(len(r.history) for r in group.runs)
    out: dict = {"epoch": list(range(1, epochs + 1))}
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        table = np.array([[h[key] for h in r.history[:epochs]] for r in group.runs], float)
        out[key] = dict(mean=table.mean(0).tolist(), low=table.min(0).tolist(),
                        high=table.max(0).tolist())
    return out


# Accuracies whose time to reach is worth a column; a report shows the highest few reached.
THRESHOLDS = (0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995)
SHOWN_THRESHOLDS = 3


def timeline(run: Run) -> dict:
    """A run's validation accuracy against its cumulative training seconds and images seen, one
    point per history row (an epoch, or a tenth of a budget). Runs made before rows recorded
    ``elapsed`` and ``images`` get them from the rows' seconds and the training set's size."""
    per_epoch = run.metrics.train_images or 0
    elapsed, images, total = [], [], 0.0
    for k, row in enumerate(run.history, 1):
        total += row.get("seconds") or 0.0
        elapsed.append(float(row.get("elapsed", total)))
        images.append(int(row.get("images", k * per_epoch)))
    return dict(seed=run.config.seed, elapsed=elapsed, images=images,
                accuracy=[float(r["val_accuracy"]) for r in run.history])


def reached_at(line: dict, threshold: float) -> tuple[float, int] | None:
    """(training seconds, images seen) at the first point of ``line`` (``timeline``) whose
    validation accuracy is at least ``threshold``; None if it never got there."""
    for seconds, images, accuracy in zip(line["elapsed"], line["images"], line["accuracy"]):
        if accuracy >= threshold:
            return seconds, images
    return None


def time_to_accuracy(entries: list[dict]) -> dict:
    """For the highest SHOWN_THRESHOLDS of THRESHOLDS that some run reached, each group's time to
    reach it: median and range over the seeds that reached it, and how many of its seeds did."""
    best = max((a for g in entries for line in g["timeline"] for a in line["accuracy"]),
               default=0.0)
    chosen = [t for t in THRESHOLDS if t <= best][-SHOWN_THRESHOLDS:]
    table = {}
    for g in entries:
        rows = []
        for t in chosen:
            hits = [h for h in (reached_at(line, t) for line in g["timeline"]) if h is not None]
            seconds = [h[0] for h in hits]
            rows.append(dict(threshold=t, reached=len(hits), of=len(g["timeline"]),
                             median=float(np.median(seconds)) if hits else None,
                             low=min(seconds) if hits else None,
                             high=max(seconds) if hits else None,
                             median_images=int(np.median([h[1] for h in hits])) if hits else None))
        table[g["name"]] = rows
    return dict(thresholds=chosen, groups=table)


def _anytime(group: Group) -> dict | None:
    found = [r.metrics.get("anytime") for r in group.runs]
    if not all(found):
        return None
    table = np.array([a["accuracy"] for a in found], float)
    return dict(steps=found[0]["steps"], of=found[0]["of"], mean=table.mean(0).tolist(),
                low=table.min(0).tolist(), high=table.max(0).tolist())


def _provenance(group: Group) -> dict:
    """Each provenance fact across the group's runs: one value, or the distinct values."""
    keys = ("seqmnist", "torch", "python", "os", "cpu", "gpu", "device", "backend", "precision",
            "threads", "replicas", "started")
    out = {}
    for key in keys:
        values = []
        for r in group.runs:
            v = (r.metrics.provenance or {}).get(key)
            if v is None and key in FIELDS:
                v = r.metrics[key]
            if v not in values:
                values.append(v)
        out[key] = values[0] if len(values) == 1 else values
    return out


def _or_nan(v) -> float:
    return float("nan") if v is None else float(v)


def _group_entry(group: Group, correct: np.ndarray, seed: int) -> dict:
    runs, cfg = group.runs, group.config
    metric = [r.metrics for r in runs]
    classes = metric[0].get("classes") or []
    per_class = {c: summary([_or_nan(m["per_class_accuracy"].get(c)) for m in metric])
                 for c in classes}
    ci_images = stats.bootstrap_mean(correct.mean(axis=0), seed=seed)
    return dict(
        name=group.name, model=cfg.model, view=cfg.view, dataset=cfg.dataset,
        seeds=group.seeds, runs=[str(r.path) for r in runs],
        accuracy=_clipped({**summary([m["test_accuracy"] for m in metric]),
                           "ci_images": list(ci_images)}),
        loss=summary([m["test_loss"] for m in metric]),
        params=metric[0]["params"],
        seconds_per_epoch=summary([m["seconds_per_epoch"] for m in metric]),
        inference_images_per_second=summary([m["inference_images_per_second"] for m in metric]),
        epochs=cfg.epochs, train_images=metric[0].get("train_images"),
        train_images_total=metric[0].get("train_images_total"),
        recipe=dict(preset=cfg.preset, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                    schedule=cfg.schedule, precision=cfg.precision, protocol=cfg.protocol,
                    backend=sorted({r.config.backend for r in runs}), limit=cfg.limit,
                    model_options=cfg.model_options),
        quick=quick_reasons(group), per_class=per_class, curves=_curves(group),
        published=[dict(model=p.model, accuracy=p.accuracy, source=p.source)
                   for p in published(cfg.model, cfg.view, cfg.dataset)],
        anytime=_anytime(group), provenance=_provenance(group),
        budget=cfg.budget, timeline=[timeline(r) for r in runs],
        confusion=np.sum([np.array(m["confusion"]) for m in metric], axis=0).tolist(),
        misclassified=metric[0].get("misclassified", []), classes=classes)


def _clipped(acc: dict) -> dict:
    """An accuracy's intervals kept within [0, 1] (a t interval over two seeds can leave it)."""
    for key in ("ci_seeds", "ci_images"):
        if acc.get(key):
            acc[key] = [min(max(x, 0.0), 1.0) for x in acc[key]]
    return acc


def _flips(ca: np.ndarray, cb: np.ndarray) -> dict:
    """Test images a gets right and b wrong in most seeds (and the reverse), the clearest first."""
    ra, rb = ca.mean(axis=0), cb.mean(axis=0)
    out = {}
    for key, mine, other in (("a_only", ra, rb), ("b_only", rb, ra)):
        idx = np.flatnonzero((mine > 0.5) & (other < 0.5))
        idx = idx[np.argsort(-(mine[idx] - other[idx]), kind="stable")]
        out[key] = dict(count=int(len(idx)), images=[int(i) for i in idx[:FLIPS_KEPT]])
    return out


def _answered(flips: dict, labels: np.ndarray, pa: dict, pb: dict) -> dict:
    """Each listed image's true class and both models' answers with their confidence (the first
    seed pair's runs): [index, true, a's answer, a's confidence, b's answer, b's confidence]."""
    for found in flips.values():
        found["answers"] = [[i, int(labels[i]), int(pa["predictions"][i]),
                             float(pa["probabilities"][i].max()), int(pb["predictions"][i]),
                             float(pb["probabilities"][i].max())] for i in found["images"]]
    return flips


def _pairing_note(pair: dict) -> str:
    """Which seeds the pair's evidence rests on, when not every run of both took part."""
    left = {name: seeds for name, seeds in pair["left_out"].items() if seeds}
    if not left and pair["paired_by"] == "seed":
        return ""
    shown = ", ".join(f"{a} with {b}" if a != b else str(a) for a, b in pair["seed_pairs"])
    word = "seed" if len(pair["seed_pairs"]) == 1 else "seeds"
    text = (f"paired {word} {shown}" if pair["paired_by"] == "seed" else
            f"no seed in common, paired in seed order ({shown})")
    if left:
        text += "; left out: " + ", ".join(
            f"{name} seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}"
            for name, s in left.items())
    return text


def _evidence_caveat(pair: dict, first: str, second: str, groups: dict[str, dict]) -> str:
    """What a pair's sentence cannot claim. One seed pair is two trained models, not two
    recipes; and when the paired runs favour the model whose mean over all its seeds is lower,
    the sentence says so rather than contradict the means table beside it."""
    out = ""
    if pair["pairs"] < 2:
        out = (" That is one pair of runs: it compares these two trained models, not their "
               "recipes (train two or more seeds of each, --seeds, for a claim about them).")
    mean_first = groups[first]["accuracy"]["mean"]
    mean_second = groups[second]["accuracy"]["mean"]
    if mean_second > mean_first and pair["difference"] != 0:
        out += (f" Over all their seeds {second}'s mean is higher ({mean_second:.2%} against "
                f"{mean_first:.2%}): the pairing leaves seeds out.")
    return out


def verdict(groups: list[dict], pairs: dict[tuple[str, str], dict]) -> str:
    """What the evidence supports, in one or two sentences. Each pair's sentence names its
    winner from the pair's own evidence (the paired seeds its interval is computed from), never
    from the ranking by all seeds, so the sentence cannot contradict its interval."""
    if len(groups) == 1:
        g = groups[0]
        acc = g["accuracy"]
        spread = f" (± {acc['std'] * 100:.2f} over {acc['n']} seeds)" if acc["n"] > 1 else \
            " (one seed)"
        return f"{g['name']} reached {acc['mean']:.2%} test accuracy{spread}."
    ranked = sorted(groups, key=lambda g: -g["accuracy"]["mean"])
    by_name = {g["name"]: g for g in groups}
    best = ranked[0]
    sentences = []
    for other in ranked[1:]:
        pair = pairs.get((best["name"], other["name"]))
        if pair is None:
            pair = pairs[(other["name"], best["name"])]
        first, second = pair["a"], pair["b"]
        d, (lo, hi) = pair["difference"], sorted(pair["ci"])
        if d < 0:  # b is ahead on the paired evidence: name it first
            first, second, d, (lo, hi) = second, first, -d, (-hi, -lo)
        n, k = pair["pairs"], pair["rejected"]
        worst_p = max(t["p_holm"] for t in pair["mcnemar"])
        where = "seed pair" if n == 1 else "seed pairs"
        test = (f"McNemar p {_p(max(t['p_holm'] for t in pair['mcnemar'] if t['p_holm'] < 0.05))}"
                f" in {k} of {n} {where}" if k else f"McNemar p ≥ 0.05 in all {n} {where}")
        note = _pairing_note(pair)
        note = f"; {note}" if note else ""
        if pair["significant"]:
            text = (f"{first} is more accurate than {second} by {d:.2f} points (95% CI "
                    f"{lo:.2f} to {hi:.2f}; {test}{note}).")
        else:
            text = (f"No significant difference between {first} and {second} at these "
                    f"settings ({d:+.2f} points, 95% CI {lo:.2f} to {hi:.2f}; {test}"
                    f"{'' if k else f', largest p {worst_p:.2g}'}{note}).")
        sentences.append(text + _evidence_caveat(pair, first, second, by_name))
        if len(sentences) == 3 and len(ranked) > 4:
            sentences.append(f"({len(ranked) - 4} more pairs in the table below.)")
            break
    return " ".join(sentences)


def _p(p: float) -> str:
    for bound in (1e-6, 1e-4, 1e-3):
        if p < bound:
            return f"< {bound:.0e}".replace("e-0", "e-")
    return f"= {p:.2g}"


def checked_predictions(run: Run, labels: np.ndarray | None = None) -> dict:
    """``run``'s per-image test predictions, refused unless they are what the run computed: the
    file is checked on its own (``load_predictions``), its labels against the test set's own
    (``labels``, when known), and the accuracy it implies against the run's metrics.json (a
    prediction file edited to flatter a run disagrees with the accuracy recorded beside it)."""
    preds = load_predictions(run.path, run.num_classes,
                             None if labels is None else len(labels))
    where = run.path / "predictions.npz"
    if labels is not None and not np.array_equal(preds["labels"], labels):
        raise UsageError(f"{where}: its labels are not the {run.config.dataset} test set's: it "
                         "was not made on this test set (or was edited); remove it, and `seqmnist compare "
                         "--runs` computes it again from the weights")
    n = len(preds["labels"])
    right = int((preds["predictions"] == preds["labels"]).sum())
    recorded = run.metrics.get("test_accuracy")
    if recorded is not None and abs(right - recorded * n) > 2:
        raise UsageError(f"{where}: its predictions are {right / n:.2%} correct, but the run's "
                         f"metrics.json says {recorded:.2%}: one of the two was changed; "
                         "`seqmnist evaluate` shows what the weights score; retrain the run "
                         "to have both again")
    return preds


def check_same_order(a: Run, b: Run) -> None:
    """Two runs of the permuted view are paired only when they read the pixels in one order."""
    if a.config.view == b.config.view == "permuted" and \
            a.config.order_seed != b.config.order_seed:
        raise UsageError(f"{a.path} reads the pixels in order {a.config.order_seed} and {b.path} "
                         f"in order {b.config.order_seed}: runs that read different orders are "
                         "different tasks and are never paired (train them with one "
                         "--permutation)")


def pair_seeds(a: Group, b: Group) -> tuple[list[int], list[int], str]:
    """Which runs of two groups are compared with each other: the runs of the seeds both groups
    have (seed s with seed s), else, with no seed in common, the runs in seed order. Returns the
    run indices of a, of b, and how they were paired."""
    common = sorted(set(a.seeds) & set(b.seeds))
    if common:
        return [a.seeds.index(s) for s in common], [b.seeds.index(s) for s in common], "seed"
    n = min(len(a.runs), len(b.runs))
    return list(range(n)), list(range(n)), "order"


def analyse(runs: list[Run], seed: int = 0, labels: np.ndarray | None = None) -> dict:
    """Group ``runs`` and compute every number the report shows (see the module docstring).
    ``labels``: the test set's labels, against which every run's predictions are checked."""
    if not runs:
        raise UsageError("nothing to compare")
    datasets = sorted({r.config.dataset for r in runs})
    if len(datasets) > 1:
        raise UsageError(f"runs to compare must all use the same dataset, got {', '.join(datasets)}")
    groups = group_runs(runs)
    preds = {id(r): checked_predictions(r, labels) for r in runs}
    labels = preds[id(runs[0])]["labels"]
    for r in runs:
        if not np.array_equal(preds[id(r)]["labels"], labels):
            raise UsageError(f"{r.path} was evaluated on other test images than {runs[0].path}; "
                             "paired comparisons need the same test set")
    correct = {g.name: np.stack([preds[id(r)]["predictions"] == labels for r in g.runs])
               for g in groups}
    entries = [_group_entry(g, correct[g.name], seed) for g in groups]
    pairs = {}
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            ia, ib, how = pair_seeds(a, b)
            for x, y in zip(ia, ib):
                check_same_order(a.runs[x], b.runs[y])
            result = stats.compare_pair(correct[a.name][ia], correct[b.name][ib], seed=seed)
            result.update(a=a.name, b=b.name, paired_by=how,
                          seed_pairs=[[a.seeds[x], b.seeds[y]] for x, y in zip(ia, ib)],
                          left_out={a.name: [s for k, s in enumerate(a.seeds) if k not in ia],
                                    b.name: [s for k, s in enumerate(b.seeds) if k not in ib]},
                          flips=_answered(_flips(correct[a.name], correct[b.name]), labels,
                                          preds[id(a.runs[ia[0]])], preds[id(b.runs[ib[0]])]))
            pairs[(a.name, b.name)] = result
    quick = {g["name"]: g["quick"] for g in entries if g["quick"]}
    # said wherever the verdict is (terminal, notebook, report): a quick look is not a result
    caveat = ("Quick run, not a result (" + "; ".join(f"{name}: {', '.join(r)}"
                                                      for name, r in quick.items()) + "):"
              ) if quick else None
    return dict(
        dataset=datasets[0], test_images=int(len(labels)), groups=entries,
        pairs=list(pairs.values()), verdict=verdict(entries, pairs), quick=quick, caveat=caveat,
        time_to_accuracy=time_to_accuracy(entries),
        methods=METHODS.format(resamples=stats.BOOTSTRAP_RESAMPLES, seed=seed))


METHODS = (
    "Each model's accuracy is the mean over its seeds ± the sample standard deviation, with a 95% "
    "Student t interval across seeds (two or more seeds) and a 95% bootstrap interval over test "
    "images (BCa, {resamples} resamples, generator seed {seed}). For each pair of models, the "
    "difference is the mean over seed pairs (seed i of one with seed i of the other) with a 95% t "
    "interval across seed pairs, or with one seed the bootstrap interval over test images; "
    "seed pairs are the runs of the seeds both models have (when they share none, the runs in "
    "seed order), and a model's other seeds count in its own mean but not in the pair; "
    "McNemar's exact test compares the two models' per-image correctness on the same test images "
    "in each seed pair, with Holm's correction across the seed pairs. A difference is called "
    "significant when its interval excludes zero and most seed pairs reject equality at 0.05 "
    "after the correction.")
