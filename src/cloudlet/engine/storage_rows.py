"""The storage records the rest of the engine reads: a VM's disk layers, volumes, snapshots.

The root disk of a VM is a chain of qcow2 layers::

    image <- disk.qcow2 <- layers/A.qcow2 <- layers/B.qcow2 (active: the guest writes here)

Taking a snapshot freezes the active layer (the snapshot's ``file``) and puts a new,
empty layer on top. So every snapshot owns exactly one frozen layer, in creation
order, and the layer above the newest snapshot is the active one (``instance_disks``).
These hooks (launch, teardown, delete, backups and the storage services call them)
take only the shared context, so they import no service.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from cloudlet.driver.base import ExtraDisk
from cloudlet.engine import vm_state
from cloudlet.errors import Conflict
from cloudlet.spec.states import VMState
from cloudlet.store.models import InstanceDiskRow, InstanceRow, SnapshotRow, VolumeRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext

STORAGE_LOCK = ".storage"
DEFAULT_POOL = "default"
DETACH_TIMEOUT = 60.0
OFFLINE = {VMState.STOPPED, VMState.CRASHED, VMState.ERROR}
ONLINE = {VMState.RUNNING, VMState.PAUSED}


def default_disk(ctx: EngineContext, instance_id: str) -> Path:
    return ctx.paths.instance_dir(instance_id) / "disk.qcow2"


def active_disk(ctx: EngineContext, instance_id: str, *, heal: bool = False) -> Path:
    """The layer the guest writes to: disk.qcow2 until a snapshot moves it.

    ``heal`` (only for callers holding the VM's lock): a snapshot is recorded before
    its layer is made; if the layer never came to be (the process died in between),
    roll that record back.
    """
    with ctx.db.session() as s:
        row = s.get(InstanceDiskRow, instance_id)
    if row is None:
        return default_disk(ctx, instance_id)
    path = Path(row.active_path)
    if heal and not path.exists():
        snaps = snapshot_rows(ctx, instance_id)
        if snaps and Path(snaps[-1].file).exists():
            below = Path(snaps[-1].file)
            undo_snapshot(ctx, instance_id, snaps[-1].id, below)
            with ctx.db.session() as s:
                vm = s.get(InstanceRow, instance_id)
            message = f"dropped snapshot {snaps[-1].name}: its layer was never made"
            ctx.event(vm.name if vm is not None else instance_id, "recovered", message)
            return below
    return path


def state_file(layer: Path | str) -> Path:
    """Where a memory snapshot keeps its RAM and device state: next to its layer."""
    return Path(f"{layer}.vmstate")


def linked_base(ctx: EngineContext, instance_id: str) -> Path | None:
    """The snapshot layer (of another VM) a linked clone's disk grows from, or None."""
    with ctx.db.session() as s:
        row = s.get(InstanceDiskRow, instance_id)
        origin = row.origin_snapshot_id if row is not None else None
        snap = s.get(SnapshotRow, origin) if origin is not None else None
        return Path(snap.file) if snap is not None else None


def undo_snapshot(ctx: EngineContext, instance_id: str, snap_id: str, old_top: Path) -> None:
    with ctx.db.session() as s:
        snap = s.get(SnapshotRow, snap_id)
        if snap is not None:
            s.delete(snap)
        set_active(s, instance_id, old_top)


def attached_volumes(ctx: EngineContext, instance_id: str) -> list[VolumeRow]:
    """The volumes attached to a VM, in slot order."""
    with ctx.db.session() as s:
        return list(
            s.scalars(
                select(VolumeRow)
                .where(VolumeRow.instance_id == instance_id)
                .order_by(VolumeRow.slot, VolumeRow.name)
            ).all()
        )


def boot_disks(ctx: EngineContext, instance_id: str) -> tuple[ExtraDisk, ...]:
    """The volumes attached to a VM, for its launch config (in slot order)."""
    return tuple(extra_disk(v) for v in attached_volumes(ctx, instance_id))


def attached_volume_names(ctx: EngineContext, instance_id: str) -> list[str]:
    return sorted(v.name for v in attached_volumes(ctx, instance_id))


def check_deletable(ctx: EngineContext, row: InstanceRow) -> None:
    """A VM whose snapshots carry linked clones cannot go: their disks grow from it."""
    clones = clones_of(ctx, [s.id for s in snapshot_rows(ctx, row.id)])
    if clones:
        raise Conflict(
            f"{row.name} has linked clones ({', '.join(sorted(clones))}) built on its snapshots",
            hint="delete the linked clones first",
        )


def forget(ctx: EngineContext, instance_id: str) -> None:
    """The VM is gone: its volumes stay (detached), its snapshot records go."""
    with ctx.db.session() as s:
        for vol in s.scalars(select(VolumeRow).where(VolumeRow.instance_id == instance_id)):
            vol.instance_id = None
            vol.slot = None
        for snap in s.scalars(select(SnapshotRow).where(SnapshotRow.instance_id == instance_id)):
            s.delete(snap)
        disk = s.get(InstanceDiskRow, instance_id)
        if disk is not None:
            s.delete(disk)


# ---------------------------------------------------------------- shared by the services
def volume_node(volume_id: str) -> str:
    """A volume's QEMU block node name: from its id, so it stays across renames and boots."""
    return "v" + volume_id.replace("-", "")[:12]


def extra_disk(vol: VolumeRow) -> ExtraDisk:
    """How the driver attaches a volume (a raw LV is a host block device)."""
    block = vol.format == "raw" and vol.path.startswith("/dev/")
    return ExtraDisk(
        node=volume_node(vol.id),
        path=Path(vol.path),
        format=vol.format,
        serial=vol.name[:20],
        slot=vol.slot,
        protocol="host_device" if block else "file",
    )


def allocated(path: Path) -> int:
    """Bytes a layer takes on the host; 0 once it is gone (a delete may run meanwhile)."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def snapshot_rows(ctx: EngineContext, instance_id: str) -> list[SnapshotRow]:
    """A VM's snapshots, oldest (lowest in the chain) first."""
    with ctx.db.session() as s:
        return list(
            s.scalars(
                select(SnapshotRow)
                .where(SnapshotRow.instance_id == instance_id)
                .order_by(SnapshotRow.created_at, SnapshotRow.id)
            ).all()
        )


def clones_of(ctx: EngineContext, snapshot_ids: list[str]) -> dict[str, str]:
    """Linked clones (name -> snapshot id) whose disks grow from these snapshots."""
    if not snapshot_ids:
        return {}
    with ctx.db.session() as s:
        rows = s.execute(
            select(InstanceRow.name, InstanceDiskRow.origin_snapshot_id)
            .join(InstanceDiskRow, InstanceDiskRow.instance_id == InstanceRow.id)
            .where(InstanceDiskRow.origin_snapshot_id.in_(snapshot_ids))
        ).all()
    return {str(name): str(snap) for name, snap in rows}


def set_active(s: Any, instance_id: str, path: Path) -> None:
    disk = s.get(InstanceDiskRow, instance_id)
    if disk is None:
        s.add(InstanceDiskRow(instance_id=instance_id, active_path=str(path)))
    else:
        disk.active_path = str(path)


def set_active_dropping(s: Any, instance_id: str, path: Path, dropped: list[SnapshotRow]) -> None:
    """In one commit: ``path`` becomes the disk's active layer, ``dropped`` snapshots go."""
    for snap in dropped:
        fresh = s.get(SnapshotRow, snap.id)
        if fresh is not None:
            s.delete(fresh)
    set_active(s, instance_id, path)


def locked_vm_row(ctx: EngineContext, name: str) -> InstanceRow:
    """The VM's record as the driver sees it now (the caller holds the VM's lock)."""
    return vm_state.reconcile_locked(ctx, ctx.row(name))


def owner_name(ctx: EngineContext, instance_id: str) -> str:
    """The name of the VM a volume is attached to (its id when the VM is gone)."""
    with ctx.db.session() as s:
        row = s.get(InstanceRow, instance_id)
    return row.name if row is not None else instance_id
