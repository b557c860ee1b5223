"""Models and their registry: ``create_model(name, input_shape, num_classes, **options)``.

Adding a model is one decorated function (``@register_model``) in a module of this package (or in
your own code).

    registry.py     the registry: register_model, create_model, what each model can do
    layers.py       what several models share: the causal classifier, block stacks, dropout
    checks.py       option ranges and the memory estimate, checked before a model is built
    summary.py      the Keras-style summary
    plugins.py      models from other people's code: --plugin FILE.py or MODULE, entry points

The tutorial's models use Keras's initialisation (Glorot uniform kernels, orthogonal recurrent
kernels, forget-gate bias 1, one bias per gate for LSTM and SimpleRNN), so the trainable parameter
count is Keras's: 36,510 for the LSTM, 3,274,634 for the CNN.

    recurrent.py    LSTM / GRU / tanh RNN stacks (the tutorial's LSTM)
    cnn.py          the tutorial's CNN
    transformer.py  a causal Transformer encoder over the steps
    tcn.py          a temporal convolutional network (dilated causal convolutions)
    s4d.py          diagonal state-space layers (S4D)
    lru.py          the linear recurrent unit (LRU)

Sequence models answer after every step (``forward_steps``): the page's row-by-row belief and the
report's anytime accuracy use it.
"""

from __future__ import annotations

import importlib

from .checks import (  # noqa: F401 (the package's public names)
    MEMORY_SHARE,
    RESERVED_OPTIONS,
    check_model,
    check_sizes,
    machine_memory,
)
from .layers import (  # noqa: F401
    BlockStack,
    CausalClassifier,
    Dropout,
    draws_from_global_rng,
    glorot_,
    set_dropout_generator,
    trainable_parameters,
)
from .registry import (  # noqa: F401
    MODELS,
    SEQUENCE_VIEWS,
    ModelEntry,
    check_view,
    create_model,
    get_entry,
    list_models,
    register_model,
)
from .summary import keras_shape, summary_rows, summary_text  # noqa: F401

# The model modules register themselves when imported, in the order the command line lists them;
# then the models of installed packages (entry points in the group "seqmnist.models").
for _module in ("recurrent", "cnn", "transformer", "tcn", "s4d", "lru", "minrnn"):
    importlib.import_module(f".{_module}", __name__)
from .plugins import load_installed, load_plugin, source  # noqa: E402, F401

load_installed()
