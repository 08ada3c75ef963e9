"""Rendering engine results for a terminal (Rich tables) or as JSON (-o json)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from cloudlet.cli import plain
from cloudlet.cli.formats import Output as Output
from cloudlet.cli.plain import addresses_text as addresses_text
from cloudlet.cli.plain import print_json as print_json
from cloudlet.cli.plain import ssh_text as ssh_text
from cloudlet.cli.wording import with_commands
from cloudlet.engine.image_views import ImageView
from cloudlet.engine.type_listing import MachineTypeOffer
from cloudlet.engine.views import ActionResult, Done, HostView, InstanceView
from cloudlet.spec.units import format_size

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

STATE_STYLE = {
    "running": "green",
    "paused": "yellow",
    "stopped": "dim",
    "crashed": "red",
    "error": "red",
}


def _state(vm: InstanceView) -> str:
    style = STATE_STYLE.get(vm.state, "")
    return f"[{style}]{vm.state}[/]" if style else vm.state


def _styled(columns: tuple[plain.Column, ...]) -> tuple[plain.Column, ...]:
    """The columns with the state in its colour."""
    return tuple((header, _state if header == "STATE" else cell) for header, cell in columns)


_NARROW = _styled(plain.NARROW)
_WIDE = _styled(plain.WIDE)


def instances_table(items: list[InstanceView], *, wide: bool = False) -> None:
    if not items:
        err.print(plain.NO_VMS)
        return
    columns = _WIDE if wide else _NARROW
    table = Table(box=None, pad_edge=False)
    for header, _ in columns:
        table.add_column(header, no_wrap=True)
    for vm in items:
        table.add_row(*(cell(vm) for _, cell in columns))
    print_uncut(table)


def print_uncut(table: Table) -> None:
    """Print ``table`` with no cell cut or wrapped: when it is wider than the terminal,
    its lines run longer (the terminal folds them) rather than lose what users type."""
    needed = Measurement.get(out, out.options.update_width(1 << 16), table).maximum
    if needed <= out.width:
        out.print(table)
        return
    wider = Console(
        file=out.file,
        width=needed,
        highlight=False,
        color_system=out.color_system,  # type: ignore[arg-type]
        force_terminal=out.is_terminal,
    )
    wider.print(table)


def instance_detail(vm: InstanceView) -> None:
    rows = plain.detail_rows(vm)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.print(f"[bold]{key:<{width}}[/]  {value}")


def share_text(value: float | None) -> str:
    """A share of the host as a percentage, "-" when not known."""
    return "-" if value is None else f"{value:.0%}"


def types_grid(types: list[MachineTypeOffer]) -> Table:
    """The machine types with their shares of this host's vCPUs and memory; a type that
    exceeds the host's limits is marked (names never wrap: they are what users type)."""
    table = Table(box=None, pad_edge=False)
    table.add_column("TYPE", no_wrap=True)
    table.add_column("FAMILY", overflow="fold")
    for column in ("VCPUS", "MEMORY", "CPU SHARE", "MEM SHARE"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("FITS", no_wrap=True)
    for t in types:
        fits = "-" if t.cpu_share is None else ("yes" if t.fits else "[red]too big[/]")
        table.add_row(
            t.name,
            t.family,
            str(t.cpus),
            format_size(t.memory),
            share_text(t.cpu_share),
            share_text(t.memory_share),
            fits,
        )
    return table


def types_table(types: list[MachineTypeOffer]) -> None:
    out.print(types_grid(types), soft_wrap=False)
    err.print("custom shapes: --cpus N --memory SIZE (with or without --type)")


def host_detail(host: HostView) -> None:
    rows = [
        ("Accelerator", f"{host.accel}: {host.accel_reason}"),
        ("QEMU", host.qemu_version),
        ("Driver", host.driver),
        ("QEMU user", host.qemu_user),
        ("vCPUs", f"{host.cpus_used} used of {host.cpu_limit} "
                  f"({host.host_cpus} cores x overcommit), {host.cpu_limit - host.cpus_used} free"),
        ("Memory", f"{format_size(host.memory_used)} used of {format_size(host.memory_limit)} "
                   f"(RAM {format_size(host.host_memory)} minus reserve), "
                   f"{format_size(max(0, host.memory_limit - host.memory_used))} free"),
        ("Architectures", ", ".join(f"{a}: {how}" for a, how in host.arches.items())),
        ("VMs", f"{host.instances} ({host.running} running)"),
        ("State directory", host.home),
    ]  # fmt: skip
    if host.accel_note:
        rows.insert(1, ("Note", host.accel_note))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.print(f"[bold]{key:<{width}}[/]  {value}")


def images_table(items: list[ImageView]) -> None:
    if not items:
        err.print("no images yet: 'cloudlet image build tiny' or 'cloudlet image pull NAME'")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "ARCH", "OS", "SIZE", "LICENCE", "BOOT", "USED BY"):
        table.add_column(column)
    for i in items:
        table.add_row(
            i.name,
            i.arch,
            i.os,
            format_size(i.min_disk_bytes),
            i.licence,
            i.boot,
            ", ".join(i.used_by) or "-",
        )
    out.print(table)


def key_values(data: dict[str, Any]) -> None:
    width = max(len(k) for k in data)
    for key, value in data.items():
        out.print(f"[bold]{key:<{width}}[/]  {value}")


def said(result: ActionResult | Done) -> None:
    """What a change did, in one line, with this CLI's commands for its next steps."""
    err.print(with_commands(result.message, result.next_steps))
