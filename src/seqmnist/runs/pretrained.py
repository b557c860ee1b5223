"""The small pretrained runs shipped inside the package (``seqmnist/pretrained/<name>/``): the
tutorial's LSTM and CNN and a GRU, trained by seqmnist itself, so that the page and the explainer
work before anything is trained.

Each is an ordinary run folder (``load_run`` reads it with every check it makes of any run) plus
``SHA256SUMS`` (every file's checksum) and ``README.md`` (its model card, with the command that
trained it). Every command that takes a run folder takes ``pretrained:NAME`` too
(``seqmnist explain pretrained:lstm``, ``seqmnist compare --runs RUN pretrained:cnn``). They are
read-only: nothing seqmnist does writes inside them.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import CheckpointError, UsageError
from ..data.download import sha256_of_file

FOLDER = Path(__file__).resolve().parent.parent / "pretrained"
PREFIX = "pretrained:"
SUMS = "SHA256SUMS"


def names() -> list[str]:
    """The pretrained runs this installation ships, by name."""
    if not FOLDER.is_dir():
        return []
    return sorted(p.name for p in FOLDER.iterdir() if (p / SUMS).is_file())


def path_of(name: str) -> Path:
    """The folder of the pretrained run ``name``; a UsageError naming those there are."""
    if name not in names():
        there = ", ".join(names()) or "none (this installation ships no pretrained runs)"
        raise UsageError(f"no pretrained run named {name!r}; there are: {there}")
    return FOLDER / name


def resolve(path: str | Path) -> Path:
    """``pretrained:NAME`` as its folder; any other path as it is."""
    text = str(path)
    return path_of(text[len(PREFIX):]) if text.startswith(PREFIX) else Path(path)


def is_pretrained(path: str | Path) -> bool:
    """Whether ``path`` is (or lies inside) one of the shipped pretrained runs."""
    try:
        return Path(path).resolve().is_relative_to(FOLDER)
    except OSError:
        return False


def write_sums(folder: Path) -> str:
    """The ``SHA256SUMS`` text for every file in ``folder`` (``sha256sum`` writes the same)."""
    return "".join(f"{sha256_of_file(p)}  {p.name}\n" for p in sorted(folder.iterdir())
                   if p.is_file() and p.name != SUMS)


def verify(name: str) -> Path:
    """The pretrained run's folder, once every file listed in its SHA256SUMS matches and no file
    is missing from the list; a CheckpointError naming the first that does not."""
    folder = path_of(name)
    listed = {}
    for line in (folder / SUMS).read_text().splitlines():
        digest, _, file = line.partition("  ")
        listed[file] = digest
    present = {p.name for p in folder.iterdir() if p.is_file() and p.name != SUMS}
    if present != set(listed):
        odd = sorted(present ^ set(listed))
        raise CheckpointError(f"{folder}: files and {SUMS} disagree ({', '.join(odd[:3])}): "
                              "reinstall seqmnist")
    for file, digest in sorted(listed.items()):
        if sha256_of_file(folder / file) != digest:
            raise CheckpointError(f"{folder / file}: checksum differs from {SUMS}: the file was "
                                  "changed after it was shipped; reinstall seqmnist")
    return folder
