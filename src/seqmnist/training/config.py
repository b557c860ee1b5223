"""Run configuration: one dataclass, written to ``config.json`` and stored in every checkpoint.

One rule fills the recipe, in ``TrainConfig.resolved``: a value given explicitly wins; else the
preset's value for the model; else the model's own default (from the model registry); else the
tutorial's recipe. ``None`` in a field means "not given".
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace

from ..core.errors import UsageError
from ..core.units import MAX_SECONDS, parse_duration
from ..data.datasets import get_spec
from ..data.views import get_view
from ..kernels.backends import BACKENDS
from ..models.checks import check_options
from ..models.registry import check_view, get_entry, list_models

PRECISIONS = ("auto", "fp32", "bf16")
# The permuted view's pixel order: views.permutation(pixels, DEFAULT_PERMUTATION) for every run,
# seed and model unless --permutation says another; LEGACY_PERMUTATION: each run's own seed.
DEFAULT_PERMUTATION = 0
LEGACY_PERMUTATION = -1
SCHEDULES = ("constant", "onecycle")
DEVICES = ("auto", "cpu", "cuda")
PROTOCOLS = ("tutorial", "research")
PROTOCOL_HELP = {
    "tutorial": "validate on the test set after every epoch, as the Keras tutorial does",
    "research": "hold out the last training images for validation, stop early on it, and "
                "evaluate the test set once at the end",
}
# The tutorial's recipe for the values no preset or model sets (Keras: batch 64, 10 epochs).
TUTORIAL_RECIPE = dict(epochs=10, batch_size=64, schedule="constant", protocol="tutorial")
PRESET_FIELDS = ("view", "epochs", "batch_size", "lr", "schedule", "protocol")  # presets fill

# Presets change how we train, never the architecture. "tutorial" is the Keras recipe as written;
# every other preset's recipe for a model is in that model's registry entry (``presets``), so a
# model brings its own fast recipe. A model without one trains with the tutorial's. A task's
# preset (pmnist) exists only for the models that registered a recipe for it.
PRESETS = ("tutorial", "fast", "pmnist")
EVERY_MODEL_PRESETS = ("tutorial", "fast")
# How or where a run is computed, not what is trained: runs that differ only in these (and in
# their seed) are seeds of one recipe. AUTO_FIELDS are chosen at training time when "auto".
RUNTIME_FIELDS = ("data_dir", "threads", "replicas", "device", "deterministic", "backend")
AUTO_FIELDS = ("precision", "backend", "device")
PRESET_HELP = {"tutorial": "the Keras recipe as written",
               "fast": "same architecture, larger batches and a one-cycle schedule",
               "pmnist": "permuted MNIST within 2 hours on 2 CPU cores, research protocol "
                         "(tcn; README)"}


@dataclass
class TrainConfig:
    """Everything that defines a training run. ``None`` fields are filled by ``resolved()``."""

    model: str = "lstm"
    dataset: str = "mnist"
    view: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    # the permuted view's pixel order, part of the task: the same for every seed (None: the
    # default, DEFAULT_PERMUTATION); -1: drawn from each run's seed, as runs made before the
    # order was fixed were read. Ignored (None) for every other view.
    permutation: int | None = None
    limit: int | None = None
    # seconds of training (not counting validation) instead of a number of epochs: the learning
    # rate follows the schedule over time, validation comes after each tenth (BUDGET_ROUNDS)
    budget: float | None = None
    device: str = "auto"
    preset: str = "tutorial"
    schedule: str | None = None
    precision: str = "auto"  # bf16 autocast for CNNs where the hardware has bf16, else fp32
    backend: str = "auto"  # auto, torch or native (see backends.py); the resolved one is stored
    protocol: str | None = None  # tutorial or research: see PROTOCOL_HELP, validation_size()
    patience: int = 5  # research protocol: epochs without a better validation accuracy
    # research protocol: training images held out for validation (None: validation_size's rule)
    validation_images: int | None = None
    adam_eps: float = 1e-7  # Keras's default (PyTorch's is 1e-8)
    eval_batch_size: int = 1000
    deterministic: bool = False
    threads: int | None = None
    replicas: int | None = None  # data-parallel model copies on CPU; None: one per core for RNNs
    data_dir: str | None = None  # where the dataset files were given, if not found by search
    model_options: dict = field(default_factory=dict)

    @property
    def order_seed(self) -> int:
        """The seed of the permuted view's pixel order (``views.permutation(n, order_seed)``):
        the run's permutation, or for a run whose order was drawn from its seed (-1), its seed."""
        return self.seed if self.permutation in (None, LEGACY_PERMUTATION) else self.permutation

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def recipe(self) -> dict:
        """What is trained: every field but the seed and the runtime ones (``RUNTIME_FIELDS``).
        Seeds of one recipe are the runs of equal ``recipe()`` (analysis groups them so)."""
        return {k: v for k, v in asdict(self).items() if k != "seed" and k not in RUNTIME_FIELDS}

    def runtime(self) -> dict:
        """How and where the run is computed (``RUNTIME_FIELDS``)."""
        return {k: getattr(self, k) for k in RUNTIME_FIELDS}

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """A config from stored JSON, checking every known field's type (UsageError if not)."""
        if not isinstance(data, dict):
            raise UsageError(f"a run configuration must be a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name, value in values.items():
            _check_type(name, value, known[name].type)
        if data.get("view") == "permuted" and "permutation" not in data:
            values["permutation"] = LEGACY_PERMUTATION  # written before the order was fixed
        return cls(**values)

    def resolved(self) -> TrainConfig:
        """Fill the recipe (explicit > preset > model default > tutorial) and check every value
        (its type, then its range: the same rules as the command line's); raises UsageError."""
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type, "setting")
        entry = get_entry(self.model)
        if self.preset not in PRESETS:
            raise UsageError(f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        if self.preset not in EVERY_MODEL_PRESETS and self.preset not in entry.presets:
            having = [m for m in list_models() if self.preset in get_entry(m).presets]
            raise UsageError(f"model {self.model!r} has no {self.preset!r} recipe; models with "
                             f"one: {', '.join(having) or 'none'}")
        preset = entry.presets.get(self.preset, {})
        filled = {}
        for name in PRESET_FIELDS:
            value = getattr(self, name)
            if value is None:
                value = preset.get(name, entry.defaults.get(name, TUTORIAL_RECIPE.get(name)))
            filled[name] = value
        cfg = replace(self, **filled)
        get_view(cfg.view)
        check_view(cfg.model, cfg.view)
        for name in PRESET_FIELDS[1:]:  # a preset or model default of the wrong type, too
            _check_type(name, getattr(cfg, name), "float" if name == "lr" else
                        "int" if name in ("epochs", "batch_size") else "str", "setting")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(cfg, name) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, "
                                 f"got {getattr(cfg, name)}")
        if cfg.budget is not None and not 0 < cfg.budget <= MAX_SECONDS:
            raise UsageError(f"budget must be more than 0 s and at most 30 days, got "
                             f"{cfg.budget} s")
        if cfg.validation_images is not None and cfg.validation_images < 1:
            raise UsageError(f"validation-images must be at least 1, got {cfg.validation_images}")
        if cfg.limit is not None and cfg.limit < 1:
            raise UsageError(f"limit must be at least 1, got {cfg.limit}")
        if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
            raise UsageError(f"learning rate must be a positive number, got {cfg.lr}")
        if not (cfg.adam_eps > 0 and math.isfinite(cfg.adam_eps)):
            raise UsageError(f"adam_eps must be a positive number, got {cfg.adam_eps}")
        if cfg.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {cfg.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if cfg.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {cfg.precision!r}; choose from "
                             f"{', '.join(PRECISIONS)}")
        if cfg.protocol not in PROTOCOLS:
            raise UsageError(f"unknown protocol {cfg.protocol!r}; choose from "
                             f"{', '.join(PROTOCOLS)}")
        if not 1 <= cfg.patience <= 1000:
            raise UsageError(f"patience must be from 1 to 1000, got {cfg.patience}")
        if cfg.backend not in BACKENDS:
            raise UsageError(f"unknown backend {cfg.backend!r}; choose from {', '.join(BACKENDS)}")
        if cfg.device not in DEVICES and not cfg.device.startswith("cuda:"):
            raise UsageError(f"unknown device {cfg.device!r}; choose auto, cpu or cuda")
        for name in ("threads", "replicas"):
            if getattr(cfg, name) is not None and not 1 <= getattr(cfg, name) <= 1024:
                raise UsageError(f"{name} must be from 1 to 1024, got {getattr(cfg, name)}")
        if not 0 <= cfg.seed < 2**63:
            raise UsageError(f"seed must be in 0..2**63-1, got {cfg.seed}")
        if cfg.view != "permuted":
            cfg = replace(cfg, permutation=None)  # only the permuted view has a pixel order
        elif cfg.permutation is None:
            cfg = replace(cfg, permutation=DEFAULT_PERMUTATION)
        elif not LEGACY_PERMUTATION <= cfg.permutation < 2**63:
            raise UsageError(f"permutation must be a whole number from 0 (or -1: each seed's "
                             f"own order, as before it was fixed), got {cfg.permutation}")
        spec = get_spec(cfg.dataset)  # the model's options, checked for this dataset's images
        check_options(cfg.model, get_view(cfg.view).shape(*spec.image_shape), len(spec.classes),
                      cfg.model_options)
        return cfg


_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "dict": (dict,)}
_WORDS = {"str": "a string", "int": "a whole number", "float": "a number",
          "bool": "true or false", "dict": "a table", "None": "left out"}


def _check_type(name: str, value, annotation: str, what: str = "config field") -> None:
    """Check a value against the field's annotation ("int | None", "str", ...): 1.5 is not an
    int, "1" is not a number, and true is not a number either."""
    parts = [p.strip() for p in str(annotation).split("|")]
    if value is None and "None" in parts:
        return
    allowed = tuple(t for p in parts for t in _TYPES.get(p, ()))
    ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
    if isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        want = " or ".join(_WORDS.get(p, p) for p in parts if p != "None")
        raise UsageError(f"{what} {name!r} must be {want}, got {str(value)[:40]!r}")


def validation_size(train_images: int, asked: int | None = None) -> int:
    """Images the research protocol holds out from the end of the training set: ``asked``
    (``--validation-images``), else the last 5,000 (as the sequential-MNIST papers do) when there
    are at least 20,000, else the last tenth."""
    if asked is not None:
        return asked
    return 5000 if train_images >= 20000 else max(1, train_images // 10)


def config_from_args(model: str, **kwargs) -> TrainConfig:
    """A TrainConfig from keyword arguments, ignoring ``None`` (the CLI's unset options); a
    budget may be written as people write durations (``"10m"``)."""
    if kwargs.get("budget") is not None:
        kwargs["budget"] = parse_duration(kwargs["budget"])
    return replace(TrainConfig(model=model), **{k: v for k, v in kwargs.items() if v is not None})
