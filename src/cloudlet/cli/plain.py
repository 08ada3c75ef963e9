"""VM tables and details as text, and the same text without Rich where Rich adds nothing.

What a VM's columns and detail rows say lives here, free of Rich: cli/render.py styles
them for a terminal. Printed to a pipe or a file (no terminal, nothing forcing one), Rich
adds no colour and cuts nothing (see render.print_uncut), so this module writes the very
bytes Rich would, and spares scripts Rich's import. Text Rich would read as markup or
emoji codes, or anything but printable ASCII, is left to Rich (``write_*`` answer False).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from cloudlet.engine.views import InstanceView
from cloudlet.spec.units import format_size

Column = tuple[str, Callable[[InstanceView], str]]
# Set, these make Rich treat a pipe as a terminal (or size it): Rich decides then.
_RICH_ENV = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS")
_PRINTABLE = re.compile(r"[ -~\n]*")
_MARKUP = re.compile(r"[\[\]\\]")
# Rich's emoji codes (":name:"); a clock's ":20:" is none of them.
_EMOJI = re.compile(r":(\S*?)(?:(?:\-)(emoji|text))?:")


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def cpus_text(n: int) -> str:
    return f"{n} vCPU" + ("s" if n != 1 else "")


def addresses_text(vm: InstanceView, sep: str = ", ") -> str:
    """``10.0.2.15 (nat), 10.80.1.10 (backend)``: each address with its network."""
    return sep.join(f"{ip} ({network})" for network, ip in vm.addresses.items()) or "-"


def ssh_text(vm: InstanceView) -> str:
    """Where SSH answers on this host; "-" when the VM has no SSH (tiny, or no NAT)."""
    return f"127.0.0.1:{vm.ssh_port}" if vm.ssh_access and vm.ssh_port else "-"


def _ssh_forward(vm: InstanceView) -> str:
    if vm.ssh_access and vm.ssh_port:
        return f"127.0.0.1:{vm.ssh_port} -> 22"
    return "none (image has no SSH)" if vm.ssh_port else "-"


# The default table keeps what tells VMs apart and how to reach them, and fits 80
# columns; -o wide adds the shape, the SSH forward and the accelerator.
NARROW: tuple[Column, ...] = (
    ("NAME", lambda vm: vm.name),
    ("STATE", lambda vm: vm.state),
    ("TYPE", lambda vm: vm.type),
    ("IMAGE", lambda vm: vm.image),
    ("ADDRESSES", lambda vm: addresses_text(vm, "\n")),
)
WIDE: tuple[Column, ...] = (
    ("NAME", lambda vm: vm.name),
    ("STATE", lambda vm: vm.state),
    ("TYPE", lambda vm: vm.type),
    ("VCPUS", lambda vm: cpus_text(vm.cpus)),
    ("MEMORY", lambda vm: format_size(vm.memory)),
    ("DISK", lambda vm: format_size(vm.disk_size)),
    ("IMAGE", lambda vm: vm.image),
    ("ARCH", lambda vm: vm.arch),
    ("ADDRESSES", addresses_text),
    ("SSH", ssh_text),
    ("ACCEL", lambda vm: vm.accel or "-"),
)
NO_VMS = "no VMs yet: create one with 'cloudlet create NAME'"


def detail_rows(vm: InstanceView) -> list[tuple[str, str]]:
    """Everything `show` says about one VM, in order."""
    rows: list[tuple[str, str]] = [
        ("Name", vm.name),
        ("ID", vm.id),
        ("State", vm.state),
        ("Type", f"{vm.type} ({cpus_text(vm.cpus)}, {format_size(vm.memory)})"),
        ("Disk", format_size(vm.disk_size)),
        ("Image", vm.image),
        ("Architecture", f"{vm.arch} (fixed)"),
        ("Location", f"{vm.location} (fixed)"),
        ("Accelerator", vm.accel or "-"),
        ("Network", f"{vm.network['mode']}" + (" (restricted)" if vm.network["restrict"] else "")),
        ("Addresses", addresses_text(vm)),
        ("SSH forward", _ssh_forward(vm)),
        ("QEMU pid", str(vm.pid) if vm.pid else "-"),
        ("Created", vm.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    if vm.last_error:
        rows.append(("Last error", vm.last_error))
    return rows


def _as_rich_writes(stream: TextIO, texts: Iterable[str]) -> bool:
    """Rich would write each of ``texts`` to ``stream`` unchanged: no terminal, no
    markup, no emoji code, printable ASCII only."""
    if any(name in os.environ for name in _RICH_ENV):
        return False
    try:
        if stream.isatty():
            return False
    except ValueError:
        return False
    for text in texts:
        if not _PRINTABLE.fullmatch(text) or _MARKUP.search(text):
            return False
        for match in _EMOJI.finditer(text):
            name, variant = match.group(1), match.group(2)
            if variant or not (name == "" or (name.isdigit() and len(name) <= 2)):
                return False
    return True


def write_no_vms() -> bool:
    """The empty list's note on stderr, if Rich would write it unchanged."""
    if not _as_rich_writes(sys.stderr, [NO_VMS]):
        return False
    sys.stderr.write(NO_VMS + "\n")
    return True


def write_table(items: list[InstanceView], *, wide: bool = False) -> bool:
    """The VM table as Rich lays it out (no box, no edge padding, two spaces between
    columns, every cell padded to its column), if Rich would write it unchanged."""
    columns = WIDE if wide else NARROW
    grid = [[header for header, _ in columns]]
    grid += [[cell(vm) for _, cell in columns] for vm in items]
    if not items or not _as_rich_writes(sys.stdout, (c for row in grid for c in row)):
        return False
    widths = [
        max(len(line) for row in grid for line in row[i].split("\n")) for i in range(len(columns))
    ]
    lines = []
    for row in grid:
        cells = [cell.split("\n") for cell in row]
        for n in range(max(len(c) for c in cells)):
            parts = [
                (c[n] if n < len(c) else "").ljust(w) for c, w in zip(cells, widths, strict=True)
            ]
            lines.append("  ".join(parts) + "\n")
    sys.stdout.write("".join(lines))
    return True


def write_detail(vm: InstanceView) -> bool:
    """`show`'s rows, keys padded to the longest, if Rich would write them unchanged."""
    rows = detail_rows(vm)
    if not _as_rich_writes(sys.stdout, (text for row in rows for text in row)):
        return False
    width = max(len(k) for k, _ in rows)
    sys.stdout.write("".join(f"{key:<{width}}  {value}\n" for key, value in rows))
    return True
