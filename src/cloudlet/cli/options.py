"""Option types the commands declare, kept free of Rich and the engine.

Typer reads a command's annotations when it builds that command, so the types they name
must be real and cheap to import: ``cloudlet --help`` loads every command module.
"""

from __future__ import annotations

from enum import StrEnum


class Output(StrEnum):
    table = "table"
    json = "json"
