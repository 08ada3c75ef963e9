"""`cloudlet pool|volume|snapshot ...` and `cloudlet clone`: parse, call the engine, render."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cloudlet.cli import complete
from cloudlet.cli.options import Output, SnapArg, VmArg, VolumeArg
from cloudlet.errors import InvalidInput
from cloudlet.spec.units import format_size, parse_size_with_unit

# Rich and the engine are imported on first use (cli/lazy.py): start-up stays cheap.
if TYPE_CHECKING:
    from rich.table import Table

    from cloudlet.cli import render
    from cloudlet.cli.progress import tracked
    from cloudlet.cli.render import err, out
    from cloudlet.engine.factory import open_engine
    from cloudlet.engine.storage import StorageService
    from cloudlet.engine.storage_views import PoolView, SnapshotView, VolumeView
else:
    from cloudlet.cli.lazy import lazy

    Table = lazy("rich.table", "Table")
    render = lazy("cloudlet.cli.render")
    err = lazy("cloudlet.cli.render", "err")
    out = lazy("cloudlet.cli.render", "out")
    open_engine = lazy("cloudlet.engine.factory", "open_engine")
    tracked = lazy("cloudlet.cli.progress", "tracked")

pool_app = typer.Typer(
    help="Storage pools (directories or LVM) that hold volumes.", no_args_is_help=True
)
volume_app = typer.Typer(help="Data volumes: create, attach, grow, detach.", no_args_is_help=True)
snapshot_app = typer.Typer(help="Live snapshots of a VM's root disk.", no_args_is_help=True)

OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="table or json")]


def _ops() -> StorageService:
    return open_engine().storage


def _notices(ops: StorageService) -> None:
    for notice in ops.notices:
        err.print(f"[yellow]note:[/] {notice}")


def register(app: typer.Typer) -> None:
    app.add_typer(pool_app, name="pool")
    app.add_typer(volume_app, name="volume")
    app.add_typer(snapshot_app, name="snapshot")
    app.command("clone")(clone)


# ---------------------------------------------------------------- pools
def _pools_table(items: list[PoolView]) -> None:
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "KIND", "PATH", "FS SIZE", "FS FREE", "VOLUMES", "ALLOCATED", "THIN"):
        table.add_column(column)
    for p in items:
        table.add_row(
            p.name,
            p.kind,
            p.path,
            format_size(p.fs_total),
            format_size(p.fs_free),
            str(p.volumes),
            format_size(p.allocated),
            f"{format_size(p.committed)} of {format_size(p.limit)}",
        )
    out.print(table)


@pool_app.command("list")
def pool_list(output: OutputOpt = Output.table) -> None:
    """Pools with their file system's size and free space, and what volumes take."""
    items = _ops().pools()
    if output == Output.json:
        render.print_json([p.to_dict() for p in items])
    else:
        _pools_table(items)


@pool_app.command("create")
def pool_create(
    name: Annotated[str, typer.Argument(help="pool name")],
    devices: Annotated[
        list[str] | None, typer.Argument(help="block devices of an LVM pool (with --lvm)")
    ] = None,
    path: Annotated[
        Path | None, typer.Option(help="directory for the pool's volumes (directory pool)")
    ] = None,
    lvm: Annotated[
        bool, typer.Option("--lvm", help="one LVM volume group (thin) over the DEVICES")
    ] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Create a directory pool (--path DIR) or an LVM pool (--lvm /dev/sdb /dev/sdc ...)."""
    if lvm == (path is not None) or (devices and not lvm):
        raise InvalidInput(
            "give either --path DIR or --lvm DEVICE...",
            hint="'cloudlet pool create fast --path /srv/fast' or "
            "'cloudlet pool create big --lvm /dev/sdb /dev/sdc'",
        )
    ops = _ops()
    if lvm:
        pool = ops.pool_create(name, kind="lvm", devices=tuple(devices or ()))
    else:
        assert path is not None
        pool = ops.pool_create(name, path.expanduser().absolute())
    _notices(ops)
    if output == Output.json:
        render.print_json(pool.to_dict())
    else:
        err.print(f"pool {name} created at {pool.path} ({format_size(pool.fs_total)})")


@pool_app.command("delete")
def pool_delete(name: Annotated[str, typer.Argument(help="pool name")]) -> None:
    """Delete an empty pool (a directory stays; an LVM pool's VG and PV labels go)."""
    render.said(_ops().pool_delete(name))


# ---------------------------------------------------------------- volumes
def _volumes_table(items: list[VolumeView]) -> None:
    if not items:
        err.print("no volumes yet: 'cloudlet volume create NAME --size 10G'")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("NAME", "POOL", "SIZE", "ALLOCATED", "ATTACHED TO"):
        table.add_column(column)
    for v in items:
        table.add_row(
            v.name, v.pool, format_size(v.size), format_size(v.allocated), v.attached_to or "-"
        )
    out.print(table)


@volume_app.command("list")
def volume_list(output: OutputOpt = Output.table) -> None:
    """Volumes, their pools and the VMs they are attached to."""
    items = _ops().volumes()
    if output == Output.json:
        render.print_json([v.to_dict() for v in items])
    else:
        _volumes_table(items)


@volume_app.command("create")
def volume_create(
    name: VolumeArg,
    size: Annotated[str, typer.Option(help="virtual size, e.g. 50G (thin: grows as used)")],
    pool: Annotated[str | None, typer.Option(help="pool (default: default)")] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create an empty thin volume (qcow2 file, or thin LV in an LVM pool)."""
    size_bytes = parse_size_with_unit(size, what="volume size", example_unit="G")
    vol = _ops().volume_create(name, size_bytes, pool)
    if output == Output.json:
        render.print_json(vol.to_dict())
    else:
        err.print(f"volume {name} created: {format_size(vol.size)} in pool {vol.pool}")


@volume_app.command("attach")
def volume_attach(name: VolumeArg, vm: VmArg) -> None:
    """Attach a volume: hot-plugged into a running VM, or at the next start."""
    render.said(_ops().volume_attach(name, vm))


@volume_app.command("detach")
def volume_detach(name: VolumeArg) -> None:
    """Detach a volume (the guest releases the device first)."""
    render.said(_ops().volume_detach(name))


@volume_app.command("resize")
def volume_resize(
    name: VolumeArg, size: Annotated[str, typer.Argument(help="new size, e.g. 80G")]
) -> None:
    """Grow a volume (online when its VM runs); shrinking is refused."""
    size_bytes = parse_size_with_unit(size, what="volume size", example_unit="G")
    render.said(_ops().volume_resize(name, size_bytes))


@volume_app.command("delete")
def volume_delete(name: VolumeArg) -> None:
    """Delete a detached volume and its data."""
    render.said(_ops().volume_delete(name))


# ---------------------------------------------------------------- snapshots
def _snapshot_chain(vm: str, items: list[SnapshotView]) -> None:
    if not items:
        err.print(f"{vm} has no snapshots: 'cloudlet snapshot create {vm} NAME'")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("CHAIN", "CREATED", "SIZE", "KIND", "LINKED CLONES"):
        table.add_column(column)
    for depth, s in enumerate(items):
        kind = ("live, fs frozen" if s.frozen else "live") if s.live else "offline"
        if s.memory:
            kind = "live + memory"
        table.add_row(
            ("  " * depth + "└─ " if depth else "") + s.name,
            s.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            format_size(s.size),
            kind,
            ", ".join(s.linked_clones) or "-",
        )
    table.add_row("  " * len(items) + "└─ (current disk)", "now", "", "", "")
    out.print(table)


@snapshot_app.command("create")
def snapshot_create(
    vm: VmArg,
    name: SnapArg,
    memory: Annotated[
        bool,
        typer.Option(
            "--memory",
            help="also keep RAM and device state: a revert resumes the VM where it was",
        ),
    ] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Snapshot the root disk (live; file systems frozen through the guest agent)."""
    ops = _ops()
    with tracked(f"snapshotting {vm}", quiet=output == Output.json) as progress:
        snap = ops.snapshot_create(vm, name, memory=memory, progress=progress)
    _notices(ops)
    if output == Output.json:
        render.print_json(snap.to_dict())
    else:
        how = "file systems frozen" if snap.frozen else ("live" if snap.live else "offline")
        if snap.memory:
            how = "with memory"
        err.print(f"snapshot {name} of {vm} taken ({how})")


@snapshot_app.command("list")
def snapshot_list(vm: VmArg, output: OutputOpt = Output.table) -> None:
    """A VM's snapshots, oldest first: each one builds on the one above it."""
    items = _ops().snapshots(vm)
    if output == Output.json:
        render.print_json([s.to_dict() for s in items])
    else:
        _snapshot_chain(vm, items)


@snapshot_app.command("revert")
def snapshot_revert(
    vm: VmArg,
    name: SnapArg,
    force: Annotated[bool, typer.Option("--force", "-f", help="stop a running VM first")] = False,
) -> None:
    """Put the disk back to a snapshot (later snapshots are discarded). The VM must be stopped.

    A snapshot taken with --memory then resumes the VM where it was when it was taken.
    """
    with tracked(f"reverting {vm}") as progress:
        done = _ops().snapshot_revert(vm, name, force=force, progress=progress)
    render.said(done)


@snapshot_app.command("delete")
def snapshot_delete(vm: VmArg, name: SnapArg) -> None:
    """Delete a snapshot; its data is merged into the layer above, so nothing is lost."""
    with err.status(f"merging snapshot {name} ..."):
        render.said(_ops().snapshot_delete(vm, name))


# ---------------------------------------------------------------- clone
def clone(
    source: Annotated[str, typer.Argument(help="VM to clone", autocompletion=complete.vms)],
    name: Annotated[str, typer.Argument(help="name of the new VM")],
    linked: Annotated[
        bool,
        typer.Option("--linked", help="a thin overlay on a snapshot (default: newest)"),
    ] = False,
    snapshot: Annotated[
        str | None,
        typer.Option(
            help="clone this snapshot (works while the VM runs)",
            autocompletion=complete.snapshots,
        ),
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Clone a VM: a full copy of a stopped VM's disk or of a snapshot, or a linked clone."""
    ops = _ops()
    with err.status(f"cloning {source} ..."):
        vm = ops.clone(source, name, linked=linked, snapshot=snapshot)
    if output == Output.json:
        render.print_json(vm.to_dict())
    else:
        err.print(f"{name} created ({'linked' if linked else 'full'} clone of {source}, stopped)")
        render.instances_table([vm])
