"""Make the pretrained runs shipped in ``src/seqmnist/pretrained/``: train each with seqmnist's
own command line, then keep the files a finished run is read from (weights, config, metrics,
history, provenance, test predictions), its model card with the command that trained it, and
SHA256SUMS. Not part of CI: it trains (a few minutes on two cores).

    python tools/make_pretrained.py              # lstm, gru, cnn
    python tools/make_pretrained.py --models cnn

The CNN's 3.3 million weights are stored in float16 (half the size); the card says what that
changes on the test set (measured here, on every test image), and tests/test_pretrained.py checks
it again. Each model's folder is built under a temporary name and renamed into place.
"""

from __future__ import annotations

import argparse
import io
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.torch import load_file, save

from seqmnist.core.fileio import atomic_write
from seqmnist.evaluation.evaluate import evaluate
from seqmnist.reports.export import model_card
from seqmnist.runs import pretrained
from seqmnist.runs.storage import PREDICTIONS, WEIGHTS, load_run

# the command each is trained with (a value given here wins over the preset: see the README)
RECIPES = {
    "lstm": "seqmnist train lstm --preset fast --seed 0 --precision fp32",
    "gru": "seqmnist train gru --preset fast --seed 0 --precision fp32",
    "cnn": "seqmnist train cnn --preset fast --seed 0 --precision fp32",
}
HALF = {"cnn"}  # weights kept in float16
KEPT = ("config.json", "provenance.json", "history.json", "history.csv", "metrics.json",
        "summary.txt")


def train(name: str, scratch: Path) -> Path:
    command = RECIPES[name]
    subprocess.run([sys.executable, "-m", "seqmnist", *shlex.split(command)[1:], "--out",
                    str(scratch), "--no-progress"], check=True)
    (run,) = [p for p in scratch.iterdir() if (p / WEIGHTS).is_file()]
    return run


def half_weights(src: Path, dst: Path) -> None:
    with safe_open(src, framework="pt") as fh:  # the metadata (configuration) travels unchanged
        meta = fh.metadata()
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(src).items()}
    atomic_write(dst, save(tensors, metadata=meta))


def half_predictions(src: Path, dst: Path) -> None:
    """The test predictions with probabilities in float16 (what comparisons read: the classes
    exactly, the probabilities to three digits)."""
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["probabilities"] = arrays["probabilities"].astype(np.float16)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(dst, buf.getvalue())


def card(name: str, folder: Path, trained: Path) -> str:
    run = load_run(folder)
    lines = [model_card(run).rstrip(), "", "## How this pretrained run was made", "",
             "Trained by seqmnist itself, on the full MNIST training set, with:", "",
             f"    {RECIPES[name]}", "",
             "then kept by `python tools/make_pretrained.py` (the files a finished run is read "
             "from; not its checkpoint or plots). `SHA256SUMS` lists every file's checksum."]
    if name in HALF:
        full, half = evaluate(load_run(trained)), evaluate(run)
        differ = int((full.predictions != half.predictions).sum())
        lines += ["", f"Its weights are stored in float16 (half the size). Measured on all "
                  f"{len(half.labels):,} test images: test accuracy {half.accuracy:.2%} from "
                  f"these weights, {full.accuracy:.2%} from the float32 ones they were made "
                  f"from; the answer differs on {differ} image{'s' * (differ != 1)}. "
                  "`metrics.json` and `predictions.npz` are the float32 model's."]
    return "\n".join(lines) + "\n"


def make(name: str, scratch: Path) -> Path:
    trained = train(name, scratch)
    out = pretrained.FOLDER / name
    pretrained.FOLDER.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=pretrained.FOLDER))
    try:
        for file in KEPT:
            shutil.copyfile(trained / file, staging / file)
        if name in HALF:
            half_weights(trained / WEIGHTS, staging / WEIGHTS)
        else:
            shutil.copyfile(trained / WEIGHTS, staging / WEIGHTS)
        half_predictions(trained / PREDICTIONS, staging / PREDICTIONS)
        atomic_write(staging / "README.md", card(name, staging, trained))
        atomic_write(staging / pretrained.SUMS, pretrained.write_sums(staging))
        if out.exists():  # an earlier pretrained run of this name, made by this script
            shutil.rmtree(out)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide it from other users once installed
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    pretrained.verify(name)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    args = parser.parse_args()
    for name in args.models:
        scratch = Path(tempfile.mkdtemp(prefix=f"seqmnist-pretrained-{name}-"))
        try:
            out = make(name, scratch)
        finally:
            shutil.rmtree(scratch)
        size = sum(p.stat().st_size for p in out.iterdir())
        print(f"{name}: {out} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
