"""How a read command prints, apart from Typer so a quick read (cli/entry.py) needs no Typer."""

from __future__ import annotations

from enum import StrEnum


class Output(StrEnum):
    """How a read command prints: a table that fits the terminal, every column, or JSON."""

    table = "table"
    wide = "wide"
    json = "json"
