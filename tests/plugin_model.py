"""A model registered from a module of one's own, as a user would: one decorated function.
``test_models.py`` loads this as a pytest plugin in a child run and checks that the registry-
parametrised tests pick it up with no list edited anywhere."""

from torch import nn

from seqmnist.models.layers import CausalClassifier
from seqmnist.models.registry import SEQUENCE_VIEWS, register_model


class PluginGRU(CausalClassifier):
    """A one-layer GRU that answers after every step."""

    def __init__(self, input_shape, num_classes: int, hidden: int = 16):
        super().__init__(input_shape, hidden, num_classes)
        self.rnn = nn.GRU(self.features, hidden, batch_first=True)

    def encode(self, x):
        return self.rnn(x)[0]

    def forward_states(self, x):
        """Its one state: the GRU's hidden state after every step."""
        return {"hidden": self.rnn(x)[0]}


@register_model("plugin", SEQUENCE_VIEWS, steps=True, states=True, lr=1e-3, view="rows")
def plugin(input_shape, num_classes, **options) -> nn.Module:
    """A one-layer GRU registered outside seqmnist."""
    return PluginGRU(input_shape, num_classes, **options)
