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
from rich.padding import Padding
from rich.table import Table

from cloudlet.cli.render import share_text, types_grid
from cloudlet.engine.image_menu import ImageChoice
from cloudlet.engine.type_listing import MachineTypeOffer
from cloudlet.spec.machine_types import CUSTOM
from cloudlet.spec.units import format_size

PAD = 2  # Rich's padding between columns of a box-less table
HEADERS = ("IMAGE", "OS", "LICENCE", "CLOUD-INIT", "WHERE")
NARROWEST_OTHERS = 8  # the least width a wrapping column needs to stay readable


def help_line(console: Console, text: str, *, indent: int = 0) -> None:
    """A dim line of help, wrapped at word boundaries to the console's width."""
    console.print(Padding(f"[dim]{text}[/]", (0, 0, 0, indent), expand=False), soft_wrap=False)


def _where(choice: ImageChoice) -> str:
    return "here" if choice.here else "catalog"


def images(console: Console, choices: list[ImageChoice]) -> None:
    """The images on offer, as a table when the names fit whole beside the other columns."""
    name_width = max([len(HEADERS[0]), *(len(c.name) for c in choices)])
    fixed = name_width + len("CLOUD-INIT") + len("catalog")
    if fixed + 2 * NARROWEST_OTHERS + PAD * (len(HEADERS) - 1) > console.width:
        for c in choices:
            console.print(escape(c.name), soft_wrap=False, overflow="ignore", crop=False)
            parts = [c.os, f"licence {c.licence}", f"cloud-init {_yes(c.cloud_init)}", _where(c)]
            line = "; ".join(part for part in parts if part)
            help_line(console, escape(line), indent=2)
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


def machine_types(console: Console, offers: list[MachineTypeOffer]) -> None:
    """The machine types and custom, as a table when the names fit whole beside the
    numbers, else one line per type."""
    name_width = max(len(t.name) for t in offers)
    numbers = len("VCPUS") + len("512 MiB") + len("CPU SHARE") + len("MEM SHARE")
    if name_width + NARROWEST_OTHERS + numbers + len("too big") + PAD * 6 <= console.width:
        table = types_grid(offers)
        table.add_row(CUSTOM, "your vCPUs and memory", "", "", "", "", "")
        console.print(table, soft_wrap=False)
        return
    for t in offers:
        fits = "fits" if t.fits else "[red]too big[/]"
        console.print(t.name, soft_wrap=False, overflow="ignore", crop=False)
        help_line(
            console,
            f"{t.family}: {t.cpus} vCPU{'s' if t.cpus != 1 else ''}, {format_size(t.memory)}; "
            f"{share_text(t.cpu_share)} of the cores, {share_text(t.memory_share)} of the "
            f"memory; {fits}",
            indent=2,
        )
    console.print(CUSTOM, soft_wrap=False, overflow="ignore", crop=False)
    help_line(console, "your vCPUs and memory", indent=2)


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
