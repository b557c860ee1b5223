"""The run record, defined once: provenance.json and metrics.json.

A run folder says three things about its run: what it is (config.json: ``TrainConfig``, whose
``recipe()`` and ``runtime()`` split it into what was trained and how or where it was computed),
where and how it was made (provenance.json: ``Provenance`` here), and what came out
(metrics.json: ``RunMetrics`` here). The recorder writes ``RunMetrics(...).to_dict()``; loading
a run checks the file with the same fields (``RunMetrics.from_dict``): every field's type from
its annotation, the tables (confusion, per-class accuracy, misclassified images, anytime
accuracy) against the model's class count. ``version`` says which definition wrote a file; files
written before it existed (no version) load as version 1, their missing fields as None.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from ..core.errors import CheckpointError

VERSION = 2
MAX_SIDE = 4096  # no image seqmnist reads comes near this


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _count(v) -> bool:
    return type(v) is int


def _number_or_none(v) -> bool:
    return v is None or (_number(v) and math.isfinite(v))


@dataclass
class RunMetrics:
    """What a finished run measured. Fields a reader needs to compare runs are ``required``
    (``compare`` refuses a run without them); the others may be None in older runs."""

    model: str
    dataset: str
    view: str
    test_accuracy: float
    test_loss: float
    params: int
    train_seconds: float
    epochs: int
    seconds_per_epoch: float
    inference_images_per_second: float
    per_class_accuracy: dict  # class name -> accuracy (None for a class absent from the test set)
    classes: list  # class names, in class order
    image_shape: list  # [height, width]
    confusion: list  # classes x classes counts, rows the true class
    misclassified: list  # [test index, true, predicted, confidence], most confident first
    train_images: int
    train_images_total: int | None
    test_images: int
    backend: str
    precision: str
    protocol: str
    validation_images: int | None  # research protocol: training images held out
    best_epoch: int | None  # research protocol: the epoch whose weights were kept
    anytime: dict | None  # {"steps", "accuracy", "of"}: accuracy after reading k steps
    images_seen: int | None = None  # training images seen in all (a budget run: in its budget)
    provenance: dict = field(default_factory=dict)  # provenance.json as it was when finished
    version: int = VERSION
    extra: dict = field(default_factory=dict)  # keys of the file this definition does not name

    REQUIRED = ("test_accuracy", "test_loss", "params", "seconds_per_epoch",
                "inference_images_per_second", "per_class_accuracy", "classes", "confusion")

    def to_dict(self) -> dict:
        out = asdict(self)
        return {**out.pop("extra"), **out}

    # Read by name as well as by attribute (``run.metrics["test_accuracy"]``, as before the
    # record was typed), but only a field's name: a misspelt one is a KeyError, not a None.
    def __getitem__(self, name: str):
        if name in FIELDS:
            return getattr(self, name)
        if name in self.extra:
            return self.extra[name]
        raise KeyError(f"a run's metrics have no field {name!r} (fields: {', '.join(FIELDS)})")

    def get(self, name: str, default=None):
        value = self[name]
        return default if value is None else value

    def __iter__(self):
        return iter(self.to_dict())

    def __contains__(self, name: str) -> bool:
        return (name in FIELDS and getattr(self, name) is not None) or name in self.extra

    @classmethod
    def from_dict(cls, data, num_classes: int, where: str = "metrics.json") -> RunMetrics:
        """``data`` checked field by field with this definition: the record (missing fields of
        an older run as None, keys it does not name in ``extra``), or a CheckpointError naming
        the field."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{where}: not a JSON object")
        version = data.get("version", 1)
        if not _count(version) or version < 1:
            raise CheckpointError(f"{where}: version must be a whole number, got {version!r}")
        if version > VERSION:
            raise CheckpointError(f"{where}: written by a newer seqmnist (record version "
                                  f"{version}; this one reads up to {VERSION}): upgrade seqmnist")
        out = {name: data.get(name) for name in FIELDS} | {"version": version}
        out["provenance"] = data.get("provenance", {})
        for f in fields(cls):
            if f.name == "extra":
                continue
            problem = _problem(f.name, str(f.type), out[f.name], num_classes)
            if problem:
                raise CheckpointError(f"{where}: {problem}")
        return cls(**out, extra={k: v for k, v in data.items() if k not in out})


FIELDS = tuple(f.name for f in fields(RunMetrics) if f.name != "extra")


CHECKS = {  # a field's own check, where its type alone does not say enough
    "classes": lambda v, n: None if isinstance(v, list) and len(v) == n and all(
        isinstance(c, str) for c in v) else f"classes must be {n} names",
    "image_shape": lambda v, n: None if isinstance(v, list) and len(v) == 2 and all(
        _count(d) and 1 <= d <= MAX_SIDE for d in v) else "image_shape must be [height, width]",
    "confusion": lambda v, n: None if isinstance(v, list) and len(v) == n and all(
        isinstance(r, list) and len(r) == n and all(_count(c) and c >= 0 for c in r)
        for r in v) else f"confusion must be {n} x {n} counts",
    "per_class_accuracy": lambda v, n: None if isinstance(v, dict) and all(
        isinstance(k, str) and _number_or_none(a) for k, a in v.items())
        else "per_class_accuracy must map class names to numbers",
    "misclassified": lambda v, n: None if isinstance(v, list) and all(
        isinstance(w, list) and len(w) == 4 and all(_count(c) for c in w[:3]) and w[0] >= 0
        and 0 <= w[1] < n and 0 <= w[2] < n and _number(w[3]) for w in v)
        else "misclassified must be [index, true, predicted, confidence] rows",
    "anytime": lambda v, n: None if isinstance(v, dict) and isinstance(v.get("steps"), list)
        and isinstance(v.get("accuracy"), list) and len(v["steps"]) == len(v["accuracy"]) > 0
        and all(_count(s) for s in v["steps"]) and all(_number(a) for a in v["accuracy"])
        and _count(v.get("of")) else "anytime must hold steps, accuracy and of",
    "provenance": lambda v, n: _provenance_problem(v),
}
KINDS = {"str": (lambda v: isinstance(v, str), "text"), "int": (_count, "a whole number"),
         "float": (_number, "a number"), "dict": (lambda v: isinstance(v, dict), "a table"),
         "list": (lambda v: isinstance(v, list), "a list")}


def _provenance_problem(value) -> str | None:
    if not isinstance(value, dict):
        return "provenance must be a JSON object"
    try:
        Provenance.check(value, "provenance")
    except CheckpointError as exc:
        return str(exc)
    return None


def _problem(name: str, annotation: str, value, n: int) -> str | None:
    if value is None:  # absent in an older run, or undefined (NaN is written as null)
        return None
    if name in CHECKS:
        return CHECKS[name](value, n)
    kind = annotation.split("|")[0].strip()
    ok, word = KINDS[kind]
    return None if ok(value) else f"{name} must be {word}"


@dataclass
class Provenance:
    """Where and how a run was made. ``environment`` (the machine and software, from
    system.environment) and ``facts`` (a sweep's Ray node, an import's source file, how seeds
    were trained together) are written flat beside the fields; ``resumed`` gains an entry per
    resume."""

    started: str
    device: str
    backend: str
    precision: str
    threads: int
    replicas: int
    train_images: int | None  # None for an imported model
    train_images_total: int | None
    test_images: int
    data_source: str
    recipe: dict | None  # the config trained with (None for an imported model)
    resumed: list = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    facts: dict = field(default_factory=dict)
    version: int = VERSION

    FLAT = ("environment", "facts")

    def to_dict(self) -> dict:
        fixed = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.FLAT}
        return {**self.environment, **fixed, **self.facts}

    @classmethod
    def check(cls, data, where: str = "provenance.json") -> dict:
        """``data`` checked against the fields it has (older runs lack some): the dict, or a
        CheckpointError naming the field."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{where}: not a JSON object")
        for f in fields(cls):
            if f.name in cls.FLAT or data.get(f.name) is None:
                continue
            kind = str(f.type).split("|")[0].strip()
            ok, word = KINDS[kind]
            if not ok(data[f.name]):
                raise CheckpointError(f"{where}: {f.name} must be {word}")
        return data
