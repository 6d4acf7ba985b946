"""Small formatting helpers for terminal output."""

from __future__ import annotations

import datetime as dt

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_size(text: str) -> int:
    """``'4MiB'``, ``'4M'``, ``'512k'``, ``'1048576'`` -> bytes. Raises ValueError."""
    cleaned = text.strip().lower().replace(" ", "")
    multipliers = {
        "": 1, "b": 1,
        "k": 1024, "kb": 1000, "kib": 1024,
        "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
        "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
        "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
    }  # fmt: skip
    number = cleaned.rstrip("kmgtib")
    suffix = cleaned[len(number) :]
    try:
        value = float(number) * multipliers[suffix]
    except (KeyError, ValueError):
        raise ValueError(f"not a size: {text!r} (try 4MiB, 512k, 1048576)") from None
    if value != int(value) or value < 0:
        raise ValueError(f"not a whole number of bytes: {text!r}")
    return int(value)


def parse_duration(text: str) -> float:
    """``'7d'``, ``'12h'``, ``'30m'``, ``'45s'``, ``'90'`` -> seconds. Raises ValueError."""
    cleaned = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    suffix = cleaned[-1:] if cleaned[-1:] in units else "s"
    number = cleaned[:-1] if cleaned[-1:] in units else cleaned
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (try 7d, 12h, 30m, 45s)") from None
    if value < 0:
        raise ValueError(f"duration must not be negative: {text!r}")
    return value * units[suffix]


def relative_time(when: dt.datetime, now: dt.datetime) -> str:
    """How long before ``now`` ``when`` was, for people: ``'42s ago'``, ``'3h ago'``."""
    seconds = max(0, int((now - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def iso_utc(when: dt.datetime) -> str:
    """A naive-UTC timestamp from the store as ISO 8601 with an explicit ``Z``."""
    return when.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")
