"""Restore a backup with all its disks: in place over a VM, or as a new VM.

Each disk of the backup is written into a temporary file beside where it will live (the
same file system, so taking it is a rename) and checked: every chunk's hash as it is
read, then ``qemu-img check``. Only once every disk is materialized are they swapped
in, and the swap is one database commit: each restored disk gets a file name of its
own (``NAME@TAG.qcow2`` for a volume), and the commit points the VM and its volumes at
them. A restore that fails or is killed at any point leaves every disk as it was; the
files it left are named after the VM (``.restore-ID8-*``) or unreferenced (``*@*``),
and the next restore, which holds the backup store's lock as every restore does,
removes them.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from cloudlet.backup.store import DiskManifest, Manifest
from cloudlet.driver.base import HOTPLUG_SLOTS
from cloudlet.engine import network_rows
from cloudlet.errors import (
    CloudletError,
    Conflict,
    InvalidInput,
    ManifestRefused,
    NotFound,
    StoreCorrupt,
)
from cloudlet.spec.names import validate_name
from cloudlet.store.models import BackupRow, InstanceRow, PoolRow, VolumeRow

_TEMP = re.compile(r"\.restore-([0-9a-f]{8})-")

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

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
    engine.storage.ensure_default_pool()
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
    storage = engine.storage
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
    def sweep(self, owner: str, dirs: list[Path]) -> int:
        """Remove what killed restores left in ``dirs`` (the store's lock is held): temp
        files of VM ``owner`` or of VMs that no longer exist, and restored volume files
        no volume points at. How many."""
        with self.e.db.session() as s:
            ids = [str(i) for i in s.scalars(select(InstanceRow.id))]
            paths = {str(p) for p in s.scalars(select(VolumeRow.path))}
        gone = 0
        for directory in set(dirs):
            for path in directory.glob(".restore-*"):
                match = _TEMP.match(path.name)
                if match and (owner.startswith(match[1]) or
                              not any(i.startswith(match[1]) for i in ids)):  # fmt: skip
                    path.unlink(missing_ok=True)
                    gone += 1
            for path in directory.glob("*@*.qcow2"):
                if str(path) not in paths:
                    path.unlink(missing_ok=True)
                    gone += 1
        return gone

    def materialize(self, row: BackupRow, manifest: Manifest, disk: DiskManifest,
                    dest_dir: Path, owner: str) -> Path:  # fmt: skip
        """Write one disk of a backup into a checked qcow2 in ``dest_dir`` (a temp name
        that says which VM ``owner`` it is for)."""
        tag = f"{owner[:8]}-{uuid.uuid4().hex[:8]}"
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
        self, row: BackupRow, manifest: Manifest, dirs: dict[str, Path], owner: str
    ) -> dict[str, Path]:
        """Every disk of the backup, each into its directory; none left on a failure."""
        made: dict[str, Path] = {}
        self.sweep(owner, list(dirs.values()))
        try:
            for disk in manifest.disks:
                made[disk.name] = self.materialize(row, manifest, disk, dirs[disk.name], owner)
        except BaseException:
            for path in made.values():
                path.unlink(missing_ok=True)
            raise
        return made

    def materialize_first(
        self,
        vm: str,
        backup_id: str | None,
        dirs_for: Callable[[Manifest], dict[str, Path]],
        owner: str,
    ) -> tuple[dict[str, Path], BackupRow, Manifest]:
        """The newest backup whose disks all restore cleanly (or exactly ``backup_id``);
        ``dirs_for`` says where each disk goes (and refuses a backup that cannot go).
        ``owner`` is the VM the disks are for. Callers hold the backup store's lock."""
        candidates = self.ops._pick(vm, backup_id)
        for i, row in enumerate(candidates):
            try:
                manifest = self.ops._manifest(row)
                dirs = dirs_for(manifest)
                return self.materialize_all(row, manifest, dirs, owner), row, manifest
            except (StoreCorrupt, ManifestRefused) as exc:
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
                    other = self.e.storage.owner_name(str(vol.instance_id))
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
        used |= network_rows.used_slots(self.e.ctx, instance_id)
        free = [slot for slot in range(HOTPLUG_SLOTS) if slot not in used]
        wanted = sum(1 for p in plans if p.existing is None or p.existing.instance_id is None)
        if wanted > len(free):
            raise Conflict(
                f"the volumes of the backup need {wanted} free slots; the VM has {len(free)}",
                hint="detach a volume first",
            )
        return free

    def take_volume_files(
        self, plans: list[_InPlace], files: dict[str, Path], tag: str
    ) -> dict[str, Path]:
        """Rename each materialized volume to the name it keeps (``NAME@TAG.qcow2``): no
        volume points at it yet, so until the commit the VM's volumes are as they were."""
        taken: dict[str, Path] = {}
        for plan in plans:
            target = plan.directory / f"{plan.name}@{tag}.qcow2"
            if target.resolve().parent != plan.directory.resolve():  # names are checked too
                raise InvalidInput(f"volume name {plan.name!r} leaves pool {plan.pool}")
            os.replace(files[plan.disk.name], target)
            taken[plan.name] = target
        return taken

    def point_volumes(
        self,
        session: Session,
        instance_id: str,
        plans: list[_InPlace],
        taken: dict[str, Path],
        free: list[int],
    ) -> tuple[list[str], list[Path]]:
        """In the restore's one commit: each volume of the backup points at its restored
        file (a deleted one is made again, attached). What to say, and the files replaced."""
        said: list[str] = []
        replaced: list[Path] = []
        free = list(free)
        for plan in plans:
            target = taken[plan.name]
            fresh = session.get(VolumeRow, plan.existing.id) if plan.existing else None
            if fresh is None:
                session.add(
                    VolumeRow(
                        id=str(uuid.uuid4()),
                        name=plan.name,
                        pool=plan.pool,
                        path=str(target),
                        format="qcow2",
                        size=plan.disk.virtual_size,
                        instance_id=instance_id,
                        slot=free.pop(0),
                    )
                )
                said.append(f"volume {plan.name} recreated in pool {plan.pool}")
                continue
            replaced.append(Path(fresh.path))
            fresh.path, fresh.size, fresh.format = str(target), plan.disk.virtual_size, "qcow2"
            if fresh.instance_id is None:
                fresh.instance_id, fresh.slot = instance_id, free.pop(0)
            said.append(f"volume {plan.name} restored")
        return said, replaced
