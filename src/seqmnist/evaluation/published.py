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


@dataclass(frozen=True)
class Reference:
    """A published result of a model seqmnist does not implement, for the board's reference
    rows: its accuracy on sMNIST (pixels) and pMNIST (permuted), where it is stated, and how
    it was trained, as far as its source says."""

    model: str
    pixels: float | None
    permuted: float | None
    source: str
    budget: str


# Each traced to its authors' own repository (README table or the result log of their run).
# Not listed, because no number was traced to a primary source here: S5, the LRU (its paper
# reports no sMNIST figure we checked), minGRU and minLSTM (their paper reports none).
REFERENCES = [
    Reference("coRNN (Rusch & Mishra 2021)", 99.4, 97.34,
              "github.com/tk-rusch/coRNN, README results table",
              "120 epochs, batch 120, test accuracy after the last epoch (its sMNIST script's "
              "defaults)"),
    Reference("LEM (Rusch et al. 2022)", 99.45, 96.62,
              "github.com/tk-rusch/LEM, sMNIST/result/sMNIST_log.txt and "
              "src/psMNIST/result/psMNIST_log.txt (final test accuracy)",
              "120 epochs, batch 128; pMNIST: the test accuracy of the best validation epoch "
              "(its scripts' defaults)"),
    Reference("UnICORNN (Rusch & Mishra 2021)", None, 98.4,
              "github.com/tk-rusch/unicornn, README results table",
              "not stated in the README; its recurrence is CUDA-only code"),
]


def published(model: str, view: str, dataset: str = "mnist") -> list[Published]:
    """The published results for ``model`` reading ``dataset`` in ``view`` (empty if none)."""
    if dataset != "mnist":
        return []
    return PUBLISHED.get((model, view), [])
