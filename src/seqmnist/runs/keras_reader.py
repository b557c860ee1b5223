"""Reading a Keras model file that may come from a stranger: h5py and zipfile only, nothing from
the file executed, and nothing in it able to make seqmnist open another file or allocate what the
model does not need.

``read_keras(path)`` reads a regular file (never a pipe or device) once into memory and parses it
from there: legacy HDF5 (``.h5``) or a Keras 3 archive (``.keras``: ``config.json`` and
``model.weights.h5`` in a zip). The configuration is checked first, and the exact shape of every
weight is worked out from it (``weight_plan``); each weight's header is then checked against that
shape, its dtype and its storage (no external storage, external or soft links, virtual datasets
or HDF5 plugin filters) before its data is read, and NaN or infinite weights are refused.
``keras_import`` maps what it returns onto a registered model.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core.errors import UsageError
from ..core.fileio import read_regular_file

# What a Keras file may hold. Every size is checked from a header before the bytes are read.
MAX_FILE = 512 << 20  # bytes of a .h5 or .keras file on disk
MAX_CONFIG = 4 << 20  # bytes of config.json / metadata.json / the model_config attribute
MAX_UNITS = 4096  # units, filters, dense width: seqmnist's CLI allows no more
MAX_KERNEL = 27
MAX_PARAMS = 50_000_000  # 200 MB of float32: far above any model seqmnist trains
RECURRENT = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "rnn"}
GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}
LAYERS = (*RECURRENT, "Dropout", "Dense", "Conv2D", "MaxPooling2D", "Flatten")
# HDF5 filters h5py applies itself; any other would make HDF5 look for a plugin library on disk.
SAFE_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 32000: "lzf"}
SUPPORTED = ("InputLayer, LSTM / GRU / SimpleRNN (+ Dropout) + Dense(softmax), or "
             "Conv2D('same', relu) + MaxPooling2D(2, 'same') + Flatten + Dense(relu) + Dropout + "
             "Dense(softmax)")


class KerasImportError(UsageError):
    """A file that is not a Keras model seqmnist can map (exit code 2)."""


@dataclass
class KerasModel:
    """What a Keras file holds: its layers (class name, config, weight arrays) and facts."""

    source: Path
    format: str  # "h5" or "keras"
    keras_version: str | None
    layers: list[tuple[str, dict, list[np.ndarray]]] = field(default_factory=list)
    input_shape: tuple[int, ...] = ()
    sha256: str = ""  # of the bytes that were read


def _layer_name(cfg) -> str:
    return repr(cfg.get("name", "?")) if isinstance(cfg, dict) else "'?'"


def _layer_configs(config) -> list[dict]:
    """The Sequential model's layers, each {"class_name": str, "config": dict}; anything else in
    the file's configuration is refused here, before any weight is looked at."""
    if not isinstance(config, dict) or config.get("class_name") not in ("Sequential",):
        kind = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise KerasImportError(f"a {str(kind)[:40]} model: seqmnist imports Sequential models "
                               f"({SUPPORTED})")
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list) or not layers:
        raise KerasImportError("the model configuration lists no layers")
    if len(layers) > 64:
        raise KerasImportError(f"the model has {len(layers)} layers; seqmnist's models have far "
                               "fewer")
    for layer in layers:
        if not isinstance(layer, dict) or not isinstance(layer.get("class_name"), str) \
                or not isinstance(layer.get("config", {}), dict):
            raise KerasImportError("the model configuration is malformed (a layer must be an "
                                   "object with a class_name and a config object)")
        if layer["class_name"] == "Lambda" or '"function"' in json.dumps(layer.get("config", {})):
            raise KerasImportError(f"layer {_layer_name(layer.get('config'))} holds Python code "
                                   "(a Lambda layer or a custom function): refused, nothing from "
                                   "the file was run")
    return [dict(layer, config=layer.get("config", {})) for layer in layers]


def _input_shape(layers: list[dict]) -> tuple[int, ...]:
    for layer in layers:
        cfg = layer["config"]
        build = layer.get("build_config")
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape") \
            or (build.get("input_shape") if isinstance(build, dict) else None)
        if shape:
            if not isinstance(shape, list) or not 2 <= len(shape) <= 4 or not all(
                    type(d) is int and 1 <= d <= 4096 for d in shape[1:]):
                raise KerasImportError(f"the model's input shape {str(shape)[:80]} is not the "
                                       "shape of an image or a sequence")
            return tuple(shape[1:])
    raise KerasImportError("the model does not say its input shape")


def _whole(cfg: dict, key: str, low: int, high: int, default=None) -> int:
    """A layer's integer setting, checked: a whole number in [low, high]."""
    value = cfg.get(key, default)
    if isinstance(value, list) and len(value) in (1, 2) and len(set(map(repr, value))) == 1:
        value = value[0]  # kernel_size [5, 5], pool_size [2, 2]
    if type(value) is not int or not low <= value <= high:
        raise KerasImportError(f"layer {_layer_name(cfg)}: {key} must be a whole number from "
                               f"{low} to {high:,}, got {str(value)[:40]}")
    return value


def _rate(cfg: dict) -> float:
    value = cfg.get("rate", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise KerasImportError(f"layer {_layer_name(cfg)}: rate must be a number in [0, 1), got "
                               f"{str(value)[:40]}")
    return float(value)


def _out_side(side: int, k: int, stride: int, padding) -> int:
    if padding == "same":
        return -(-side // stride)
    if padding == "valid" and side >= k:
        return (side - k) // stride + 1
    raise KerasImportError(f"padding {str(padding)[:20]!r} over {side} pixels with a kernel of {k}")


def weight_plan(layers: list[dict], input_shape: tuple[int, ...]) -> list[list[tuple[int, ...]]]:
    """The exact shape (in Keras's layout) of every weight each layer must hold, worked out from
    the configuration alone, so that no weight is read before its size is known. Every setting
    the shapes depend on is checked; a layer seqmnist cannot map is refused here."""
    shape, plan, total = tuple(input_shape), [], 0
    for layer in layers:
        kind, cfg = layer["class_name"], layer["config"]
        bias = cfg.get("use_bias", True) is not False
        if kind == "InputLayer" or kind == "Dropout":
            if kind == "Dropout":
                _rate(cfg)
            plan.append([])
            continue
        if kind not in LAYERS:
            raise _unsupported(kind, cfg)
        if kind in RECURRENT:
            if len(shape) != 2:
                raise _unsupported(kind, cfg, f"reads (steps, features), gets {list(shape)}")
            units, gates = _whole(cfg, "units", 1, MAX_UNITS), GATES[kind]
            bias_shape = (2, gates * units) if kind == "GRU" and cfg.get("reset_after", True) \
                else (gates * units,)
            plan.append([(shape[1], gates * units), (units, gates * units)]
                        + ([bias_shape] if bias else []))
            shape = (shape[0], units) if cfg.get("return_sequences", False) is True else (units,)
        elif kind == "Dense":
            units = _whole(cfg, "units", 1, MAX_UNITS)
            plan.append([(shape[-1], units)] + ([(units,)] if bias else []))
            shape = (*shape[:-1], units)
        elif kind == "Flatten":
            plan.append([])
            shape = (math.prod(shape),)
        else:  # Conv2D or MaxPooling2D, channels last
            if len(shape) != 3:
                raise _unsupported(kind, cfg, f"reads (height, width, channels), gets {list(shape)}")
            if kind == "Conv2D":
                k, filters = _whole(cfg, "kernel_size", 1, MAX_KERNEL), \
                    _whole(cfg, "filters", 1, MAX_UNITS)
                stride = _whole(cfg, "strides", 1, MAX_KERNEL, default=1)
                plan.append([(k, k, shape[2], filters)] + ([(filters,)] if bias else []))
            else:
                k = _whole(cfg, "pool_size", 1, MAX_KERNEL, default=2)
                stride = _whole(cfg, "strides", 1, MAX_KERNEL, default=k) \
                    if cfg.get("strides") is not None else k
                filters = shape[2]
                plan.append([])
            shape = (_out_side(shape[0], k, stride, cfg.get("padding", "valid")),
                     _out_side(shape[1], k, stride, cfg.get("padding", "valid")), filters)
        total += sum(math.prod(s) for s in plan[-1])
        if total > MAX_PARAMS:
            raise KerasImportError(f"the model declares over {MAX_PARAMS:,} parameters (at layer "
                                   f"{_layer_name(cfg)}); seqmnist imports models far smaller")
    return plan


def _version(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if value is not None and not (isinstance(value, str) and len(value) <= 64):
        raise KerasImportError(f"keras_version must be a short string, got {str(value)[:40]}")
    return value


def _json(data, what: str):
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    if not isinstance(data, str) or len(data) > MAX_CONFIG:
        raise KerasImportError(f"{what} is not a JSON text of at most {MAX_CONFIG:,} bytes")
    try:
        return json.loads(data)
    except RecursionError:
        raise KerasImportError(f"{what} is nested too deeply") from None


def _node(root, path: str):
    """The object at ``path`` in an open HDF5 file, or None; every link on the way must be a
    plain (hard) link: a soft or external link is refused, never followed."""
    import h5py

    node = root
    for part in path.split("/"):
        if not isinstance(node, h5py.Group) or part not in node:
            return None
        link = node.get(part, getlink=True)
        if not isinstance(link, h5py.HardLink):
            kind = "an external link to another file" if isinstance(link, h5py.ExternalLink) \
                else "a soft link"
            raise KerasImportError(f"{node.name.rstrip('/')}/{part} is {kind}: refused (a model "
                                   "file's weights must be in the file itself)")
        node = node[part]
    return node


def _read_weight(ds, want: tuple[int, ...], where: str) -> np.ndarray:
    """A weight dataset's values, after checking (from its header alone) that it is stored in
    the file itself, is plain floating point and has exactly the shape the layer needs."""
    import h5py

    if not isinstance(ds, h5py.Dataset):
        raise KerasImportError(f"{where}: not a dataset")
    plist = ds.id.get_create_plist()
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        raise KerasImportError(f"{where} is a virtual dataset made of other files: refused")
    if plist.get_external_count():
        raise KerasImportError(f"{where} keeps its data in an external file: refused (a model "
                               "file's weights must be in the file itself)")
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in SAFE_FILTERS:
            raise KerasImportError(f"{where} is compressed with HDF5 filter {code}; seqmnist reads "
                                   f"only {', '.join(SAFE_FILTERS.values())}")
    if ds.dtype.kind != "f" or ds.dtype.itemsize not in (2, 4, 8) or ds.dtype.fields:
        raise KerasImportError(f"{where}: weights must be floating point, got dtype {ds.dtype}")
    if tuple(ds.shape) != tuple(want):
        raise KerasImportError(f"{where}: holds {tuple(ds.shape)}, the layer needs {tuple(want)}")
    array = np.asarray(ds[()], dtype=np.float32)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise KerasImportError(f"{where}: {bad:,} weights are NaN or infinite: refused (the model "
                               "would answer nothing)")
    return array


def _read_layer_weights(where: str, names: list[str], holder, want: list[tuple], layer) -> list:
    if len(names) != len(want):
        raise KerasImportError(f"layer {_layer_name(layer['config'])} ({layer['class_name']}) "
                               f"holds {len(names)} weights, it needs {len(want)}")
    out = []
    for name, shape in zip(names, want):
        ds = _node(holder, name)
        if ds is None:
            raise KerasImportError(f"{where}/{name}: missing")
        out.append(_read_weight(ds, shape, f"{where}/{name}"))
    return out


def _read_h5(path: Path, data: bytes) -> KerasModel:
    import h5py

    with h5py.File(io.BytesIO(data), "r") as f:
        if "model_config" not in f.attrs or "model_weights" not in f:
            raise KerasImportError(f"{path}: an HDF5 file, but not a saved Keras model (no "
                                   "model_config / model_weights); weights-only files are not "
                                   "enough to know the architecture")
        layers = _layer_configs(_json(f.attrs["model_config"], "model_config"))
        shape = _input_shape(layers)
        plan = weight_plan(layers, shape)
        weights = _node(f, "model_weights")
        out = KerasModel(path, "h5", _version(f.attrs.get("keras_version")), input_shape=shape)
        for layer, want in zip(layers, plan):
            name = layer["config"].get("name")
            group = _node(weights, name) if isinstance(name, str) and name and "/" not in name \
                else None
            names = []
            if group is not None:
                raw = group.attrs.get("weight_names", [])
                if not (isinstance(raw, (list, np.ndarray)) and len(raw) <= 8):
                    raise KerasImportError(f"{path}: layer {name!r} lists its weights oddly")
                names = [w.decode() if isinstance(w, bytes) else str(w) for w in raw]
            arrays = _read_layer_weights(f"model_weights/{name}", names, group, want, layer) \
                if want or names else []
            out.layers.append((layer["class_name"], layer["config"], arrays))
    return out


def _member(z: zipfile.ZipFile, name: str, cap: int) -> bytes:
    """A zip member's bytes, at most ``cap`` of them: the size its header declares is checked
    first, and the read stops one byte past the cap whatever the header said."""
    info = z.getinfo(name)
    if info.file_size > cap:
        raise KerasImportError(f"{name} inflates to {info.file_size:,} bytes; the model needs at "
                               f"most {cap:,}: refused")
    try:
        with z.open(info) as fh:
            data = fh.read(cap + 1)
    except RuntimeError as exc:  # an encrypted member
        raise KerasImportError(f"{name}: cannot be read ({exc})") from None
    except NotImplementedError as exc:  # a compression method zipfile does not know
        raise KerasImportError(f"{name}: {exc}") from None
    if len(data) > cap:
        raise KerasImportError(f"{name} inflates to more than {cap:,} bytes: refused")
    return data


def _read_keras(path: Path, data: bytes) -> KerasModel:
    import h5py

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        if "config.json" not in names or "model.weights.h5" not in names:
            raise KerasImportError(f"{path}: a zip archive, but not a Keras 3 model (needs "
                                   "config.json and model.weights.h5)")
        config = _json(_member(z, "config.json", MAX_CONFIG), "config.json")
        meta = _json(_member(z, "metadata.json", MAX_CONFIG), "metadata.json") \
            if "metadata.json" in names else {}
        layers = _layer_configs(config)
        shape = _input_shape(layers)
        plan = weight_plan(layers, shape)
        # the weights and an optimizer's slots for each (Adam: two), in float64 at most, plus
        # HDF5's own headers
        cap = 32 * sum(math.prod(s) for want in plan for s in want) + (1 << 20) + 4096 * len(layers)
        blob = _member(z, "model.weights.h5", cap)
    version = _version(meta.get("keras_version") if isinstance(meta, dict) else None)
    out = KerasModel(path, "keras", version, input_shape=shape)
    used: dict[str, int] = {}
    with h5py.File(io.BytesIO(blob), "r") as f:
        for layer, want in zip(layers, plan):
            if layer["class_name"] == "InputLayer":
                out.layers.append((layer["class_name"], layer["config"], []))
                continue
            # Keras 3 stores a layer's variables under a name made from its class, numbered in
            # order within the model (lstm, lstm_1, ...), not under the layer's own name
            base = _snake_case(layer["class_name"])
            name = base if base not in used else f"{base}_{used[base]}"
            used[base] = used.get(base, 0) + 1
            group = _node(f, f"layers/{name}")
            holder = None
            if group is not None:
                holder = _node(group, "cell/vars") if _node(group, "cell") is not None \
                    else _node(group, "vars")
            keys = list(holder) if holder is not None else []
            if not all(k.isdigit() for k in keys):
                raise KerasImportError(f"layers/{name}: variables must be numbered 0, 1, ...")
            keys.sort(key=int)
            arrays = _read_layer_weights(f"layers/{name}", keys, holder, want, layer) \
                if want or keys else []
            out.layers.append((layer["class_name"], layer["config"], arrays))
    return out


def _snake_case(name: str) -> str:
    """Keras's own class-name-to-snake-case (keras.src.utils.naming.to_snake_case)."""
    import re

    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def read_keras(path: str | Path) -> KerasModel:
    """Read a Keras model file (.h5 or .keras) without TensorFlow; KerasImportError if it is not
    one seqmnist can read. The file must be a regular file (a pipe or device is refused without
    being read); it is read once into memory and parsed from there, and nothing in it can make
    seqmnist open another file: external links, external storage, virtual datasets and unknown
    filters are refused, and every weight's shape and type are checked before it is read."""

    path = Path(path)
    data = read_regular_file(path, MAX_FILE, KerasImportError)
    try:
        if data.startswith(b"\x89HDF\r\n\x1a\n"):
            return replace(_read_h5(path, data), sha256=hashlib.sha256(data).hexdigest())
        if data.startswith(b"PK\x03\x04"):
            return replace(_read_keras(path, data), sha256=hashlib.sha256(data).hexdigest())
    except ImportError:
        raise KerasImportError("importing Keras models needs h5py: pip install 'seqmnist[keras]'"
                               ) from None
    except KerasImportError:
        raise
    except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError,
            zipfile.BadZipFile, RecursionError, MemoryError, OverflowError) as exc:
        raise KerasImportError(f"{path}: corrupt or truncated Keras file ({type(exc).__name__}: "
                               f"{str(exc)[:200]})") from None
    what = "a pickle (refused: unpickling runs code)" if data[:1] == b"\x80" else \
        "neither HDF5 (.h5) nor a Keras 3 archive (.keras)"
    raise KerasImportError(f"{path}: not a Keras model file: {what}")


def _unsupported(kind: str, cfg: dict, why: str = "") -> KerasImportError:
    return KerasImportError(f"layer {cfg.get('name', '?')!r} ({kind}{': ' + why if why else ''}) "
                            f"cannot be mapped; seqmnist maps {SUPPORTED}")
