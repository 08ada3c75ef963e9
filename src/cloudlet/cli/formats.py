"""The read commands' names and how they print, apart from Typer: the quick reads
(cli/entry.py, cli/quick.py) need no Typer."""

from __future__ import annotations

from enum import StrEnum

# The read commands and their hidden aliases (cli/main.py declares them to Typer).
LIST_NAMES = ("list", "ls")
SHOW_NAMES = ("show", "info")


class Output(StrEnum):
    """How a read command prints: a table that fits the terminal, every column, or JSON."""

    table = "table"
    wide = "wide"
    json = "json"
