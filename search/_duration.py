"""Durations as people write them in study files and options: ``45s``, ``90m``, ``2h``, ``1h30m``, ``1d``."""

from __future__ import annotations

import re

from frandi_core import FrandiError

__all__ = ["DurationError", "parse_duration"]

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


class DurationError(FrandiError):
    """A duration is not written as numbers with units (s, m, h, d)."""


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds in ``text``: one or more parts of a number and a unit, e.g. ``90m`` or ``1h30m``; more than 0."""
    compact = text.strip().lower().replace(" ", "")
    parts = _PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise DurationError(
            f"{what} '{text}' is not a duration; write a number with a unit (s, m, h, d), e.g. 45s, 90m, 2h or 1h30m"
        )
    seconds = sum(float(n) * UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise DurationError(f"{what} '{text}' must be longer than 0")
    return seconds
