"""The one rule of every registry (models, datasets, views): a name is registered once. Other
people's code registers models too, so a second registration of a name is an error naming both
places, never a silent overwrite; ``replace=True`` says the overwrite is meant."""

from __future__ import annotations

import sys

from .errors import UsageError

# where each entry of each registry came from: {what: {name: "module.function (file:line)"}}
_ORIGINS: dict[str, dict[str, str]] = {}


def origin_of(fn=None, depth: int = 2) -> str:
    """Where a registration was made: ``fn``'s module, name, file and line, or (without ``fn``)
    the caller ``depth`` frames up."""
    if fn is not None:
        code = getattr(fn, "__code__", None)
        where = f" ({code.co_filename}:{code.co_firstlineno})" if code else ""
        return f"{fn.__module__}.{getattr(fn, '__qualname__', fn)}{where}"
    frame = sys._getframe(depth)
    return f"{frame.f_globals.get('__name__', '?')} ({frame.f_code.co_filename}:{frame.f_lineno})"


def add(table: dict, name: str, entry, what: str, origin: str, replace: bool = False) -> None:
    """Put ``entry`` under ``name`` in ``table`` (a registry of ``what``: "model", ...)."""
    origins = _ORIGINS.setdefault(what, {})
    if name in table and not replace:
        raise UsageError(f"{what} {name!r} is already registered by {origins.get(name, 'seqmnist')}"
                         f"; {origin} registers it again. Give it another name, or pass "
                         "replace=True to replace it on purpose")
    table[name] = entry
    origins[name] = origin


def lookup(table: dict, name: str, what: str):
    """``table[name]``, or a UsageError naming what there is to choose from."""
    try:
        return table[name]
    except KeyError:
        raise UsageError(f"unknown {what} {name!r}; choose from {', '.join(table)}") from None
