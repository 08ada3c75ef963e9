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


def format_size(n: int) -> str:
    """Bytes as the shortest exact-ish binary unit: 1073741824 -> "1 GiB"."""
    for unit, factor in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= factor:
            value = n / factor
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
    return f"{n} B"
