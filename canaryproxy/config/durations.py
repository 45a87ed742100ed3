"""Numbers and durations as the config file writes them, and values as messages show them.

Each parser takes the raw value and returns it parsed, or raises ValueError carrying the
message only (``must be between 0 and 100, got 140``); the caller adds the key path.

Rules this module keeps:
- booleans are not numbers: YAML reads ``yes``/``on`` as true, which must not mean 1;
  NaN and infinities are never in range;
- a duration is a string with one unit (``250ms``, ``2s``, ``1.5m``, ``1h``, ``1d``), a
  plain number of seconds, or a string holding a plain number (what ``${VAR}``
  interpolation yields for ``timeout: ${TIMEOUT}``);
- negative, NaN and infinite durations are rejected; ``duration(allow_zero=...)`` says
  whether zero makes sense.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

DURATION_HINT = "must be a duration like 250ms, 2s, 1m, 1h, 1d or a number of seconds"

# unit -> (multiplier, divisor); milliseconds divide so that 250ms is exactly 0.25.
_UNITS = {"ms": (1, 1000), "s": (1, 1), "m": (60, 1), "h": (3600, 1), "d": (86400, 1)}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)?")
_LARGEST_FIRST = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0))


def show(value: object) -> str:
    """Render a config value in an error message the way the user wrote it (YAML spelling)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return repr(value)


def parse_duration(value: object) -> float:
    """Seconds in ``value``; raise ValueError with the message only (no key path)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{DURATION_HINT}, got {show(value)}")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match is None:
            raise ValueError(f"{DURATION_HINT}, got {show(value)}")
        multiplier, divisor = _UNITS[match[2] or "s"]
        seconds = float(match[1]) * multiplier / divisor
    else:
        seconds = float(value) if abs(value) < 1e300 else math.inf
    if not math.isfinite(seconds):
        raise ValueError(f"{DURATION_HINT}, got {show(value)}")
    if seconds < 0:
        raise ValueError(f"must not be negative, got {show(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest config spelling of ``seconds`` (``86400`` -> ``1d``, ``0.25`` -> ``250ms``)."""
    for unit, size in _LARGEST_FIRST:
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if 0 < seconds < 1 and round(seconds * 1000, 6).is_integer():
        return f"{round(seconds * 1000)}ms"
    return f"{seconds:g}s"


def parse_canary_weight(value: object) -> float:
    """A canary weight in percent, 0–100, decimals allowed (shared with the admin API)."""
    number = _number(value)
    if not 0 <= number <= 100:  # NaN fails this comparison too
        raise ValueError(f"must be between 0 and 100, got {show(value)}")
    return float(number)


def _number(value: object) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, got {show(value)}")
    return value


def whole(low: int, high: int | None = None) -> Callable[[object], int]:
    """A parser for whole numbers in [low, high] (no upper bound when ``high`` is None)."""
    limits = f"between {low} and {high}" if high is not None else f"at least {low}"

    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, got {show(value)}")
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be {limits}, got {show(value)}")
        return value

    return parse


def fraction(high: float, *, include_high: bool) -> Callable[[object], float]:
    """A parser for numbers in (0, high), or (0, high] with ``include_high``."""
    limits = f"greater than 0 and {'at most' if include_high else 'less than'} {high:g}"

    def parse(value: object) -> float:
        number = _number(value)
        if not (0 < number < high or (include_high and number == high)):
            raise ValueError(f"must be {limits}, got {show(value)}")
        return float(number)

    return parse


def duration(*, allow_zero: bool) -> Callable[[object], float]:
    """A parser for durations, in seconds; zero only where ``allow_zero``."""

    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if seconds == 0 and not allow_zero:
            raise ValueError(f"must be greater than 0, got {show(value)}")
        return seconds

    return parse
