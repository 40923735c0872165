"""Small text helpers so that numbers and durations in rules read exactly as configured."""

from __future__ import annotations

import json
from decimal import Decimal


def number_text(value: float) -> str:
    """5.0 -> "5", 0.25 -> "0.25", 99.9 -> "99.9": no float noise, no exponent."""
    return format(Decimal(repr(float(value))).normalize(), "f")


def ratio_text(percent: float) -> str:
    """A percentage as an exact 0..1 ratio: 80 -> "0.8", 99.9 -> "0.999"."""
    return format((Decimal(repr(float(percent))) / 100).normalize(), "f")


def duration(seconds: float) -> str:
    """Seconds as a Prometheus duration in the largest unit that divides them: 120 -> "2m"."""
    millis = round(seconds * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"


def selector(labels: dict[str, str], regex: bool = False) -> str:
    """{k="v", ...}; values quoted as JSON strings, which PromQL reads the same way for plain text."""
    op = "=~" if regex else "="
    return "{" + ", ".join(f"{key}{op}{json.dumps(value)}" for key, value in labels.items()) + "}"
