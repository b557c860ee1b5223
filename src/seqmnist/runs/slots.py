"""Run slots: a folder that holds one run of a recipe (a sweep's grid run, a comparison's model
and seed), finished exactly once however often it is started. Running a slot again skips a
finished run, resumes an interrupted one from its checkpoint, and refuses a run of another recipe
found there; the slot is locked while it runs, so two processes never write into one run.
``sweep`` and ``compare`` both use it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from ..core.errors import CheckpointError, SeqmnistError, UsageError
from ..core.fileio import exclusive, read_json
from ..training.config import AUTO_FIELDS, RUNTIME_FIELDS, TrainConfig
from .storage import CHECKPOINT, PREVIOUS_CHECKPOINT, WEIGHTS, is_run_folder
from .train import train

LOCKS = ".locks"  # one lock file per slot, beside runs/ so that no listing of runs meets it


def slot_key(cfg: TrainConfig) -> str:
    """The slot's folder name: model, dataset, view and seed."""
    return f"{cfg.model}-{cfg.dataset}-{cfg.view}-seed{cfg.seed}"


def recipe_differences(stored: TrainConfig, wanted: TrainConfig) -> list[str]:
    """The settings in which a run found in a grid slot differs from the run the spec asks for
    ("epochs 2, not 1"); empty when it is the spec's run."""
    have, want = asdict(stored), asdict(wanted)
    out = []
    for key, value in want.items():
        # how or where it was computed: the recipe's run whatever it is; an "auto" setting is
        # resolved at training time and compared only when the spec names a value
        if (key in RUNTIME_FIELDS and key not in AUTO_FIELDS) or \
                (key in AUTO_FIELDS and value == "auto"):
            continue
        if have.get(key) != value:
            out.append(f"{key} {have.get(key)!r}, not {value!r}")
    return out


# What a run folder holds when its process was killed before its first epoch was saved: the
# files ``Recorder.create`` writes, the probe of ``new_run_dir``, an empty TensorBoard folder.
ABANDONED_FILES = {"config.json", "provenance.json", "summary.txt", ".write-test"}
RUN_NAME = re.compile(r"\d{8}-\d{6}-[\w.-]+")


def _abandoned(run: Path) -> bool:
    """Whether ``run`` is a run folder seqmnist made and left before its first epoch: named as
    ``new_run_dir`` names them, holding nothing but what ``Recorder.create`` writes."""
    if run.is_symlink() or not run.is_dir() or not RUN_NAME.fullmatch(run.name):
        return False
    for item in run.iterdir():
        if item.is_symlink():
            return False
        if item.name == "tensorboard" and item.is_dir():
            if any(item.iterdir()):
                return False
        elif not (item.is_file() and (item.name in ABANDONED_FILES or
                                      (item.name.startswith(".") and item.name.endswith(".tmp")))):
            return False
    return True


def check_slot(folder: Path) -> None:
    """Refuse a slot that seqmnist did not make: a link, a file, or a folder that is itself a
    run (a run copied to where its slot should be). Its contents are never touched."""
    if folder.is_symlink():
        raise UsageError(f"{folder} is a symbolic link, not a slot folder seqmnist made; "
                         "nothing there is used or removed: give another --out, or move it away")
    if os.path.lexists(folder) and not folder.is_dir():
        raise UsageError(f"{folder} is a file where seqmnist keeps a slot folder; give another "
                         "--out, or move it away")
    if is_run_folder(folder):
        raise UsageError(f"{folder} is itself a run folder; a slot holds its run one level down "
                         f"({folder}/<run>): move the run into a folder inside it, or give "
                         "another --out. Nothing was changed")


def run_state(folder: Path, wanted: TrainConfig | None = None) -> tuple[str, Path | None]:
    """("done", run), ("resume", run), or ("new", None) for a grid run's folder. With
    ``wanted``, a run there of another recipe (a stale run of an earlier spec, a run copied in
    from elsewhere) is an error naming the difference, never taken for the spec's run."""
    runs = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    found = None
    for run in runs:
        if (run / WEIGHTS).is_file():
            found = ("done", run)
            break
    for run in runs if found is None else []:
        if (run / CHECKPOINT).is_file() or (run / PREVIOUS_CHECKPOINT).is_file():
            found = ("resume", run)
            break
    if found is None:
        return "new", None
    if wanted is not None:
        try:
            stored = TrainConfig.from_dict(read_json(found[1] / "config.json"))
        except (SeqmnistError, TypeError) as exc:
            raise CheckpointError(f"{found[1]}: this grid slot's run has no readable "
                                  f"config.json ({exc}); remove it to train that run again"
                                  ) from None
        diff = recipe_differences(stored, wanted)
        if diff:
            raise UsageError(f"{found[1]} is not the run this spec asks for ({'; '.join(diff)}): "
                             "a run of another recipe is never reused. Give the sweep another "
                             "--out, or remove that folder to train it again")
    return found


def run_slot(key: str, config: TrainConfig, out: Path, data_dir: str | Path | None = None,
             log: Callable[[str], None] = lambda *_: None, facts: dict | None = None,
             tensorboard: bool = False, progress: bool = False,
             dataset=None) -> tuple[str, Path]:
    """Finish the run of ``config`` in the slot ``out/runs/key``: skip it, resume it or start it.
    Returns (what was done: "skipped", "resumed" or "trained"; the run folder). Safe to call
    again after any interruption. ``facts``: more provenance for the run (where it ran);
    ``dataset``: the config's dataset, already loaded (runs side by side share it). The
    slot is held exclusively while this runs: a second caller (a retried Ray task whose first
    worker still writes) waits for it."""

    folder = out / "runs" / key
    check_slot(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (out / LOCKS).mkdir(exist_ok=True)

    def waiting(holder: int | None) -> None:
        log(f"{key}: waiting for process {holder or '(unknown)'}, which still writes "
            "into this run")

    with exclusive(out / LOCKS / f"{key}.lock", wait=True, waiting=waiting):
        state, run = run_state(folder, config)
        if state == "done":
            return "skipped", run
        if state == "resume":
            try:
                return "resumed", train(resume=run, data_dir=data_dir, progress=progress, log=log,
                                        facts=facts, tensorboard=tensorboard,
                                        dataset=dataset).path
            except CheckpointError as exc:  # never deleted silently: the user decides
                raise CheckpointError(f"{exc}\n(remove {run} to train that run "
                                      "again)") from None
        others = sorted(p for p in folder.iterdir() if p.is_dir() or p.is_symlink())
        strangers = [p.name for p in others if not _abandoned(p)]
        if strangers:  # never removed: seqmnist did not write them
            raise UsageError(f"{folder} holds {', '.join(strangers[:5])}"
                             f"{' and more' if len(strangers) > 5 else ''}, which is not a run "
                             "of this recipe that seqmnist can finish or safely remove; nothing "
                             "was changed: move it away or give another --out")
        for abandoned in others:
            shutil.rmtree(abandoned)  # killed before its first epoch was saved: nothing to keep
        cfg = replace(config, data_dir=None)
        return "trained", train(cfg, out=folder, data_dir=data_dir, progress=progress, log=log,
                                facts=facts, tensorboard=tensorboard, dataset=dataset).path
