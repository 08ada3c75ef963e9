"""Restore a backup with all its disks: in place over a VM, or as a new VM.

Each disk of the backup is written into a temporary file beside where it will live (the
same file system, so taking it is a rename) and checked: every chunk's hash as it is
read, then ``qemu-img check``. Only once every disk is materialized are they swapped
in, so a failure leaves every disk as it was (a restore killed during the final renames
can leave some volumes restored and others not; the next restore puts that right).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from cloudlet.backup.store import DiskManifest, Manifest, StoreCorrupt
from cloudlet.driver.base import HOTPLUG_SLOTS
from cloudlet.engine import network_ops
from cloudlet.engine.storage_ops import StorageOps
from cloudlet.errors import CloudletError, Conflict, InvalidInput, NotFound
from cloudlet.spec.names import validate_name
from cloudlet.store.models import BackupRow, PoolRow, VolumeRow

if TYPE_CHECKING:
    from cloudlet.engine.backup_ops import BackupOps
    from cloudlet.engine.engine import Engine


@dataclass(frozen=True)
class NewVolume:
    """A volume to create for a restore or an import, from a checked qcow2 ``file``
    (a temporary file in the pool's directory, renamed into place)."""

    name: str
    pool: str
    size: int
    file: Path


def pool_dir(engine: Engine, pool: str, volume: str, source: str) -> Path:
    """The directory of the pool a volume is restored into; refused (in one line, with
    what to do) when the pool is gone or keeps its volumes on block devices."""
    StorageOps(engine)._ensure_default_pool()
    with engine.db.session() as s:
        row = s.get(PoolRow, pool)
    if row is None:
        raise NotFound(
            f"volume {volume} of {source} lived in pool {pool}, which is gone",
            hint=f"create pool {pool} again ('cloudlet pool create {pool} --path DIR'), "
            "then run the restore again",
        )
    if row.kind != "dir":
        raise InvalidInput(
            f"volume {volume} of {source} lives in {row.kind} pool {pool}: cloudlet cannot "
            "restore volumes on block devices yet",
            hint="restore it by hand with 'qemu-img convert' from an export of a restored copy",
        )
    return Path(row.path)


def check_new_volumes(engine: Engine, volumes: list[tuple[str, str]], source: str) -> None:
    """Before anything is made: each new volume's (name, pool) is a valid, free name, no
    two alike, in a pool that can take it."""
    if len(volumes) > HOTPLUG_SLOTS:
        raise InvalidInput(f"{source} has {len(volumes)} volumes; a VM takes {HOTPLUG_SLOTS}")
    names = [n for n, _ in volumes]
    for name, pool in volumes:
        validate_name(name, what="volume name")
        if names.count(name) > 1:
            raise Conflict(f"two volumes of {source} would both be named {name}")
        with engine.db.session() as s:
            if s.scalar(select(VolumeRow.id).where(VolumeRow.name == name)) is not None:
                raise Conflict(
                    f"a volume named {name!r} already exists: nothing was created",
                    hint="pick another VM name, or delete that volume",
                )
        pool_dir(engine, pool, name, source)


def install_new_volumes(engine: Engine, instance_id: str, volumes: list[NewVolume]) -> list[str]:
    """Create each volume, take its checked file, attach it to the (stopped) VM.

    All or nothing: on a failure, the volumes made here are deleted again.
    """
    storage = StorageOps(engine)
    made: list[str] = []
    try:
        for slot, new in enumerate(volumes):
            view = storage.volume_create(new.name, new.size, new.pool)
            made.append(new.name)
            os.replace(new.file, view.path)
            with engine.db.session() as s:
                vol = s.scalar(select(VolumeRow).where(VolumeRow.name == new.name))
                assert vol is not None
                vol.instance_id, vol.slot = instance_id, slot
    except BaseException:
        storage.undo_new_vm_volumes(instance_id, made)
        for new in volumes:
            new.file.unlink(missing_ok=True)
        raise
    return made


def new_volume_name(vm: str, source_vm: str, volume: str) -> str:
    """``NAME-data`` for volume ``data`` (or ``web1-data`` of VM web1) of a restored VM."""
    return f"{vm}-{volume.removeprefix(source_vm + '-')}"


@dataclass
class _InPlace:
    """A volume of the backup, restored in place: ``existing`` None means it was deleted
    and is made again (named ``name``, in ``pool``)."""

    disk: DiskManifest
    existing: VolumeRow | None
    name: str
    pool: str
    directory: Path


class Restorer:
    def __init__(self, ops: BackupOps) -> None:
        self.ops = ops
        self.e = ops.e
        self.store = ops.store

    # ------------------------------------------------------------ materialize
    def materialize(self, row: BackupRow, manifest: Manifest, disk: DiskManifest,
                    dest_dir: Path) -> Path:  # fmt: skip
        """Write one disk of a backup into a checked qcow2 in ``dest_dir`` (a temp name)."""
        tag = uuid.uuid4().hex[:8]
        raw = dest_dir / f".restore-{tag}.raw"
        out = dest_dir / f".restore-{tag}.qcow2"
        where = f"{row.id} (disk {disk.name})"
        try:
            with open(raw, "wb") as f:
                f.truncate(disk.virtual_size)
                for i, digest in enumerate(disk.chunks):
                    if digest is not None:
                        f.seek(i * manifest.chunk_size)
                        f.write(self.store.get(digest, backup=where))
                f.flush()
                os.fsync(f.fileno())
            self.e.deps.disks.from_raw(raw, out)
            check = self.e.deps.disks.check(out)
            if check.get("corruptions") or check.get("check-errors"):
                raise CloudletError(
                    f"disk {disk.name} restored from backup {row.id} fails qemu-img check: {check}",
                    hint="nothing was replaced; try another backup",
                )
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        finally:
            raw.unlink(missing_ok=True)
        return out

    def materialize_all(
        self, row: BackupRow, manifest: Manifest, dirs: dict[str, Path]
    ) -> dict[str, Path]:
        """Every disk of the backup, each into its directory; none left on a failure."""
        made: dict[str, Path] = {}
        try:
            for disk in manifest.disks:
                made[disk.name] = self.materialize(row, manifest, disk, dirs[disk.name])
        except BaseException:
            for path in made.values():
                path.unlink(missing_ok=True)
            raise
        return made

    def materialize_first(
        self, vm: str, backup_id: str | None, dirs_for: Callable[[Manifest], dict[str, Path]]
    ) -> tuple[dict[str, Path], BackupRow, Manifest]:
        """The newest backup whose disks all restore cleanly (or exactly ``backup_id``);
        ``dirs_for`` says where each disk goes (and refuses a backup that cannot go)."""
        candidates = self.ops._pick(vm, backup_id)
        with self.ops._store_lock():
            for i, row in enumerate(candidates):
                try:
                    manifest = self.ops._manifest(row)
                    return self.materialize_all(row, manifest, dirs_for(manifest)), row, manifest
                except StoreCorrupt as exc:
                    self.ops._mark_failed(row.id)
                    if backup_id is not None or i + 1 == len(candidates):
                        raise
                    self.e.notices.append(
                        f"skipped backup {row.id}: {exc.message}; trying the one before it"
                    )
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ in place
    def plan_in_place(self, instance_id: str, manifest: Manifest) -> list[_InPlace]:
        """Where each volume of the backup goes back to; refused before anything changes
        when one cannot (attached elsewhere, its name taken, its pool gone)."""
        plans: list[_InPlace] = []
        source = f"backup {manifest.id}"
        for disk in manifest.disks[1:]:
            with self.e.db.session() as s:
                vol = s.get(VolumeRow, disk.volume_id) if disk.volume_id else None
                same_name = s.scalar(select(VolumeRow).where(VolumeRow.name == disk.name))
            if vol is not None:
                if vol.instance_id not in (None, instance_id):
                    other = StorageOps(self.e)._owner_name(str(vol.instance_id))
                    raise Conflict(
                        f"volume {vol.name} of {source} is attached to {other} now",
                        hint=f"detach it ('cloudlet volume detach {vol.name}'), or restore "
                        "beside it with --as NAME",
                    )
                name, pool = vol.name, vol.pool
            else:
                if same_name is not None:
                    raise Conflict(
                        f"volume {disk.name} of {source} was deleted and another volume "
                        "has its name now",
                        hint="delete that volume, or restore beside it with --as NAME",
                    )
                name, pool = disk.name, disk.pool
            plans.append(_InPlace(disk, vol, name, pool, pool_dir(self.e, pool, name, source)))
        return plans

    def free_slots(self, instance_id: str, plans: list[_InPlace]) -> list[int]:
        """Slots for the volumes of the backup that are not attached to the VM now."""
        with self.e.db.session() as s:
            used = {
                v.slot
                for v in s.scalars(select(VolumeRow).where(VolumeRow.instance_id == instance_id))
            }
        used |= network_ops.used_slots(self.e, instance_id)
        free = [slot for slot in range(HOTPLUG_SLOTS) if slot not in used]
        wanted = sum(1 for p in plans if p.existing is None or p.existing.instance_id is None)
        if wanted > len(free):
            raise Conflict(
                f"the volumes of the backup need {wanted} free slots; the VM has {len(free)}",
                hint="detach a volume first",
            )
        return free

    def put_back_volumes(
        self, instance_id: str, plans: list[_InPlace], files: dict[str, Path]
    ) -> list[str]:
        """Swap the materialized volumes in: deleted ones made again (and undone if that
        fails), then each file renamed over its volume's and attached. What was said."""
        storage = StorageOps(self.e)
        free = self.free_slots(instance_id, plans)
        made: list[str] = []
        try:
            for plan in plans:
                if plan.existing is None:
                    storage.volume_create(plan.name, plan.disk.virtual_size, plan.pool)
                    made.append(plan.name)
        except BaseException:
            for name in made:
                storage.volume_delete(name)
            raise
        said: list[str] = []
        for plan in plans:
            vol = storage._volume(plan.name)
            os.replace(files[plan.disk.name], vol.path)
            with self.e.db.session() as s:
                fresh = s.get(VolumeRow, vol.id)
                assert fresh is not None
                fresh.size = plan.disk.virtual_size
                if fresh.instance_id is None:
                    fresh.instance_id, fresh.slot = instance_id, free.pop(0)
            said.append(
                f"volume {plan.name} recreated in pool {plan.pool}"
                if plan.name in made
                else f"volume {plan.name} restored"
            )
        return said
