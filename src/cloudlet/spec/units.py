"""Human sizes ("1G", "512M", "1.5GiB") to bytes and back."""

from __future__ import annotations

import re

from cloudlet.errors import InvalidInput

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB

_SUFFIX = {"": 1, "B": 1, "K": KIB, "M": MIB, "G": GIB, "T": TIB}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str, *, what: str = "size", default_unit: str = "") -> int:
    """Parse "20G", "512MiB", "1.5g" (binary units) into bytes.

    ``default_unit`` applies to a bare number ("2048" with "M" means 2048 MiB).
    """
    match = _SIZE.match(str(text))
    if not match:
        raise InvalidInput(
            f"invalid {what} {text!r}", hint="use a number with a unit, such as 512M, 2G or 20GiB"
        )
    number, unit = match.groups()
    unit = (unit or default_unit).upper()
    value = float(number) * _SUFFIX[unit]
    if value <= 0:
        raise InvalidInput(f"invalid {what} {text!r}", hint="it must be greater than zero")
    return int(value)


def parse_size_with_unit(text: str, *, what: str = "size", example_unit: str = "M") -> int:
    """Like :func:`parse_size`, but a bare number is refused: typed by a person, "512"
    is more likely a slip than 512 bytes (spec files keep their documented bytes).
    """
    bare = str(text).strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", bare):
        raise InvalidInput(
            f"{what} {bare} has no unit",
            hint=f"{bare} what? write {bare}{example_unit} or {bare}{example_unit}iB",
        )
    return parse_size(text, what=what)


def format_size(n: int) -> str:
    """Bytes as the shortest exact-ish binary unit: 1073741824 -> "1 GiB"."""
    for unit, factor in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= factor:
            value = n / factor
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
    return f"{n} B"


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str, *, what: str = "interval") -> int:
    """Parse "90s", "30m", "1h", "7d", "2w" (a bare number is minutes) into seconds."""
    value = str(text).strip().lower()
    unit = value[-1:] if value[-1:] in _DURATION_UNITS else "m"
    number = value[:-1] if value[-1:] in _DURATION_UNITS else value
    if not number.isdigit() or int(number) <= 0:
        raise InvalidInput(
            f"invalid {what} {text!r}", hint="use a number with s, m, h, d or w, such as 1h"
        )
    return int(number) * _DURATION_UNITS[unit]


def format_duration(seconds: int) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds % _DURATION_UNITS[unit] == 0:
            return f"{seconds // _DURATION_UNITS[unit]}{unit}"
    return f"{seconds}s"
