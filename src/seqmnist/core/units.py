"""Durations as people write them: ``90s``, ``10m``, ``2h``, ``1h30m`` or plain seconds."""

from __future__ import annotations

import math
import re

from .errors import UsageError

SECONDS = {"s": 1, "m": 60, "h": 3600}
MAX_SECONDS = 30 * 24 * 3600  # a month: anything longer is a typo
_PART = re.compile(r"(\d+(?:\.\d+)?)([smh])")


def parse_duration(text: str | float | int) -> float:
    """Seconds in ``text`` (``"90s"``, ``"10m"``, ``"1h30m"``, ``"45"``, or a number), or a
    UsageError saying what is accepted."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    elif isinstance(text, str):
        s = text.strip().lower().replace(" ", "")
        try:
            seconds = float(s)
        except ValueError:
            parts = _PART.findall(s)
            if not parts or "".join(n + u for n, u in parts) != s:
                raise UsageError(f"a duration is a number of seconds or like 90s, 10m, 2h or "
                                 f"1h30m; got {text[:40]!r}") from None
            seconds = sum(float(n) * SECONDS[u] for n, u in parts)
    else:
        raise UsageError(f"a duration must be text like 10m or a number of seconds, got "
                         f"{str(text)[:40]!r}")
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
        raise UsageError(f"a duration must be more than 0 s and at most 30 days, got {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``90`` -> ``1m30s``, ``300`` -> ``5m``, ``7200`` -> ``2h``, ``12.5`` -> ``12.5s``."""
    if seconds < 60:
        return f"{seconds:g}s"
    whole = round(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v)
