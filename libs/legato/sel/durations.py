"""Duration text: ``"90s"``, ``"10m"``, ``"2h"``, ``"1d"``, ``"1h30m"``, ``"1.5s"``, ``"250ms"``, ``"2w"``.

Shared by SEL (``duration("1h")``, text of a duration value) and the definition model.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d|w)")
_NUMBER = re.compile(r"\s*[+-]?(\d+(?:\.\d+)?|\.\d+)\s*")
_MAX_TEXT = 64
# timedelta's own range, in seconds; anything beyond cannot be a duration value.
MAX_SECONDS = timedelta.max.total_seconds()


def parse_duration_text(text: str) -> float:
    """Seconds in a duration text; raises ValueError with the reason when it is not one."""
    if len(text) > _MAX_TEXT:
        raise ValueError(f"duration text is longer than {_MAX_TEXT} characters")
    body = text.strip()
    if _NUMBER.fullmatch(body):
        seconds = float(body)
    else:
        sign = 1.0
        if body.startswith("-"):
            sign, body = -1.0, body[1:]
        pos, total, seen = 0, 0.0, []
        while pos < len(body):
            m = _PART.match(body, pos)
            if m is None:
                raise ValueError(
                    f"invalid duration {text!r}: expected a number of seconds or parts like 90s, 10m, 2h, 1d, 1h30m"
                )
            unit = m.group(2)
            if unit in seen:
                raise ValueError(f"invalid duration {text!r}: unit {unit!r} appears twice")
            seen.append(unit)
            total += float(m.group(1)) * _UNIT_SECONDS[unit]
            pos = m.end()
        if not seen:
            raise ValueError(f"invalid duration {text!r}: empty")
        seconds = sign * total
    if not math.isfinite(seconds) or abs(seconds) > MAX_SECONDS:
        raise ValueError(f"duration {text!r} is out of range")
    return seconds


def format_duration(seconds: float) -> str:
    """Compact text of a number of seconds: 5400 -> "1h30m", 1.5 -> "1.5s", 0 -> "0s"."""
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite duration: {seconds!r}")
    if seconds < 0:
        return "-" + format_duration(-seconds)
    micros = round(seconds * 1_000_000)
    whole, frac = divmod(micros, 1_000_000)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if days:
        parts.append(f"{days}d")
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if secs or frac or not parts:
        text = str(secs) if not frac else f"{secs}.{frac:06d}".rstrip("0")
        parts.append(f"{text}s")
    return "".join(parts)
