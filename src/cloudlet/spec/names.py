"""VM names: the same rule as a DNS label, so a name can become a hostname."""

from __future__ import annotations

import re

from cloudlet.errors import InvalidInput

NAME_RULE = "1-63 characters: lowercase letters, digits and '-', starting with a letter"
_NAME = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def validate_name(name: str, *, what: str = "VM name") -> str:
    """Return ``name`` if it is valid, else raise InvalidInput saying the rule."""
    if not _NAME.match(name):
        raise InvalidInput(f"invalid {what} {name!r}", hint=f"use {NAME_RULE}, not ending in '-'")
    return name
