"""Published test accuracies on sequential and permuted MNIST, with their sources, so a report
can put seqmnist's result beside the paper's for the same model (``published(model, view)``).

Only figures checked against the papers' tables are listed. The S4 paper is Gu, Goel, Re 2022,
"Efficiently modeling long sequences with structured state spaces" (ICLR); Bai et al. is Bai,
Kolter, Koltun 2018, "An empirical evaluation of generic convolutional and recurrent networks
for sequence modeling".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    model: str  # the paper's name for it
    accuracy: float  # test accuracy, percent
    source: str


S4_TABLE12 = "S4 paper (Gu et al. 2022), Table 12"
# (seqmnist model, view) -> published results on MNIST read pixel by pixel (pixels: sMNIST,
# permuted: pMNIST)
PUBLISHED: dict[tuple[str, str], list[Published]] = {
    ("lstm", "pixels"): [Published("LSTM", 98.9, S4_TABLE12)],
    ("lstm", "permuted"): [Published("LSTM", 95.11, S4_TABLE12)],
    ("transformer", "pixels"): [Published("Transformer", 98.9, S4_TABLE12)],
    ("transformer", "permuted"): [Published("Transformer", 97.9, S4_TABLE12)],
    ("tcn", "pixels"): [Published("TCN", 99.0, "Bai et al. 2018, Table 1")],
    ("tcn", "permuted"): [Published("TCN", 97.2, "Bai et al. 2018, Table 1")],
    ("s4d", "pixels"): [Published("S4 (S4D's parent)", 99.63, "S4 paper (Gu et al. 2022), Table 6")],
    ("s4d", "permuted"): [Published("S4 (S4D's parent)", 98.70,
                                    "S4 paper (Gu et al. 2022), Table 6")],
}


def published(model: str, view: str, dataset: str = "mnist") -> list[Published]:
    """The published results for ``model`` reading ``dataset`` in ``view`` (empty if none)."""
    if dataset != "mnist":
        return []
    return PUBLISHED.get((model, view), [])
