"""Models from other people's code: a file (``--plugin my_model.py``), a module
(``--plugin mypackage.models``) or an installed package's entry point in the group
``seqmnist.models`` (found without any flag). A plug-in registers its models with the same
``@register_model`` as the built-ins and gets everything they get; where each model came from is
kept (``source``), written into the provenance of every run of it, and checked again when such a
run is reloaded.

    # pyproject.toml of a package that brings models
    [project.entry-points."seqmnist.models"]
    mine = "mypackage.models"
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

from ..core.errors import SeqmnistError, UsageError
from .registry import MODELS

GROUP = "seqmnist.models"  # the entry-point group installed packages declare
SOURCES: dict[str, dict] = {}  # model name -> where it came from (see ``plugin_record``)
LOADED: dict[str, dict] = {}  # plug-in spec -> its record, so that each loads once
FAILED: list[str] = []  # installed plug-ins that could not load (said once, never fatal)


class PluginError(UsageError):
    """A plug-in that cannot be used: missing, failing on import, or clashing with a name."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _where(exc: BaseException, path: Path | None) -> str:
    """The plug-in's own line where ``exc`` was raised (the last frame in its file)."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if path is not None and Path(f.filename) == path] or frames[-1:]
    return f" at {mine[-1].filename}:{mine[-1].lineno}" if mine else ""


def load_plugin(spec: str) -> dict:
    """Import the plug-in ``spec`` (a ``.py`` file or a module name) and return its record:
    what it is (``plugin``: file or module), its file's SHA-256, its package's version where it
    has one, and the models it registered. Loading the same spec again does nothing."""
    if spec in LOADED:
        return LOADED[spec]
    before = set(MODELS)
    path = Path(spec)
    is_file = spec.endswith(".py") or path.is_file()
    digest = None
    if is_file:
        path = path.resolve()
        if not path.is_file():
            raise PluginError(f"plug-in {spec}: no such file")
        digest = _sha256(path)
    try:
        if is_file:
            name = f"seqmnist_plugin_{path.stem}_{digest[:8]}"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(spec)
            path = Path(module.__file__).resolve() if getattr(module, "__file__", None) else None
    except SeqmnistError as exc:  # a clash with a registered name
        raise PluginError(f"plug-in {spec}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the plug-in's own error, shown as one line
        if isinstance(exc, ModuleNotFoundError) and not is_file and \
                exc.name == spec.split(".")[0]:
            raise PluginError(f"plug-in {spec}: no such module (give a .py file's path, or a "
                              "module installed in this Python)") from None
        raise PluginError(f"plug-in {spec} does not import: {type(exc).__name__}: {exc}"
                          f"{_where(exc, path if is_file else None)}") from None
    models = sorted(set(MODELS) - before)
    if not is_file and path is not None and path.is_file():
        digest = _sha256(path)  # a module's own file
    record = dict(plugin=spec if not is_file else str(path), kind="file" if is_file else "module",
                  sha256=digest,
                  version=_version(spec if not is_file else None), models=models)
    for m in models:
        SOURCES[m] = record
    LOADED[spec] = record
    return record


def _version(module: str | None) -> str | None:
    if module is None:
        return None
    from importlib import metadata

    try:
        return metadata.version(module.split(".")[0])
    except metadata.PackageNotFoundError:
        return None


def load_installed() -> list[str]:
    """Load every plug-in installed packages declare in the ``seqmnist.models`` entry-point
    group. One that fails is said once (``FAILED``) and left out; the others load."""
    from importlib import metadata

    loaded = []
    for ep in metadata.entry_points(group=GROUP):
        if ep.value in LOADED:
            continue
        try:
            record = load_plugin(ep.value)
        except PluginError as exc:
            FAILED.append(f"installed plug-in {ep.name!r} ({ep.value}) left out: {exc}")
            continue
        record["entry_point"] = ep.name
        loaded.append(ep.value)
    return loaded


def plugin_record(model: str) -> dict | None:
    """Where ``model`` came from, for a run's provenance: None for a built-in."""
    return SOURCES.get(model)


def source(model: str) -> str:
    """Where ``model`` came from, in words: "built-in", or the plug-in."""
    record = SOURCES.get(model)
    if record is None:
        return "built-in"
    via = f" (entry point {record['entry_point']})" if record.get("entry_point") else ""
    return f"plug-in {record['plugin']}{via}"


def _recorded(provenance: dict | None) -> dict | None:
    """The plug-in a run's provenance.json records (its facts are written flat), or None."""
    record = (provenance or {}).get("plugin")
    return record if isinstance(record, dict) else None


def missing_plugin_hint(provenance: dict | None) -> str:
    """For a run whose model is not registered: which plug-in its provenance says to load."""
    record = _recorded(provenance)
    if record is None or not record.get("plugin"):
        return ""
    return f"; the run was trained with the plug-in {record['plugin']}: load it with " \
           f"--plugin {record['plugin']}"


def changed_since(provenance: dict | None) -> str | None:
    """A warning when the plug-in file a run was trained with has changed since (its SHA-256
    differs from the one recorded), or None."""
    record = _recorded(provenance)
    if record is None or record.get("kind") != "file" or not record.get("sha256"):
        return None
    now = next((r for r in LOADED.values() if r.get("plugin") == record["plugin"]), None)
    if now is not None and now.get("sha256") and now["sha256"] != record["sha256"]:
        return (f"the plug-in {record['plugin']} has changed since this run was trained "
                f"(SHA-256 {record['sha256'][:12]}... then, {now['sha256'][:12]}... now)")
    return None
