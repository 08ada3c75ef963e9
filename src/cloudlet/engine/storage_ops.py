"""Storage use cases: pools, volumes, snapshots of the root disk, clones.

The root disk of a VM is a chain of qcow2 layers::

    image <- disk.qcow2 <- layers/A.qcow2 <- layers/B.qcow2 (active: the guest writes here)

Taking a snapshot freezes the active layer (the snapshot's ``file``) and puts a new,
empty layer on top. So every snapshot owns exactly one frozen layer, in creation
order, and the layer above the newest snapshot is the active one (``instance_disks``).
Deleting a snapshot merges its layer into the layer above (block-stream while the VM
runs, ``qemu-img rebase`` while it is stopped); reverting puts a fresh layer on the
snapshot's file and discards what lay above it.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from cloudlet.driver.base import HOTPLUG_SLOTS, ExtraDisk
from cloudlet.engine import locks, network_ops
from cloudlet.errors import (
    CapacityExceeded,
    CloudletError,
    Conflict,
    InvalidInput,
    NotFound,
    OutOfSpace,
)
from cloudlet.images.store import Image
from cloudlet.spec import names
from cloudlet.spec.instance import InstanceSpec
from cloudlet.spec.states import VMState
from cloudlet.spec.storage import PoolSpec, VolumeSpec
from cloudlet.spec.units import format_size
from cloudlet.storage.pools import PoolBackend, check_thin_limit, open_pool
from cloudlet.store.models import (
    InstanceDiskRow,
    InstanceRow,
    PoolRow,
    SnapshotRow,
    VolumeRow,
    utcnow,
)

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext
    from cloudlet.engine.engine import Engine
    from cloudlet.engine.views import InstanceView

STORAGE_LOCK = ".storage"
DEFAULT_POOL = "default"
DETACH_TIMEOUT = 60.0
_OFFLINE = {VMState.STOPPED, VMState.CRASHED, VMState.ERROR}
_ONLINE = {VMState.RUNNING, VMState.PAUSED}


@dataclass(frozen=True)
class PoolView:
    name: str
    kind: str
    path: str
    fs_total: int
    fs_free: int
    limit: int  # thin limit: overcommit x fs_total
    committed: int  # virtual sizes of its volumes
    allocated: int  # what its volumes really take
    volumes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VolumeView:
    name: str
    pool: str
    size: int
    allocated: int
    format: str
    path: str
    attached_to: str | None
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat() + "Z"
        return data


@dataclass(frozen=True)
class SnapshotView:
    name: str
    vm: str
    parent: str | None  # the snapshot below it in the chain
    created_at: datetime
    size: int  # bytes its layer takes
    live: bool
    frozen: bool
    linked_clones: list[str]
    memory: bool = False  # RAM and device state kept: a revert resumes the VM there

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat() + "Z"
        return data


# ---------------------------------------------------------------- hooks the Engine calls
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
        snaps = _snapshot_rows(ctx, instance_id)
        if snaps and Path(snaps[-1].file).exists():
            below = Path(snaps[-1].file)
            _undo_snapshot(ctx, instance_id, snaps[-1].id, below)
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


def _undo_snapshot(ctx: EngineContext, instance_id: str, snap_id: str, old_top: Path) -> None:
    with ctx.db.session() as s:
        snap = s.get(SnapshotRow, snap_id)
        if snap is not None:
            s.delete(snap)
        _set_active(s, instance_id, old_top)


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
    return tuple(_extra_disk(v) for v in attached_volumes(ctx, instance_id))


def attached_volume_names(ctx: EngineContext, instance_id: str) -> list[str]:
    return sorted(v.name for v in attached_volumes(ctx, instance_id))


def check_deletable(ctx: EngineContext, row: InstanceRow) -> None:
    """A VM whose snapshots carry linked clones cannot go: their disks grow from it."""
    clones = _clones_of(ctx, [s.id for s in _snapshot_rows(ctx, row.id)])
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


# ---------------------------------------------------------------- helpers
def _node(volume_id: str) -> str:
    return "v" + volume_id.replace("-", "")[:12]


def _extra_disk(vol: VolumeRow) -> ExtraDisk:
    block = vol.format == "raw" and vol.path.startswith("/dev/")
    return ExtraDisk(
        node=_node(vol.id),
        path=Path(vol.path),
        format=vol.format,
        serial=vol.name[:20],
        slot=vol.slot,
        protocol="host_device" if block else "file",
    )


def _allocated(path: Path) -> int:
    """Bytes a layer takes on the host; 0 once it is gone (a delete may run meanwhile)."""
    try:
        return path.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def _snapshot_rows(ctx: EngineContext, instance_id: str) -> list[SnapshotRow]:
    """A VM's snapshots, oldest (lowest in the chain) first."""
    with ctx.db.session() as s:
        return list(
            s.scalars(
                select(SnapshotRow)
                .where(SnapshotRow.instance_id == instance_id)
                .order_by(SnapshotRow.created_at, SnapshotRow.id)
            ).all()
        )


def _clones_of(ctx: EngineContext, snapshot_ids: list[str]) -> dict[str, str]:
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


def _set_active(s: Any, instance_id: str, path: Path) -> None:
    disk = s.get(InstanceDiskRow, instance_id)
    if disk is None:
        s.add(InstanceDiskRow(instance_id=instance_id, active_path=str(path)))
    else:
        disk.active_path = str(path)


def _set_active_dropping(s: Any, instance_id: str, path: Path, dropped: list[SnapshotRow]) -> None:
    """In one commit: ``path`` becomes the disk's active layer, ``dropped`` snapshots go."""
    for snap in dropped:
        fresh = s.get(SnapshotRow, snap.id)
        if fresh is not None:
            s.delete(fresh)
    _set_active(s, instance_id, path)


class StorageOps:
    """Pools, volumes, snapshots and clones, on top of one Engine."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine

    @contextmanager
    def _storage_lock(self) -> Iterator[None]:
        with locks.hold(self.e.paths.locks, STORAGE_LOCK, what="storage"):
            yield

    # ------------------------------------------------------------ pools
    def _ensure_default_pool(self) -> None:
        with self.e.db.session() as s:
            if s.get(PoolRow, DEFAULT_POOL) is not None:
                return
        path = self.e.paths.pools / DEFAULT_POOL
        path.mkdir(parents=True, exist_ok=True)
        with self._storage_lock(), self.e.db.session() as s:
            if s.get(PoolRow, DEFAULT_POOL) is None:
                s.add(PoolRow(name=DEFAULT_POOL, kind="dir", path=str(path)))

    def _pool(self, name: str) -> tuple[PoolRow, PoolBackend]:
        names.pool_name(name)
        self._ensure_default_pool()
        with self.e.db.session() as s:
            row = s.get(PoolRow, name)
        if row is None:
            raise NotFound(f"no pool named {name!r}", hint="run 'cloudlet pool list'")
        return row, open_pool(row.kind, row.name, Path(row.path))

    def _overcommit(self, backend: PoolBackend) -> float:
        """Thin pools may promise more than they hold; thick LVs take their size at once."""
        return self.e.settings.storage_overcommit if backend.thin else 1.0

    @staticmethod
    def _limit_base(backend: PoolBackend) -> str:
        """What the thin limit multiplies, for messages."""
        if backend.kind == "lvm":
            return "thin pool" if backend.thin else "volume group"
        return "file system"

    def _committed(self, pool: str) -> int:
        with self.e.db.session() as s:
            return sum(s.scalars(select(VolumeRow.size).where(VolumeRow.pool == pool)).all())

    def _pool_view(self, row: PoolRow) -> PoolView:
        backend = open_pool(row.kind, row.name, Path(row.path))
        usage = backend.usage()
        with self.e.db.session() as s:
            vols = s.scalars(select(VolumeRow).where(VolumeRow.pool == row.name)).all()
        return PoolView(
            name=row.name,
            kind=row.kind,
            path=row.path,
            fs_total=usage.total,
            fs_free=usage.free,
            limit=int(usage.total * self._overcommit(backend)),
            committed=sum(v.size for v in vols),
            allocated=sum(backend.allocated(Path(v.path)) for v in vols),
            volumes=len(vols),
        )

    def pools(self) -> list[PoolView]:
        self._ensure_default_pool()
        with self.e.db.session() as s:
            rows = s.scalars(select(PoolRow).order_by(PoolRow.name)).all()
        return [self._pool_view(r) for r in rows]

    def pool_create(
        self, name: str, path: Path | None = None, kind: str = "dir", devices: tuple[str, ...] = ()
    ) -> PoolView:
        """A directory pool at ``path``, or (kind "lvm") a volume group over ``devices``."""
        names.pool_name(name)
        if kind == "lvm":
            return self._lvm_pool_create(name, devices)
        if path is None:
            raise InvalidInput("a directory pool needs a path", hint="add --path DIR")
        spec = PoolSpec(name=name, kind="dir", path=str(path)) if kind == "dir" else None
        backend = open_pool(kind, name, path)  # refuses unknown kinds
        assert spec is not None
        self._ensure_default_pool()
        with self._storage_lock():
            with self.e.db.session() as s:
                if s.get(PoolRow, name) is not None:
                    raise Conflict(f"a pool named {name!r} already exists", hint="pick another")
                clash = s.scalar(select(PoolRow.name).where(PoolRow.path == str(path)))
            if clash is not None:
                raise Conflict(f"pool {clash} already uses {path}", hint="pick another directory")
            backend.check()
            with self.e.db.session() as s:
                s.add(PoolRow(name=spec.name, kind=spec.kind, path=spec.path))
        return self.pool(name)

    def _lvm_pool_create(self, name: str, devices: tuple[str, ...]) -> PoolView:
        from cloudlet.storage import lvm

        vg = lvm.vg_name(name)
        spec = PoolSpec(name=name, kind="lvm", path=f"/dev/{vg}")
        self._ensure_default_pool()
        with self._storage_lock():
            with self.e.db.session() as s:
                if s.get(PoolRow, name) is not None:
                    raise Conflict(f"a pool named {name!r} already exists", hint="pick another")
            nodes = lvm.check_devices(devices)  # refuses before anything changes
            if not lvm.device_mapper_available():
                raise InvalidInput(
                    "this kernel has no device-mapper: LVM volumes cannot be activated here",
                    hint="load the dm-mod module, or use a directory pool (--path)",
                )
            if vg in lvm.existing_vgs():
                raise Conflict(f"volume group {vg} already exists", hint="pick another pool name")
            thin = lvm.thin_available()
            if not thin:
                self.e.notices.append(
                    "thin provisioning is not available (thin-provisioning-tools or the "
                    "dm-thin-pool module missing): volumes are plain LVs that take their size"
                )
            lvm.create_pool(name, nodes, thin=thin)
            try:
                with self.e.db.session() as s:
                    s.add(PoolRow(name=spec.name, kind=spec.kind, path=spec.path))
            except BaseException:
                open_pool("lvm", name, Path(spec.path)).destroy()
                raise
        return self.pool(name)

    def pool(self, name: str) -> PoolView:
        row, _ = self._pool(name)
        return self._pool_view(row)

    def pool_delete(self, name: str) -> str:
        names.pool_name(name)
        if name == DEFAULT_POOL:
            raise Conflict("the default pool cannot be deleted", hint="delete its volumes instead")
        with self._storage_lock():
            pool_row, backend = self._pool(name)
            with self.e.db.session() as s:
                vols = s.scalars(select(VolumeRow.name).where(VolumeRow.pool == name)).all()
            if vols:
                raise Conflict(
                    f"pool {name} still holds volumes: {', '.join(sorted(vols))}",
                    hint="delete them first",
                )
            backend.destroy()
            with self.e.db.session() as s:
                row = s.get(PoolRow, name)
                if row is not None:
                    s.delete(row)
        if pool_row.kind == "lvm":
            return f"pool {name} deleted (its volume group and PV labels removed)"
        return f"pool {name} deleted (its directory is left as it is)"

    # ------------------------------------------------------------ volumes
    def _volume(self, name: str) -> VolumeRow:
        names.volume_name(name)
        with self.e.db.session() as s:
            row = s.scalar(select(VolumeRow).where(VolumeRow.name == name))
        if row is None:
            raise NotFound(f"no volume named {name!r}", hint="run 'cloudlet volume list'")
        return row

    def _volume_view(self, row: VolumeRow) -> VolumeView:
        with self.e.db.session() as s:
            pool = s.get(PoolRow, row.pool)
            vm = s.get(InstanceRow, row.instance_id) if row.instance_id else None
        assert pool is not None
        backend = open_pool(pool.kind, pool.name, Path(pool.path))
        return VolumeView(
            name=row.name,
            pool=row.pool,
            size=row.size,
            allocated=backend.allocated(Path(row.path)),
            format=row.format,
            path=row.path,
            attached_to=vm.name if vm is not None else None,
            created_at=row.created_at,
        )

    def volumes(self) -> list[VolumeView]:
        with self.e.db.session() as s:
            rows = s.scalars(select(VolumeRow).order_by(VolumeRow.name)).all()
        return [self._volume_view(r) for r in rows]

    def volume(self, name: str) -> VolumeView:
        return self._volume_view(self._volume(name))

    def volume_create(self, name: str, size: int, pool: str | None = None) -> VolumeView:
        names.volume_name(name)
        if pool is not None:
            names.pool_name(pool)
        spec = VolumeSpec(name=name, size=size, pool=pool or DEFAULT_POOL)
        pool_row, backend = self._pool(spec.pool)
        with self._storage_lock():
            with self.e.db.session() as s:
                if s.scalar(select(VolumeRow.id).where(VolumeRow.name == name)) is not None:
                    raise Conflict(f"a volume named {name!r} already exists", hint="pick another")
            size = backend.round_size(spec.size)
            check_thin_limit(
                pool_row.name,
                backend.usage(),
                self._overcommit(backend),
                self._committed(pool_row.name),
                size,
                self._limit_base(backend),
            )
            path = backend.create_volume(self.e.deps.disks, name, size)
            try:
                with self.e.db.session() as s:
                    s.add(
                        VolumeRow(
                            id=str(uuid.uuid4()),
                            name=name,
                            pool=pool_row.name,
                            path=str(path),
                            format=backend.volume_format,
                            size=size,
                        )
                    )
            except BaseException:
                backend.delete_volume(path)
                raise
        return self.volume(name)

    # ------------------------------------------------------------ volumes of a new VM
    @staticmethod
    def new_vm_volume_names(vm: str, count: int) -> list[str]:
        return [f"{vm}-vol{i}" for i in range(count)]

    def _reusable(self, name: str, size: int) -> bool:
        """A detached volume of this name and size (kept when its VM was deleted) is reused."""
        with self.e.db.session() as s:
            vol = s.scalar(select(VolumeRow).where(VolumeRow.name == name))
        if vol is None:
            return False
        if vol.instance_id is not None or vol.size != size:
            raise Conflict(
                f"a volume named {name!r} already exists"
                + (
                    " and is attached"
                    if vol.instance_id
                    else f" with another size ({format_size(vol.size)})"
                ),
                hint="delete it, or pick another VM name",
            )
        return True

    def check_new_vm_volumes(self, vm: str, sizes: tuple[int, ...]) -> None:
        """Before a create: the volumes it asks for fit (slots, names, the pool's limit)."""
        if len(sizes) > HOTPLUG_SLOTS:
            raise InvalidInput(
                f"{len(sizes)} volumes asked for; a VM takes {HOTPLUG_SLOTS} at most",
                hint="ask for fewer, larger volumes",
            )
        new = 0
        for name, size in zip(self.new_vm_volume_names(vm, len(sizes)), sizes, strict=True):
            names.volume_name(name)
            if not self._reusable(name, size):
                new += size
        pool_row, backend = self._pool(DEFAULT_POOL)
        check_thin_limit(
            pool_row.name,
            backend.usage(),
            self.e.settings.storage_overcommit,
            self._committed(pool_row.name),
            new,
        )

    def create_for_new_vm(self, instance_id: str, vm: str, sizes: tuple[int, ...]) -> list[str]:
        """Volumes attached to a VM being created (its lock held), one slot each.

        Returns the names of the volumes made here (reused ones are not listed).
        """
        made: list[str] = []
        try:
            for slot, (name, size) in enumerate(
                zip(self.new_vm_volume_names(vm, len(sizes)), sizes, strict=True)
            ):
                if not self._reusable(name, size):
                    self.volume_create(name, size)
                    made.append(name)
                with self.e.db.session() as s:
                    vol = s.scalar(select(VolumeRow).where(VolumeRow.name == name))
                    assert vol is not None
                    vol.instance_id, vol.slot = instance_id, slot
        except BaseException:
            self.undo_new_vm_volumes(instance_id, made)
            raise
        return made

    def undo_new_vm_volumes(self, instance_id: str, made: list[str]) -> None:
        """A create failed: detach what it attached, delete what it made."""
        with self.e.db.session() as s:
            for vol in s.scalars(select(VolumeRow).where(VolumeRow.instance_id == instance_id)):
                vol.instance_id, vol.slot = None, None
        for name in made:
            self.volume_delete(name)

    def _vm_row(self, name: str) -> InstanceRow:
        return self.e._reconcile_locked(self.e._row(name))

    def volume_attach(self, volume: str, vm: str) -> str:
        names.vm_name(vm)
        self._volume(volume)  # an unknown volume fails before the VM is looked at
        with self.e._lock(vm), locks.hold(self.e.paths.locks, f".vol-{volume}", what=volume):
            row = self._vm_row(vm)
            vol = self._volume(volume)
            if vol.instance_id is not None:
                other = self._owner_name(vol.instance_id)
                if vol.instance_id == row.id:
                    return f"volume {volume} is already attached to {vm}"
                raise Conflict(
                    f"volume {volume} is attached to {other}",
                    hint=f"detach it first with 'cloudlet volume detach {volume}'",
                )
            self._require(row, _ONLINE | _OFFLINE, f"attach a volume to {vm}")
            if row.state == VMState.PAUSED:
                raise Conflict(f"cannot hot-plug into {vm}: it is paused", hint="resume it first")
            used = {d.slot for d in boot_disks(self.e.ctx, row.id)}
            used |= network_ops.used_slots(self.e.ctx, row.id)  # hot-plugged NICs share them
            free = [slot for slot in range(HOTPLUG_SLOTS) if slot not in used]
            if not free:
                raise Conflict(
                    f"{vm} has no free volume slot ({HOTPLUG_SLOTS} volumes at most)",
                    hint="detach a volume first",
                )
            vol.slot = free[0]
            vol.instance_id = row.id
            with self.e._operation(row, "volume-attach") as op_id:
                live = row.state == VMState.RUNNING
                if live:
                    self.e.driver.attach_disk(row.id, _extra_disk(vol))
                try:
                    with self.e.db.session() as s:
                        fresh = s.get(VolumeRow, vol.id)
                        assert fresh is not None
                        fresh.instance_id, fresh.slot = row.id, vol.slot
                except BaseException:
                    if live:
                        self.e.driver.detach_disk(row.id, _extra_disk(vol), DETACH_TIMEOUT)
                    raise
                self.e._event(vm, "volume-attached", f"volume {volume} attached", op_id)
        when = "now" if live else "at its next start"
        return f"volume {volume} attached to {vm} ({when}; serial {vol.name[:20]})"

    def _owner_name(self, instance_id: str) -> str:
        with self.e.db.session() as s:
            row = s.get(InstanceRow, instance_id)
        return row.name if row is not None else instance_id

    def _require(self, row: InstanceRow, allowed: set[VMState], action: str) -> None:
        self.e._require_state(row, allowed, action)

    def volume_detach(self, volume: str) -> str:
        vol = self._volume(volume)
        if vol.instance_id is None:
            return f"volume {volume} is not attached"
        vm = self._owner_name(vol.instance_id)
        with self.e._lock(vm), locks.hold(self.e.paths.locks, f".vol-{volume}", what=volume):
            row = self._vm_row(vm)
            vol = self._volume(volume)
            if vol.instance_id != row.id:
                return f"volume {volume} is not attached to {vm} any more"
            self._require(row, _ONLINE | _OFFLINE, f"detach a volume from {vm}")
            if row.state == VMState.PAUSED:  # a paused guest cannot release the device
                raise Conflict(f"cannot unplug from {vm}: it is paused", hint="resume it first")
            with self.e._operation(row, "volume-detach") as op_id:
                if row.state in _ONLINE:
                    self.e.driver.detach_disk(row.id, _extra_disk(vol), DETACH_TIMEOUT)
                with self.e.db.session() as s:
                    fresh = s.get(VolumeRow, vol.id)
                    assert fresh is not None
                    fresh.instance_id = fresh.slot = None
                self.e._event(vm, "volume-detached", f"volume {volume} detached", op_id)
        return f"volume {volume} detached from {vm}"

    def volume_resize(self, volume: str, size: int) -> str:
        vol = self._volume(volume)
        vm = self._owner_name(vol.instance_id) if vol.instance_id else None
        with self._maybe_vm_lock(vm), locks.hold(
            self.e.paths.locks, f".vol-{volume}", what=volume
        ):  # fmt: skip
            vol = self._volume(volume)
            if size < vol.size:
                raise InvalidInput(
                    f"volume {volume} is {format_size(vol.size)}: shrinking to "
                    f"{format_size(size)} would destroy data",
                    hint="give a larger size; volumes only grow",
                )
            if size == vol.size:
                return f"volume {volume} is already {format_size(size)}"
            pool_row, backend = self._pool(vol.pool)
            size = backend.round_size(size)
            with self._storage_lock():
                check_thin_limit(
                    pool_row.name,
                    backend.usage(),
                    self._overcommit(backend),
                    self._committed(pool_row.name),
                    size - vol.size,
                    self._limit_base(backend),
                )
                row = self._vm_row(vm) if vm is not None else None
                if row is not None and row.state not in _ONLINE | _OFFLINE:
                    raise Conflict(
                        f"cannot resize {volume}: its VM {vm} is {row.state}",
                        hint="wait for it to finish",
                    )
                online = row is not None and row.state in _ONLINE
                if backend.block_device or not online:
                    # a block device grows first; QEMU is then told its new size
                    backend.grow_volume(self.e.deps.disks, Path(vol.path), size)
                if online:
                    assert row is not None
                    self.e.driver.resize_disk(row.id, _node(vol.id), size)
                how = "online" if online else "offline"
                with self.e.db.session() as s:
                    fresh = s.get(VolumeRow, vol.id)
                    assert fresh is not None
                    fresh.size = size
        return f"volume {volume} grown to {format_size(size)} ({how})"

    @contextmanager
    def _maybe_vm_lock(self, vm: str | None) -> Iterator[None]:
        if vm is None:
            yield
            return
        with self.e._lock(vm):
            yield

    def volume_delete(self, volume: str) -> str:
        names.volume_name(volume)
        with locks.hold(self.e.paths.locks, f".vol-{volume}", what=volume):
            vol = self._volume(volume)
            if vol.instance_id is not None:
                raise Conflict(
                    f"volume {volume} is attached to {self._owner_name(vol.instance_id)}",
                    hint=f"detach it first with 'cloudlet volume detach {volume}'",
                )
            _, backend = self._pool(vol.pool)
            backend.delete_volume(Path(vol.path))
            with self.e.db.session() as s:
                row = s.get(VolumeRow, vol.id)
                if row is not None:
                    s.delete(row)
        return f"volume {volume} deleted"

    # ------------------------------------------------------------ snapshots
    def _layers_dir(self, instance_id: str) -> Path:
        path = self.e.paths.instance_dir(instance_id) / "layers"
        path.mkdir(exist_ok=True)
        return path

    def _snapshot(self, row: InstanceRow, name: str) -> tuple[int, list[SnapshotRow]]:
        """The index of snapshot ``name`` in the VM's chain, and the chain."""
        names.snapshot_name(name)
        snaps = _snapshot_rows(self.e.ctx, row.id)
        for i, snap in enumerate(snaps):
            if snap.name == name:
                return i, snaps
        with self.e.db.session() as s:
            elsewhere = s.execute(
                select(InstanceRow.name)
                .join(SnapshotRow, SnapshotRow.instance_id == InstanceRow.id)
                .where(SnapshotRow.name == name)
            ).first()
        if elsewhere is not None:
            raise NotFound(
                f"snapshot {name!r} belongs to VM {elsewhere[0]}, not {row.name}",
                hint=f"a VM can only go back to its own snapshots; "
                f"clone it: 'cloudlet clone {elsewhere[0]} NEW --snapshot {name}'",
            )
        raise NotFound(
            f"{row.name} has no snapshot {name!r}",
            hint=f"see 'cloudlet snapshot list {row.name}'",
        )

    def snapshot_create(self, vm: str, name: str, *, memory: bool = False) -> SnapshotView:
        """Snapshot the root disk; ``memory`` also keeps RAM and device state (the VM is
        paused meanwhile, so disk and memory match without freezing file systems)."""
        names.snapshot_name(name)
        names.vm_name(vm)
        with self.e._lock(vm):
            row = self._vm_row(vm)
            self._require(row, _ONLINE | _OFFLINE, "snapshot")
            if memory and row.state not in _ONLINE:
                raise Conflict(
                    f"cannot keep the memory of {vm}: it is {row.state}",
                    hint="start it first, or snapshot its disk only (without --memory)",
                )
            if any(s.name == name for s in _snapshot_rows(self.e.ctx, row.id)):
                raise Conflict(f"{vm} already has a snapshot {name!r}", hint="pick another name")
            old_top = active_disk(self.e.ctx, row.id, heal=True)
            new_top = self._layers_dir(row.id) / f"{uuid.uuid4()}.qcow2"
            live = row.state in _ONLINE
            # A memory state left by an older snapshot on this file (killed mid-way) is stale.
            state_file(old_top).unlink(missing_ok=True)
            with self.e._operation(row, "snapshot") as op_id:
                frozen = live and not memory and self._freeze(row)
                paused_here = memory and row.state == VMState.RUNNING
                if paused_here:
                    self.e.driver.pause(row.id)
                snap_id = str(uuid.uuid4())
                try:
                    # Recorded before it is acted on: if this process dies before the new
                    # layer exists, active_disk(heal=True) rolls the record back.
                    with self.e.db.session() as s:
                        s.add(
                            SnapshotRow(
                                id=snap_id,
                                instance_id=row.id,
                                name=name,
                                file=str(old_top),
                                live=live,
                                frozen=frozen,
                                created_at=utcnow(),
                            )
                        )
                        _set_active(s, row.id, new_top)
                    try:
                        if live:
                            self.e.driver.snapshot_disk(row.id, new_top)
                        else:
                            self.e.deps.disks.create_layer(old_top, "qcow2", new_top)
                    except BaseException:
                        if not live or new_top not in self._chain_or_empty(row.id):
                            new_top.unlink(missing_ok=True)
                            _undo_snapshot(self.e.ctx, row.id, snap_id, old_top)
                        raise
                    if memory:
                        self._save_memory(vm, name, row.id, snap_id, old_top, new_top)
                        if not paused_here:
                            # Saving hands the disks over to a (never coming) target; only
                            # cont takes them back. A paused VM then stays paused.
                            self.e.driver.resume(row.id)
                            self.e.driver.pause(row.id)
                finally:
                    if frozen:
                        self.e.driver.thaw_filesystems(row.id)
                    if paused_here:
                        self.e.driver.resume(row.id)
                how = "file systems frozen" if frozen else ("live" if live else "offline")
                if memory:
                    how = "with memory"
                elif live and not frozen:
                    how = "crash-consistent"
                self._remember(vm, "snapshot", f"snapshot {name} taken ({how})", op_id)
            # Read under the lock: a delete from another thread may follow at once.
            return next(v for v in self.snapshots(vm) if v.name == name)

    def _save_memory(
        self, vm: str, name: str, instance_id: str, snap_id: str, layer: Path, new_top: Path
    ) -> None:
        """Save the paused VM's RAM and device state next to the layer just frozen; when
        that fails, take the disk snapshot back too, so no half snapshot stays."""
        target = state_file(layer)
        part = Path(f"{target}.part")
        try:
            self.e.driver.save_state(instance_id, part)
            part.rename(target)
        except CloudletError as exc:
            part.unlink(missing_ok=True)
            try:
                self.e.driver.unsnapshot_disk(instance_id, new_top)
            except CloudletError:
                raise CloudletError(
                    f"snapshot {name} of {vm} kept its disk but not its memory: {exc.message}",
                    hint=f"delete it ('cloudlet snapshot delete {vm} {name}') and try again",
                ) from None
            new_top.unlink(missing_ok=True)
            _undo_snapshot(self.e.ctx, instance_id, snap_id, layer)
            if isinstance(exc, OutOfSpace):
                free = shutil.disk_usage(layer.parent).free >> 20
                raise CapacityExceeded(
                    f"snapshot {name} of {vm} was not taken: no space left in {layer.parent} "
                    f"for its memory state ({free} MiB free now)",
                    hint="free space there, or snapshot the disk only (without --memory)",
                ) from None
            raise CloudletError(
                f"snapshot {name} of {vm} was not taken: {exc.message}", hint="try again"
            ) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise

    def _remember(self, vm: str, kind: str, message: str, op_id: int) -> None:
        self.e._event(vm, kind, message, op_id)

    def _chain_or_empty(self, instance_id: str) -> list[Path]:
        try:
            return self.e.driver.disk_chain(instance_id)
        except CloudletError:
            return []

    def _freeze(self, row: InstanceRow, what: str = "snapshot") -> bool:
        """Freeze the guest's file systems when it runs an agent; say so when we cannot."""
        if row.state != VMState.RUNNING or not Image.load(Path(row.image_path)).guest_agent:
            return False
        try:
            self.e.driver.freeze_filesystems(row.id)
            return True
        except CloudletError as exc:
            self.e.notices.append(
                f"the guest agent could not freeze {row.name}'s file systems ({exc.message}): "
                f"the {what} is crash-consistent"
            )
            return False

    def snapshots(self, vm: str) -> list[SnapshotView]:
        row = self.e._row(vm)
        snaps = _snapshot_rows(self.e.ctx, row.id)
        clones = _clones_of(self.e.ctx, [s.id for s in snaps])
        views = []
        for i, snap in enumerate(snaps):
            path = Path(snap.file)
            views.append(
                SnapshotView(
                    name=snap.name,
                    vm=vm,
                    parent=snaps[i - 1].name if i > 0 else None,
                    created_at=snap.created_at,
                    size=_allocated(path),
                    live=snap.live,
                    frozen=snap.frozen,
                    linked_clones=sorted(c for c, sid in clones.items() if sid == snap.id),
                    memory=state_file(path).exists(),
                )
            )
        return views

    def snapshot_revert(self, vm: str, name: str, *, force: bool = False) -> str:
        row = self.e._reconcile(self.e._row(vm))
        self._snapshot(row, name)  # unknown names fail before anything stops
        if row.state in _ONLINE:
            if not force:
                raise Conflict(
                    f"cannot revert {vm}: it is {row.state}",
                    hint="stop it first, or add --force to stop it now",
                )
            self.e.stop(vm, force=True)
        with self.e._lock(vm):
            row = self._vm_row(vm)
            self._require(row, _OFFLINE, "revert")
            active_disk(self.e.ctx, row.id, heal=True)
            index, snaps = self._snapshot(row, name)
            later = snaps[index + 1 :]
            clones = _clones_of(self.e.ctx, [s.id for s in later])
            if clones:
                raise Conflict(
                    f"reverting {vm} to {name} would discard snapshots that linked clones "
                    f"({', '.join(sorted(clones))}) grow from",
                    hint="delete those clones first",
                )
            target = Path(snaps[index].file)
            old_files = [Path(s.file) for s in later] + [active_disk(self.e.ctx, row.id)]
            new_top = self._layers_dir(row.id) / f"{uuid.uuid4()}.qcow2"
            with self.e._operation(row, "snapshot-revert") as op_id:
                self.e.deps.disks.create_layer(target, "qcow2", new_top)
                try:
                    with self.e.db.session() as s:
                        _set_active_dropping(s, row.id, new_top, later)
                except BaseException:
                    new_top.unlink(missing_ok=True)
                    raise
                for path in old_files:
                    if path != target:
                        path.unlink(missing_ok=True)
                        state_file(path).unlink(missing_ok=True)
                dropped = f" (discarded later snapshots: {', '.join(s.name for s in later)})"
                message = f"{vm} reverted to {name}" + (dropped if later else "")
                self._remember(vm, "snapshot-reverted", message, op_id)
                saved = state_file(target)
                if saved.exists():
                    try:
                        self.e._boot(self._vm_row(vm), wait=False, op_id=op_id, state=saved)
                    except CloudletError as exc:
                        raise CloudletError(
                            f"{message}, but its memory state could not be loaded: {exc.message}",
                            hint=f"'cloudlet start {vm}' boots it from the reverted disk",
                        ) from None
                    message += " and resumed from its memory state"
        return message

    def snapshot_delete(self, vm: str, name: str) -> str:
        with self.e._lock(vm):
            row = self._vm_row(vm)
            active_disk(self.e.ctx, row.id, heal=True)
            index, snaps = self._snapshot(row, name)
            snap = snaps[index]
            clones = _clones_of(self.e.ctx, [snap.id])
            if clones:
                raise Conflict(
                    f"snapshot {name} is the base of linked clone(s) {', '.join(sorted(clones))}",
                    hint="delete those clones first",
                )
            self._require(row, _ONLINE | _OFFLINE, "delete a snapshot of")
            layer = Path(snap.file)
            above = (
                Path(snaps[index + 1].file)
                if index + 1 < len(snaps)
                else active_disk(self.e.ctx, row.id)
            )
            with self.e._operation(row, "snapshot-delete") as op_id:
                if row.state in _ONLINE:
                    chain = self.e.driver.disk_chain(row.id)
                    if layer not in chain:
                        raise Conflict(
                            f"the running {vm} does not use snapshot {name}'s layer",
                            hint="restart the VM and try again",
                        )
                    pos = chain.index(layer)
                    base = chain[pos + 1] if pos + 1 < len(chain) else None
                    self.e.driver.stream_disk(row.id, above, base)
                else:
                    backing = self.e.deps.disks.backing(layer)
                    base_path, base_format = backing if backing is not None else (None, "qcow2")
                    self.e.deps.disks.rebase(above, base_path, base_format)
                with self.e.db.session() as s:
                    fresh = s.get(SnapshotRow, snap.id)
                    if fresh is not None:
                        s.delete(fresh)
                layer.unlink(missing_ok=True)
                state_file(layer).unlink(missing_ok=True)
                self._remember(vm, "snapshot-deleted", f"snapshot {name} merged and deleted", op_id)
        return f"snapshot {name} of {vm} deleted (its data merged into the layer above)"

    # ------------------------------------------------------------ clones
    def clone(
        self, source: str, name: str, *, linked: bool = False, snapshot: str | None = None
    ) -> InstanceView:
        names.vm_name(name)
        names.vm_name(source)
        if snapshot is not None:
            names.snapshot_name(snapshot)
        self.e._ensure_name_free(name)
        src = self.e._reconcile(self.e._row(source))
        snap: SnapshotRow | None = None
        if snapshot is not None:
            index, snaps = self._snapshot(src, snapshot)
            snap = snaps[index]
        elif linked:
            snaps = _snapshot_rows(self.e.ctx, src.id)
            if not snaps:
                raise InvalidInput(
                    f"a linked clone grows from a snapshot, and {source} has none",
                    hint=f"take one: 'cloudlet snapshot create {source} NAME', "
                    "or clone without --linked",
                )
            snap = snaps[-1]
        elif src.state not in _OFFLINE:
            raise Conflict(
                f"cannot clone {source}: it is {src.state}",
                hint="stop it first, or clone a snapshot with --snapshot NAME",
            )
        from cloudlet.engine.ports import ssh_port

        spec = InstanceSpec.model_validate_json(src.spec_json)
        # a clone gets NICs on the same networks (new addresses), not the source's forwards
        network = spec.network.model_copy(update={"ports": ()})
        spec = spec.model_copy(update={"name": name, "network": network})
        new_id = str(uuid.uuid4())
        with contextlib.ExitStack() as held:
            # One order everywhere (clones A->B and B->A at once never deadlock), and a
            # name once (a lock taken twice by one thread would wait for itself).
            for key in sorted({name, source}):
                held.enter_context(self.e._lock(key))
            self.e._ensure_name_free(name)
            # Read the source again under its lock: another call may have deleted it (or
            # replaced it), or the snapshot, since the checks above.
            if self._vm_row(source).id != src.id:
                raise NotFound(f"VM {source} was deleted meanwhile", hint="try again")
            src = self._vm_row(source)
            if snap is not None:
                index, snaps = self._snapshot(src, snap.name)
                snap = snaps[index]
            row = InstanceRow(
                id=new_id,
                name=name,
                state=VMState.CREATING.value,
                spec_json=spec.model_dump_json(),
                image=src.image,
                image_path=src.image_path,
                type_name=src.type_name,
                cpus=src.cpus,
                memory=src.memory,
                disk_size=src.disk_size,
                arch=src.arch,
                location=src.location,
                ssh_port=ssh_port(self.e.db) if src.ssh_port is not None else None,
            )
            with self.e.db.session() as s:
                s.add(row)
            try:
                with self.e._operation(row, "create") as op_id:
                    instance_dir = self.e.paths.instance_dir(new_id)
                    instance_dir.mkdir(parents=True)
                    network_ops.allocate(self.e.ctx, new_id, spec.network.nics)
                    disk = instance_dir / "disk.qcow2"
                    if linked:
                        assert snap is not None
                        self.e.deps.disks.create_layer(Path(snap.file), "qcow2", disk)
                    else:
                        fresh_src = self._vm_row(source)
                        if snap is None and fresh_src.state not in _OFFLINE:
                            raise Conflict(
                                f"cannot clone {source}: it is {fresh_src.state}",
                                hint="stop it first",
                            )
                        origin = Path(snap.file) if snap is not None else None
                        self.e.deps.disks.flatten(origin or active_disk(self.e.ctx, src.id), disk)
                    if (self.e.paths.instance_dir(src.id) / "seed.iso").exists():
                        from cloudlet.engine import access as access_mod

                        access_mod.write_seed(
                            instance_dir / "seed.iso",
                            instance_id=new_id,
                            hostname=name,
                            access=spec.access,
                            user_data=spec.user_data,
                        )
                    with self.e.db.session() as s:
                        if linked:
                            assert snap is not None
                            s.add(
                                InstanceDiskRow(
                                    instance_id=new_id,
                                    active_path=str(disk),
                                    origin_snapshot_id=snap.id,
                                )
                            )
                        fresh = s.get(InstanceRow, new_id)
                        assert fresh is not None
                        fresh.state = VMState.STOPPED.value
                    what = f"snapshot {snap.name}" if snap is not None else "its current disk"
                    kind = "linked" if linked else "full"
                    self.e._event(name, "created", f"{kind} clone of {source} ({what})", op_id)
            except BaseException:
                self.e._remove_everything(row)
                raise
        return self.e.show(name)
