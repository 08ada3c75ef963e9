"""Taking a backup: freeze, copy at one instant, store the new chunks, sign the manifest.

A live backup asks QEMU for a point-in-time copy of every disk into temporary qcow2
files (``blockdev-backup``): all of it the first time, afterwards only the clusters a
persistent dirty bitmap marked since the last backup. At the same instant a new bitmap
starts, for the next backup; the old one is dropped only once the backup is recorded,
so a failure at any point leaves the previous bitmap usable. A stopped VM's disk is
flattened with ``qemu-img convert`` and read whole. Either way only chunks the store
does not have yet are written (backup/store.py).

When the bitmap cannot be trusted (a snapshot moved the active layer, QEMU was killed,
the VM was backed up while stopped, the disk grew) the backup reads the whole disk,
still stores only the chunks that changed, and says why in its record.
"""

from __future__ import annotations

import contextlib
import shutil
from datetime import datetime

from cloudlet.backup.chunking import build_chunks
from cloudlet.backup.store import CHUNK_SIZE, DiskManifest, Manifest
from cloudlet.driver.base import DirtyBitmap, DiskCopy
from cloudlet.engine import call_options, vm_state
from cloudlet.engine.backup_disks import WHOLE, VmDisk, prior_disk, usable_bitmap, vm_disks
from cloudlet.engine.backup_records import BackupRecords, new_backup_id, vm_row_data
from cloudlet.engine.backup_views import BackupView, backup_view
from cloudlet.engine.context import EngineContext
from cloudlet.engine.storage import StorageService
from cloudlet.engine.storage_rows import OFFLINE, ONLINE
from cloudlet.errors import CloudletError, Conflict, OutOfSpace, StoreCorrupt
from cloudlet.progress import Tracker
from cloudlet.spec.instance import InstanceSpec
from cloudlet.store.models import BackupRow, InstanceRow, utcnow

BITMAP_PREFIX = "cloudlet-"
STORING = "storing chunks"  # the stage that counts bytes of the disks read into the store
# Room a qcow2 work file needs beyond its data (header, tables), with a margin.
WORK_FILE_SLACK = 4 << 20


class BackupCreator:
    """Takes backups of one VM at a time (under its lock and the store's)."""

    def __init__(self, ctx: EngineContext, records: BackupRecords, storage: StorageService) -> None:
        self.ctx = ctx
        self.records = records
        self.storage = storage

    # ------------------------------------------------------------ create
    def create(self, vm: str, track: Tracker | None = None) -> BackupView:
        """Back ``vm`` up; ``track`` hears the stages (default: none, the call's token)."""
        track = track or call_options.tracker()
        with self.ctx.lock(vm, cancel=track.cancel):
            row = vm_state.reconcile_locked(self.ctx, self.ctx.row(vm))
            if row.state not in ONLINE | OFFLINE:
                raise Conflict(f"cannot back up {vm}: it is {row.state}", hint="try again soon")
            store = self.records.store
            with self.records.store_lock(), self.ctx.operation(row, "backup") as op_id:
                leftovers = store.clean_tmp()
                if leftovers:
                    self.ctx.notice(
                        f"removed {len(leftovers)} work file(s) an interrupted backup left"
                    )
                try:
                    backup = self._take(row, track)
                except OutOfSpace as exc:
                    # QEMU's copy into the store's work file found no space: say what is full.
                    raise (store.full_error() if store.holds(exc.path) else exc) from None
                what = f"{backup.kind} backup {backup.id}" + (
                    f" ({backup.note})" if backup.note else ""
                )
                self.ctx.event(vm, "backup", what, op_id)
        return backup

    def _parent(self, row: InstanceRow) -> Manifest | None:
        for candidate in self.records.rows(row.name):
            if candidate.instance_id != row.id:
                continue
            try:
                return self.records.manifest(candidate)
            except CloudletError:
                continue
        return None

    def _plan_live(
        self, row: InstanceRow, parent: Manifest | None, disks: list[VmDisk]
    ) -> tuple[list[str | None], list[list[DirtyBitmap]], str]:
        """Per disk: the bitmap its incremental reads from (None: read it whole), the
        bitmaps it has now; and a note saying which disks are read whole, and why."""
        ctx = self.ctx
        bitmaps = [
            ctx.driver.disk_bitmaps(row.id, d.node) if d.keeps_bitmaps else [] for d in disks
        ]
        whole: list[str | None] = [None] * len(disks)
        if parent is None:
            return whole, bitmaps, ""
        if self.records.find(parent.vm, parent.id).verify_ok is False:
            return (
                whole,
                bitmaps,
                f"backup {parent.id} failed verify, so nothing builds on it: {WHOLE}",
            )
        if parent.consistency == "offline" or not any(d.bitmap for d in parent.disks):
            return whole, bitmaps, f"backup {parent.id} was taken while the VM was stopped: {WHOLE}"
        since: list[str | None] = []
        notes: list[str] = []
        for disk, found in zip(disks, bitmaps, strict=True):
            bitmap, why = usable_bitmap(parent, disk, found)
            since.append(bitmap)
            if why:
                notes.append(why)
        return since, bitmaps, "; ".join(notes)

    def _check_room(self, since: list[str | None], bitmaps: list[list[DirtyBitmap]]) -> None:
        """Refuse an incremental whose changed clusters cannot fit in the store's work
        directory before anything starts: once QEMU's copy runs out of room there, a
        guest write that meets its copy-before-write fails too, and QEMU pauses the guest
        for want of space (a guest with frozen file systems cannot be thawed then)."""
        needed = 0
        for name, found in zip(since, bitmaps, strict=True):
            if name is None:
                return  # read whole: how much it writes is not known in advance
            needed += sum(b.count for b in found if b.name == name) + WORK_FILE_SLACK
        if needed > shutil.disk_usage(self.records.store.tmp).free:
            raise self.records.store.full_error()

    def _copy_live(self, row: InstanceRow, copies: list[DiskCopy], track: Tracker) -> str:
        """All disks copied at one instant, the guest's file systems frozen for that
        instant only; the consistency reached."""
        ctx = self.ctx
        track.phase("freezing the guest")
        frozen = self.storage.freeze_guest(row, "backup")
        thawed: list[bool] = []

        def thaw() -> None:
            # Right after the backup's instant: the guest is frozen for no longer than
            # QEMU takes to start the jobs, not for the whole copy.
            if frozen and not thawed:
                ctx.driver.thaw_filesystems(row.id)
                thawed.append(True)

        def thaw_quietly() -> None:
            with contextlib.suppress(CloudletError):
                thaw()

        try:
            track.tell("copying disks")
            ctx.driver.backup_disks(
                row.id,
                copies,
                speed=ctx.settings.backup_speed,
                started=thaw_quietly,
                cancel=track.cancel,
            )
        except BaseException:
            thaw_quietly()  # the copy's own error is the one to report
            if frozen and not thawed:
                ctx.notice(
                    f"could not thaw {row.name}'s file systems: its writes wait until they "
                    "are thawed; restart the VM if it stays stuck"
                )
            raise
        thaw()
        return "file systems frozen" if frozen else "crash-consistent"

    def _take(self, row: InstanceRow, track: Tracker) -> BackupView:
        ctx = self.ctx
        started = utcnow()
        backup_id = new_backup_id(started)
        parent = self._parent(row)
        disks = vm_disks(ctx, row)
        live = row.state in ONLINE
        work = [self.records.store.tmp / f"{backup_id}-{i}.qcow2" for i in range(len(disks))]
        new_bitmap = BITMAP_PREFIX + backup_id
        bitmaps: list[list[DirtyBitmap]] = [[] for _ in disks]
        marked: list[VmDisk] = []  # disks the new bitmap may have started on
        created: set[str] = set()
        try:
            if live:
                since, bitmaps, note = self._plan_live(row, parent, disks)
                self._check_room(since, bitmaps)
                for disk, path in zip(disks, work, strict=True):
                    ctx.deps.disks.create_blank(path, disk.size)
                copies = [
                    DiskCopy(path, d.node, new_bitmap if d.keeps_bitmaps else None, s)
                    for d, path, s in zip(disks, work, since, strict=True)
                ]
                marked = [d for d in disks if d.keeps_bitmaps]
                consistency = self._copy_live(row, copies, track)
            else:
                consistency = "offline"
                since = [None] * len(disks)
                note = (
                    f"the VM was stopped: read the whole disk, stored only the chunks "
                    f"that changed since backup {parent.id}"
                    if parent is not None
                    else ""
                )
                for disk, path in zip(disks, work, strict=True):
                    track.phase(f"copying {disk.label}")
                    ctx.deps.disks.flatten(disk.path, path, disk.format)
            parts: list[DiskManifest] = []
            total = sum(d.size for d in disks)
            behind = 0  # bytes of the disks before this one
            for disk, path, bitmap in zip(disks, work, since, strict=True):
                track.count(STORING, behind, total)
                prior = prior_disk(parent, disk) if parent is not None and bitmap else None
                result = build_chunks(
                    self.records.store,
                    ctx.deps.disks.extents(path, CHUNK_SIZE),
                    disk.size,
                    prior.chunks if prior is not None else None,
                    backup=backup_id,
                    created=created,
                    cancel=track.cancel,
                    progress=track.counter(STORING, total, behind),
                )
                behind += disk.size
                path.unlink(missing_ok=True)  # its chunks are stored: free the space now
                part = disk.manifest(result.chunks, new_bitmap if disk in marked else None)
                part.read_bytes, part.new_bytes = result.read_bytes, result.new_bytes
                parts.append(part)
            track.phase("signing the manifest")
            manifest = self._write_manifest(row, backup_id, started, parent, parts, note,
                                            consistency, incremental=any(since))  # fmt: skip
        except StoreCorrupt as exc:
            self._cleanup_failed(row, backup_id, created, new_bitmap, marked)
            if parent is None:
                raise
            # An incremental patches its parent's chunks: a bad one there stops it. The
            # parent is marked, so the next backup reads the whole disk instead.
            self.records.mark_failed(parent.id)
            raise StoreCorrupt(
                exc.message, hint="run the backup again: it reads the whole disk"
            ) from None
        except BaseException:
            self._cleanup_failed(row, backup_id, created, new_bitmap, marked)
            raise
        finally:
            for path in work:
                path.unlink(missing_ok=True)
        # Recorded: the older bitmaps (and any an interrupted backup left) can go.
        for disk, found in zip(disks, bitmaps, strict=True):
            for old in found:
                if old.name.startswith(BITMAP_PREFIX) and old.name != new_bitmap:
                    with contextlib.suppress(CloudletError):
                        ctx.driver.remove_bitmap(row.id, old.name, disk.node)
        return backup_view(self.records.find(row.name, backup_id), manifest)

    def _write_manifest(
        self,
        row: InstanceRow,
        backup_id: str,
        started: datetime,
        parent: Manifest | None,
        parts: list[DiskManifest],
        note: str,
        consistency: str,
        *,
        incremental: bool,
    ) -> Manifest:
        """Record the backup: its manifest in the store (durably), then its row."""
        ctx = self.ctx
        spec = InstanceSpec.model_validate_json(row.spec_json)
        manifest = Manifest(
            id=backup_id,
            vm=row.name,
            vm_id=row.id,
            created_at=started.isoformat() + "Z",
            finished_at=utcnow().isoformat() + "Z",
            kind="incremental" if incremental else "full",
            parent=parent.id if parent is not None else None,
            note=note,
            consistency=consistency,
            read_bytes=sum(p.read_bytes for p in parts),
            new_bytes=sum(p.new_bytes for p in parts),
            disks=parts,
            spec=spec.model_dump(mode="json"),
            vm_row=vm_row_data(ctx, row),
        )
        self.records.store.write_manifest(manifest)
        with ctx.db.session() as s:
            s.add(
                BackupRow(
                    id=backup_id,
                    instance_id=row.id,
                    instance_name=row.name,
                    kind=manifest.kind,
                    note=note,
                    consistency=consistency,
                    virtual_size=parts[0].virtual_size,
                    read_bytes=manifest.read_bytes,
                    new_bytes=manifest.new_bytes,
                    chunks=sum(1 for p in parts for c in p.chunks if c is not None),
                    manifest_sha256=manifest.sha256,
                    created_at=started,
                )
            )
        return manifest

    def _cleanup_failed(
        self,
        row: InstanceRow,
        backup_id: str,
        created: set[str],
        new_bitmap: str,
        marked: list[VmDisk],
    ) -> None:
        """Undo a backup that failed: its manifest, the chunks it added, its new bitmaps."""
        self.records.store.delete_manifest(row.id, backup_id)
        self.records.store.remove_chunks(created)  # new in this backup: nothing else uses them
        for disk in marked:
            with contextlib.suppress(CloudletError):
                self.ctx.driver.remove_bitmap(row.id, new_bitmap, disk.node)
