"""Durations in policy and config files: `30s`, `5m`, `1h30m`, `2d`, or a number of seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: object) -> float:
    """Seconds for a duration value; raise ValueError with what was expected."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h, got a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("expected a duration of zero or more")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {type(value).__name__}")
    return _parse_text(value.strip().lower())


def _parse_text(text: str) -> float:
    if not text:
        raise ValueError("expected a duration such as 30s, 5m or 1h, got an empty value")
    position, total = 0, 0.0
    for part in _PART.finditer(text):
        if part.start() != position:
            break
        total += float(part.group(1)) * _UNITS[part.group(2)]
        position = part.end()
    if position != len(text):
        raise ValueError(f"expected a duration such as 30s, 5m or 1h, got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """Short human form: 0s, 45s, 5m, 1h30m, 2d."""
    if seconds <= 0:
        return "0s"
    remaining, parts = int(round(seconds)), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if remaining >= size:
            parts.append(f"{remaining // size}{unit}")
            remaining %= size
    return "".join(parts) or "0s"


def describe_duration(seconds: float) -> str:
    """Plain words for end users: '5 minutes', '1 hour', '30 seconds'."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = round(seconds / size)
            return f"{count} {unit}{'' if count == 1 else 's'}"
    count = max(0, round(seconds))
    return f"{count} second{'' if count == 1 else 's'}"
