"""What the create wizard prints: help lines and tables that fit the terminal.

The names in a table are what the user must type, so they are never cut or wrapped: the
other columns give way, and a terminal too narrow for a table gets one line per choice.
Help text wraps at word boundaries (the CLI's consoles soft-wrap, which lets the
terminal break words).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cloudlet.engine.image_menu import ImageChoice

PAD = 2  # Rich's padding between columns of a box-less table
HEADERS = ("IMAGE", "OS", "LICENCE", "CLOUD-INIT", "WHERE")
NARROWEST_OTHERS = 8  # the least width a wrapping column needs to stay readable


def help_line(console: Console, text: str) -> None:
    """A dim line of help, wrapped at word boundaries to the console's width."""
    console.print(f"[dim]{text}[/]", soft_wrap=False)


def _where(choice: ImageChoice) -> str:
    return "here" if choice.here else "catalog"


def images(console: Console, choices: list[ImageChoice]) -> None:
    """The images on offer, as a table when the names fit whole beside the other columns."""
    name_width = max([len(HEADERS[0]), *(len(c.name) for c in choices)])
    fixed = name_width + len("CLOUD-INIT") + len("catalog")
    if fixed + 2 * NARROWEST_OTHERS + PAD * (len(HEADERS) - 1) > console.width:
        for c in choices:
            console.print(escape(c.name), soft_wrap=False, overflow="ignore", crop=False)
            line = f"{c.os}; licence {c.licence}; cloud-init {_yes(c.cloud_init)}; {_where(c)}"
            help_line(console, f"  {escape(line)}")
        return
    table = Table(box=None, pad_edge=False)
    table.add_column(HEADERS[0], no_wrap=True, min_width=name_width)
    table.add_column(HEADERS[1], overflow="fold")
    table.add_column(HEADERS[2], overflow="fold")
    table.add_column(HEADERS[3], no_wrap=True)
    table.add_column(HEADERS[4], no_wrap=True)
    for c in choices:
        table.add_row(
            escape(c.name), escape(c.os), escape(c.licence), _yes(c.cloud_init), _where(c)
        )
    console.print(table, soft_wrap=False)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def free_path(directory: Path, name: str) -> Path:
    """``NAME.yaml`` in ``directory``, or ``NAME-2.yaml``, ``NAME-3.yaml`` ... when taken."""
    candidate = directory / f"{name}.yaml"
    number = 2
    while candidate.exists():
        candidate = directory / f"{name}-{number}.yaml"
        number += 1
    return candidate
