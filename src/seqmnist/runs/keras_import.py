"""Import a model trained with Keras (the tutorial's ``model.save('mnist_cnn.h5')``) into a
seqmnist run folder, with h5py and zipfile only: no TensorFlow, nothing from the file executed.

Reads legacy HDF5 (``.h5``) and Keras 3 archives (``.keras``: a zip of ``config.json`` and
``model.weights.h5``) with ``keras_files`` (every check a file from a stranger needs), maps the
layers onto a registered model (the tutorial's LSTM and CNN, their
GRU / SimpleRNN variants, other widths and depths), converts the weights to PyTorch's layouts
(transposed kernels, GRU gates reordered, the CNN's first dense layer re-ordered from Keras's
channels-last flattening), and writes a normal run folder. Anything it cannot map is an error
naming the layer; a Lambda layer (Python code) or a file that is not a Keras model is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..core.fileio import writable_folder
from ..core.signals import terminate_as_interrupt
from ..data.datasets import load_dataset
from ..data.views import get_view, to_input
from ..kernels.backends import install_backend, resolve_backend
from ..models.registry import create_model
from ..models.summary import summary_text
from ..training.config import TrainConfig
from ..training.metrics import evaluate_tensors
from .keras_reader import (
    LAYERS,
    RECURRENT,
    KerasImportError,
    KerasModel,
    _unsupported,
    read_keras,
)
from .recorder import Recorder, provenance


@dataclass
class Mapping:
    """A Keras model mapped onto a registered seqmnist model."""

    model: str
    view: str
    input_shape: tuple[int, ...]
    options: dict
    state: dict  # name -> np.ndarray, in PyTorch's layout, filled by ``map_model``


def _dense_head(layers, i: int) -> tuple[np.ndarray, np.ndarray]:
    if i != len(layers) - 1 or layers[i][0] != "Dense":
        kind, cfg, _ = layers[min(i, len(layers) - 1)]
        raise _unsupported(kind, cfg, "expected the final Dense(softmax) layer here")
    kind, cfg, w = layers[i]
    if cfg.get("activation") not in ("softmax", "linear") or len(w) != 2:
        raise _unsupported(kind, cfg, f"activation {cfg.get('activation')}")
    return w[0].T, w[1]


def _recurrent_weights(kind: str, cfg: dict, w: list[np.ndarray], hidden: int) -> dict:
    if len(w) != 3:
        raise _unsupported(kind, cfg, "expected kernel, recurrent kernel and bias")
    kernel, recurrent, bias = w
    if kind == "GRU":  # Keras gates z, r, h; PyTorch r, z, n
        if not cfg.get("reset_after", True) or bias.shape != (2, 3 * hidden):
            raise _unsupported(kind, cfg, "reset_after=False (PyTorch's GRU is reset_after)")
        order = np.concatenate([np.arange(hidden, 2 * hidden), np.arange(hidden),
                                np.arange(2 * hidden, 3 * hidden)])
        return {"weight_ih_l0": kernel[:, order].T, "weight_hh_l0": recurrent[:, order].T,
                "bias_ih_l0": bias[0][order], "bias_hh_l0": bias[1][order]}
    return {"weight_ih_l0": kernel.T, "weight_hh_l0": recurrent.T, "bias_ih_l0": bias,
            "bias_hh_l0": np.zeros_like(bias)}  # one Keras bias: PyTorch's second is zero


def _map_recurrent(layers, shape) -> Mapping:
    cells, hidden, rates, state, width = [], set(), set(), {}, shape[-1]
    i = 0
    while i < len(layers) and layers[i][0] in RECURRENT:
        kind, cfg, w = layers[i]
        units = int(cfg.get("units", 0))
        checks = {"go_backwards": False, "stateful": False, "use_bias": True,
                  "activation": "tanh"}
        for key, want in checks.items():
            if cfg.get(key, want) != want:
                raise _unsupported(kind, cfg, f"{key}={cfg.get(key)}")
        if kind != "SimpleRNN" and cfg.get("recurrent_activation", "sigmoid") != "sigmoid":
            raise _unsupported(kind, cfg, f"recurrent_activation={cfg.get('recurrent_activation')}")
        index = 2 * len(cells)
        for name, array in _recurrent_weights(kind, cfg, w, units).items():
            state[f"net.{index}.rnn.{name}"] = array
        if w and w[0].shape[0] != width:
            raise _unsupported(kind, cfg, f"takes {w[0].shape[0]} features, gets {width}")
        cells.append((RECURRENT[kind], cfg.get("return_sequences", False)))
        hidden.add(units)
        width = units
        i += 1
        rate = 0.0
        if i < len(layers) and layers[i][0] == "Dropout":
            rate = float(layers[i][1].get("rate", 0.0))
            i += 1
        rates.add(rate)
    kinds = {c for c, _ in cells}
    if len(kinds) != 1 or len(hidden) != 1 or len(rates) != 1:
        raise KerasImportError("seqmnist's recurrent models stack layers of one cell type, one "
                               f"width and one dropout rate; this file has {sorted(kinds)}, "
                               f"widths {sorted(hidden)}, dropout {sorted(rates)}")
    if any(not seq for _, seq in cells[:-1]) or cells[-1][1]:
        raise KerasImportError("every recurrent layer but the last must return sequences, and "
                               "the last must not")
    head_w, head_b = _dense_head(layers, i)
    state[f"net.{2 * len(cells)}.weight"], state[f"net.{2 * len(cells)}.bias"] = head_w, head_b
    return Mapping(kinds.pop(), "rows", tuple(shape), dict(hidden=hidden.pop(), layers=len(cells),
                                                           dropout=rates.pop()), state)


def _map_cnn(layers, shape) -> Mapping:
    if len(shape) != 3 or shape[2] != 1:
        raise KerasImportError(f"a CNN over {shape}: seqmnist's CNN reads one-channel images")
    height, width, _ = shape
    channels, kernels, state, i, index = [], set(), {}, 0, 0
    while i < len(layers) and layers[i][0] == "Conv2D":
        kind, cfg, w = layers[i]
        k = cfg.get("kernel_size", [0])
        k = k[0] if isinstance(k, list) else k
        ok = (cfg.get("padding") == "same" and cfg.get("activation") == "relu"
              and list(cfg.get("strides", [1, 1])) == [1, 1] and cfg.get("use_bias", True)
              and cfg.get("data_format", "channels_last") == "channels_last"
              and list(cfg.get("dilation_rate", [1, 1])) == [1, 1] and cfg.get("groups", 1) == 1
              and k % 2 == 1 and len(w) == 2)
        if not ok:
            raise _unsupported(kind, cfg, "needs padding 'same', relu, stride 1, odd kernel")
        state[f"net.{index}.0.weight"] = w[0].transpose(3, 2, 0, 1)
        state[f"net.{index}.0.bias"] = w[1]
        channels.append(int(cfg["filters"]))
        kernels.add(int(k))
        i += 1
        if i >= len(layers) or layers[i][0] != "MaxPooling2D":
            raise KerasImportError("each Conv2D must be followed by MaxPooling2D(2, 2, 'same')")
        pcfg = layers[i][1]
        pool = pcfg.get("pool_size", [2, 2])
        strides = pcfg.get("strides") or pool
        if list(np.ravel(pool)) not in ([2, 2], [2]) or list(np.ravel(strides)) not in ([2, 2], [2]) \
                or pcfg.get("padding") != "same":
            raise _unsupported("MaxPooling2D", pcfg, "needs pool 2, stride 2, padding 'same'")
        height, width = math.ceil(height / 2), math.ceil(width / 2)
        i += 1
        index += 2
    if not channels or len(kernels) != 1:
        raise KerasImportError("seqmnist's CNN has one kernel size for all its conv layers")
    if i >= len(layers) or layers[i][0] != "Flatten":
        raise KerasImportError("the conv layers must be followed by Flatten")
    i += 1
    kind, cfg, w = layers[i] if i < len(layers) else ("end", {}, [])
    if kind != "Dense" or cfg.get("activation") != "relu" or len(w) != 2:
        raise _unsupported(kind, cfg, "expected Dense(relu) after Flatten")
    c = channels[-1]
    kernel = w[0].reshape(height, width, c, -1).transpose(2, 0, 1, 3).reshape(c * height * width, -1)
    state[f"net.{index + 1}.0.weight"], state[f"net.{index + 1}.0.bias"] = kernel.T, w[1]
    dense = int(cfg["units"])
    i += 1
    rate = 0.0
    if i < len(layers) and layers[i][0] == "Dropout":
        rate = float(layers[i][1].get("rate", 0.0))
        i += 1
    state[f"net.{index + 3}.weight"], state[f"net.{index + 3}.bias"] = _dense_head(layers, i)
    return Mapping("cnn", "image", (1, shape[0], shape[1]),
                   dict(channels=channels, kernel=kernels.pop(), dense=dense, dropout=rate), state)


def map_model(keras_model: KerasModel) -> Mapping:
    """The registered seqmnist model (and its options and weights) this Keras model is."""
    layers = [entry for entry in keras_model.layers if entry[0] != "InputLayer"]
    for kind, cfg, _ in layers:
        if kind not in LAYERS:
            raise _unsupported(kind, cfg)
    if not layers:
        raise KerasImportError("the model has no layers")
    shape = keras_model.input_shape
    if layers[0][0] in RECURRENT:
        if len(shape) != 2:
            raise KerasImportError(f"a recurrent model over {shape}: expected (steps, features)")
        return _map_recurrent(layers, shape)
    if layers[0][0] == "Conv2D":
        return _map_cnn(layers, shape)
    raise _unsupported(*layers[0][:2], "the first layer must be recurrent or Conv2D")


def import_keras(path: str | Path, out: str | Path = "runs", dataset: str = "mnist",
                 data_dir: str | Path | None = None, view: str | None = None,
                 log=print) -> Path:
    """Import a Keras model file as a seqmnist run folder under ``out`` (weights, config,
    provenance saying where it came from, and metrics from evaluating it on ``dataset``'s test
    set); returns the folder. ``evaluate``, ``predict``, ``compare --runs`` and ``serve`` work on
    it like on any run."""
    import torch


    writable_folder(out)  # a bad --out is found before the file is read and evaluated
    source = Path(path)
    keras_model = read_keras(source)
    mapping = map_model(keras_model)
    view = view or mapping.view
    ds = load_dataset(dataset, data_dir)
    expected = get_view(view).shape(*ds.image_shape)
    if expected != mapping.input_shape:
        raise KerasImportError(f"the Keras model reads {list(mapping.input_shape)}, but the "
                               f"{view} view of {dataset} gives {list(expected)}")
    model = create_model(mapping.model, mapping.input_shape, ds.num_classes, **mapping.options)
    state = model.state_dict()
    if set(state) != set(mapping.state):
        extra = sorted(set(state) ^ set(mapping.state))
        raise KerasImportError(f"the weights do not fill the model: {extra}")
    for name, array in mapping.state.items():
        if tuple(array.shape) != tuple(state[name].shape):
            raise KerasImportError(f"{name}: Keras holds {array.shape}, the model needs "
                                   f"{tuple(state[name].shape)} (a {dataset} model has "
                                   f"{ds.num_classes} classes)")
        state[name] = torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))
    model.load_state_dict(state)
    cfg = TrainConfig(model=mapping.model, dataset=dataset, view=view, epochs=1,
                      model_options=mapping.options, backend="torch", precision="fp32",
                      data_dir=str(Path(data_dir).resolve()) if data_dir else None).resolved()
    cfg = replace(cfg, backend=resolve_backend("auto", model))
    install_backend(model, cfg.backend)
    x_test = to_input(ds.x_test, view, cfg.order_seed)
    y_test = torch.as_tensor(ds.y_test)
    val = evaluate_tensors(model, x_test, y_test, cfg.eval_batch_size)
    if not np.isfinite(val.probabilities).all():
        raise KerasImportError(f"{source}: the model answers NaN on the test images: refused")
    origin = dict(file=str(source.resolve()), sha256=keras_model.sha256,
                  format=keras_model.format, keras_version=keras_model.keras_version)
    # Everything was checked and computed: only now is the run folder made, and it is removed
    # again if anything stops the writing (an error, Ctrl-C, SIGTERM), so no half folder stays.
    facts = provenance(cfg, ds, device="cpu", threads=torch.get_num_threads(), train_images=None,
                       recipe=None, facts=dict(imported_from=origin))
    with terminate_as_interrupt():
        recorder = Recorder.create(out, cfg, facts,
                                   summary_text(model, mapping.input_shape, cfg.model),
                                   config_extra={"imported_from": origin})
        try:
            metrics = recorder.finish(model, cfg, ds, mapping.input_shape, [], val, x_test,
                                      y_test)
        except BaseException:
            recorder.discard()
            raise
    folder = recorder.folder
    log(f"Imported {source} ({keras_model.format}, Keras {keras_model.keras_version}) as "
        f"{cfg.model} {mapping.options}: test accuracy {metrics.test_accuracy:.4f}. "
        f"Run folder: {folder}")
    return folder
