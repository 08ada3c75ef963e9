"""The disks of a backup being restored: written, checked, then swapped in.

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
from cloudlet.engine.backup_records import BackupRecords
from cloudlet.engine.backup_volumes import pool_dir
from cloudlet.engine.context import EngineContext
from cloudlet.engine.storage import StorageService
from cloudlet.errors import CloudletError, Conflict, InvalidInput, ManifestRefused, StoreCorrupt
from cloudlet.next_steps import Step, step
from cloudlet.progress import Tracker
from cloudlet.store.models import BackupRow, InstanceRow, VolumeRow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

_TEMP = re.compile(r"\.restore-([0-9a-f]{8})-")


@dataclass
class InPlace:
    """A volume of the backup, restored in place: ``existing`` None means it was deleted
    and is made again (named ``name``, in ``pool``)."""

    disk: DiskManifest
    existing: VolumeRow | None
    name: str
    pool: str
    directory: Path


class Restorer:
    """Writes the disks of a backup into checked files, and plans where they go."""

    def __init__(self, ctx: EngineContext, records: BackupRecords, storage: StorageService) -> None:
        self.ctx = ctx
        self.records = records
        self.storage = storage

    # ------------------------------------------------------------ materialize
    def sweep(self, owner: str, dirs: list[Path]) -> int:
        """Remove what killed restores left in ``dirs`` (the store's lock is held): temp
        files of VM ``owner`` or of VMs that no longer exist, and restored volume files
        no volume points at. How many."""
        with self.ctx.db.session() as s:
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
                    dest_dir: Path, owner: str, track: Tracker) -> Path:  # fmt: skip
        """Write one disk of a backup into a checked qcow2 in ``dest_dir`` (a temp name
        that says which VM ``owner`` it is for); ``track`` counts its bytes."""
        tag = f"{owner[:8]}-{uuid.uuid4().hex[:8]}"
        raw = dest_dir / f".restore-{tag}.raw"
        out = dest_dir / f".restore-{tag}.qcow2"
        where = f"{row.id} (disk {disk.name})"
        stage = f"writing disk {disk.name}"
        size = disk.virtual_size
        try:
            with open(raw, "wb") as f:
                f.truncate(size)
                for i, digest in enumerate(disk.chunks):
                    track.count(stage, min(size, i * manifest.chunk_size), size)
                    if digest is not None:
                        f.seek(i * manifest.chunk_size)
                        f.write(self.records.store.get(digest, backup=where))
                f.flush()
                os.fsync(f.fileno())
            track.count(stage, size, size)
            track.phase(f"checking disk {disk.name}")
            self.ctx.deps.disks.from_raw(raw, out)
            check = self.ctx.deps.disks.check(out)
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
        self,
        row: BackupRow,
        manifest: Manifest,
        dirs: dict[str, Path],
        owner: str,
        track: Tracker,
    ) -> dict[str, Path]:
        """Every disk of the backup, each into its directory; none left on a failure."""
        made: dict[str, Path] = {}
        self.sweep(owner, list(dirs.values()))
        try:
            for disk in manifest.disks:
                made[disk.name] = self.materialize(
                    row, manifest, disk, dirs[disk.name], owner, track
                )
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
        track: Tracker,
    ) -> tuple[dict[str, Path], BackupRow, Manifest]:
        """The newest backup whose disks all restore cleanly (or exactly ``backup_id``);
        ``dirs_for`` says where each disk goes (and refuses a backup that cannot go).
        ``owner`` is the VM the disks are for. Callers hold the backup store's lock."""
        candidates = self.records.pick(vm, backup_id)
        for i, row in enumerate(candidates):
            try:
                manifest = self.records.manifest(row)
                dirs = dirs_for(manifest)
                track.phase(f"reading backup {row.id}")
                made = self.materialize_all(row, manifest, dirs, owner, track)
                return made, row, manifest
            except (StoreCorrupt, ManifestRefused) as exc:
                self.records.mark_failed(row.id)
                if backup_id is not None or i + 1 == len(candidates):
                    raise
                self.ctx.notice(f"skipped backup {row.id}: {exc.message}; trying the one before it")
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ in place
    def plan_in_place(self, instance_id: str, manifest: Manifest) -> list[InPlace]:
        """Where each volume of the backup goes back to; refused before anything changes
        when one cannot (attached elsewhere, its name taken, its pool gone)."""
        plans: list[InPlace] = []
        source = f"backup {manifest.id}"
        for disk in manifest.disks[1:]:
            with self.ctx.db.session() as s:
                vol = s.get(VolumeRow, disk.volume_id) if disk.volume_id else None
                same_name = s.scalar(select(VolumeRow).where(VolumeRow.name == disk.name))
            if vol is not None:
                if vol.instance_id not in (None, instance_id):
                    other = self.storage.owner_name(str(vol.instance_id))
                    raise Conflict(
                        f"volume {vol.name} of {source} is attached to {other} now",
                        hint="detach it, or restore beside it as a new VM",
                        next_steps=[
                            step(Step.VOLUME_DETACH, volume=vol.name),
                            step(Step.RESTORE_AS, vm=manifest.vm),
                        ],
                    )
                name, pool = vol.name, vol.pool
            else:
                if same_name is not None:
                    raise Conflict(
                        f"volume {disk.name} of {source} was deleted and another volume "
                        "has its name now",
                        hint="delete that volume, or restore beside it as a new VM",
                        next_steps=[step(Step.RESTORE_AS, vm=manifest.vm)],
                    )
                name, pool = disk.name, disk.pool
            plans.append(InPlace(disk, vol, name, pool, pool_dir(self.storage, pool, name, source)))
        return plans

    def free_slots(self, instance_id: str, plans: list[InPlace]) -> list[int]:
        """Slots for the volumes of the backup that are not attached to the VM now."""
        with self.ctx.db.session() as s:
            used = {
                v.slot
                for v in s.scalars(select(VolumeRow).where(VolumeRow.instance_id == instance_id))
            }
        used |= network_rows.used_slots(self.ctx, instance_id)
        free = [slot for slot in range(HOTPLUG_SLOTS) if slot not in used]
        wanted = sum(1 for p in plans if p.existing is None or p.existing.instance_id is None)
        if wanted > len(free):
            raise Conflict(
                f"the volumes of the backup need {wanted} free slots; the VM has {len(free)}",
                hint="detach a volume first",
            )
        return free

    def take_volume_files(
        self, plans: list[InPlace], files: dict[str, Path], tag: str
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
        plans: list[InPlace],
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
