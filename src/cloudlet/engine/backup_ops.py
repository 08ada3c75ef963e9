"""Backup use cases: back up, list, verify, prune, schedule, restore, export and import.

A live backup asks QEMU for a point-in-time copy of the root disk into a temporary
qcow2 (``blockdev-backup``): all of it the first time, afterwards only the clusters a
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
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from cloudlet.backup.chunking import build_chunks
from cloudlet.backup.retention import keep_set
from cloudlet.backup.store import (
    CHUNK_SIZE,
    ROOT,
    BackupStore,
    DiskManifest,
    Manifest,
)
from cloudlet.driver.base import DirtyBitmap, DiskCopy
from cloudlet.engine import backup_export, locks, teardown, vm_state
from cloudlet.engine.backup_disks import WHOLE, VmDisk, prior_disk, usable_bitmap, vm_disks
from cloudlet.engine.backup_restore import (
    NewVolume,
    Restorer,
    check_new_volumes,
    install_new_volumes,
    new_volume_name,
    pool_dir,
)
from cloudlet.engine.storage_rows import (
    OFFLINE,
    ONLINE,
    active_disk,
    attached_volume_names,
    clones_of,
    default_disk,
    set_active_dropping,
    snapshot_rows,
    state_file,
)
from cloudlet.engine.vm_record import check_record
from cloudlet.errors import (
    CloudletError,
    Conflict,
    ManifestRefused,
    NotFound,
    OutOfSpace,
    StoreCorrupt,
)
from cloudlet.spec import names
from cloudlet.spec.instance import BackupPolicy, InstanceSpec
from cloudlet.spec.names import validate_name
from cloudlet.spec.states import VMState
from cloudlet.store.models import BackupRow, InstanceDiskRow, InstanceRow, SnapshotRow, utcnow

if TYPE_CHECKING:
    from cloudlet.engine.engine import Engine
    from cloudlet.engine.views import InstanceView

STORE_LOCK = ".backup-store"
BITMAP_PREFIX = "cloudlet-"
MANIFEST_KEY = "keys/backup-manifest.key"


@dataclass(frozen=True)
class DiskSummary:
    name: str
    size: int
    read: int
    stored: int


@dataclass(frozen=True)
class BackupView:
    id: str
    vm: str
    created_at: datetime
    kind: str
    note: str
    consistency: str  # "file systems frozen", "crash-consistent" or "offline"
    size: int  # the disk's virtual size
    read: int  # bytes read from the disk
    stored: int  # bytes of new chunks this backup added to the store
    chunks: int
    verified: str  # "ok", "failed" or "" (never verified)
    # each disk: name ("root" or the volume's), size, read and stored bytes
    disks: tuple[DiskSummary, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat() + "Z"
        return data


@dataclass(frozen=True)
class VerifyReport:
    vm: str
    backups: list[str]
    chunks: int
    problems: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_backup_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def _view(row: BackupRow, manifest: Manifest | None) -> BackupView:
    verified = "" if row.verify_ok is None else ("ok" if row.verify_ok else "failed")
    disks = tuple(
        DiskSummary(d.name, d.virtual_size, d.read_bytes, d.new_bytes)
        for d in (manifest.disks if manifest is not None else [])
    )
    return BackupView(
        id=row.id,
        vm=row.instance_name,
        created_at=row.created_at,
        kind=row.kind,
        note=row.note,
        consistency=row.consistency,
        size=row.virtual_size,
        read=row.read_bytes,
        stored=row.new_bytes,
        chunks=row.chunks,
        verified=verified,
        disks=disks,
    )


class BackupOps:
    def __init__(self, engine: Engine) -> None:
        self.e = engine
        # The manifests' signing key stays in the state directory, out of the store's reach.
        self.store = BackupStore(engine.settings.backup_store, engine.paths.home / MANIFEST_KEY)

    @contextmanager
    def _store_lock(self) -> Iterator[None]:
        with locks.hold(self.e.paths.locks, STORE_LOCK, what="the backup store"):
            self.store.ensure()
            yield

    def _rows(self, vm: str | None = None) -> list[BackupRow]:
        """Backups, newest first (of one VM name, or all)."""
        if vm is not None:
            names.vm_name(vm)
        with self.e.db.session() as s:
            query = select(BackupRow).order_by(BackupRow.created_at.desc(), BackupRow.id.desc())
            if vm is not None:
                query = query.where(BackupRow.instance_name == vm)
            return list(s.scalars(query).all())

    def _find(self, vm: str, backup_id: str) -> BackupRow:
        names.backup_id(backup_id)
        for row in self._rows(vm):
            if row.id == backup_id:
                return row
        raise NotFound(f"{vm} has no backup {backup_id!r}", hint=f"see 'cloudlet backup list {vm}'")

    def _manifest(self, row: BackupRow) -> Manifest:
        return self.store.read_manifest(row.instance_id, row.id, row.manifest_sha256)

    # ------------------------------------------------------------ create
    def create(self, vm: str) -> BackupView:
        with self.e.ctx.lock(vm):
            row = vm_state.reconcile_locked(self.e.ctx, self.e.ctx.row(vm))
            if row.state not in ONLINE | OFFLINE:
                raise Conflict(f"cannot back up {vm}: it is {row.state}", hint="try again soon")
            with self._store_lock(), self.e.ctx.operation(row, "backup") as op_id:
                leftovers = self.store.clean_tmp()
                if leftovers:
                    self.e.notices.append(
                        f"removed {len(leftovers)} work file(s) an interrupted backup left"
                    )
                try:
                    backup = self._take(row)
                except OutOfSpace as exc:
                    # QEMU's copy into the store's work file found no space: say what is full.
                    raise (self.store.full_error() if self.store.holds(exc.path) else exc) from None
                what = f"{backup.kind} backup {backup.id}" + (
                    f" ({backup.note})" if backup.note else ""
                )
                self.e.ctx.event(vm, "backup", what, op_id)
        return backup

    def _parent(self, row: InstanceRow) -> Manifest | None:
        for candidate in self._rows(row.name):
            if candidate.instance_id != row.id:
                continue
            try:
                return self._manifest(candidate)
            except CloudletError:
                continue
        return None

    def _plan_live(
        self, row: InstanceRow, parent: Manifest | None, disks: list[VmDisk]
    ) -> tuple[list[str | None], list[list[DirtyBitmap]], str]:
        """Per disk: the bitmap its incremental reads from (None: read it whole), the
        bitmaps it has now; and a note saying which disks are read whole, and why."""
        e = self.e
        bitmaps = [e.driver.disk_bitmaps(row.id, d.node) if d.keeps_bitmaps else [] for d in disks]
        whole: list[str | None] = [None] * len(disks)
        if parent is None:
            return whole, bitmaps, ""
        if self._find(parent.vm, parent.id).verify_ok is False:
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

    def _copy_live(self, row: InstanceRow, copies: list[DiskCopy]) -> str:
        """All disks copied at one instant, the guest's file systems frozen for that
        instant only; the consistency reached."""
        e = self.e
        frozen = e.storage.freeze_guest(row, "backup")
        thawed: list[bool] = []

        def thaw() -> None:
            # Right after the backup's instant: the guest is frozen for no longer than
            # QEMU takes to start the jobs, not for the whole copy.
            if frozen and not thawed:
                e.driver.thaw_filesystems(row.id)
                thawed.append(True)

        def thaw_quietly() -> None:
            with contextlib.suppress(CloudletError):
                thaw()

        try:
            e.driver.backup_disks(
                row.id, copies, speed=e.settings.backup_speed, started=thaw_quietly
            )
        finally:
            thaw()
        return "file systems frozen" if frozen else "crash-consistent"

    def _take(self, row: InstanceRow) -> BackupView:
        e = self.e
        started = utcnow()
        backup_id = new_backup_id(started)
        parent = self._parent(row)
        disks = vm_disks(e.ctx, row)
        live = row.state in ONLINE
        work = [self.store.tmp / f"{backup_id}-{i}.qcow2" for i in range(len(disks))]
        new_bitmap = BITMAP_PREFIX + backup_id
        bitmaps: list[list[DirtyBitmap]] = [[] for _ in disks]
        marked: list[VmDisk] = []  # disks the new bitmap may have started on
        created: set[str] = set()
        try:
            if live:
                since, bitmaps, note = self._plan_live(row, parent, disks)
                for disk, path in zip(disks, work, strict=True):
                    e.deps.disks.create_blank(path, disk.size)
                copies = [
                    DiskCopy(path, d.node, new_bitmap if d.keeps_bitmaps else None, s)
                    for d, path, s in zip(disks, work, since, strict=True)
                ]
                marked = [d for d in disks if d.keeps_bitmaps]
                consistency = self._copy_live(row, copies)
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
                    e.deps.disks.flatten(disk.path, path, disk.format)
            parts: list[DiskManifest] = []
            for disk, path, bitmap in zip(disks, work, since, strict=True):
                prior = prior_disk(parent, disk) if parent is not None and bitmap else None
                result = build_chunks(
                    self.store,
                    e.deps.disks.extents(path, CHUNK_SIZE),
                    disk.size,
                    prior.chunks if prior is not None else None,
                    backup=backup_id,
                    created=created,
                )
                path.unlink(missing_ok=True)  # its chunks are stored: free the space now
                part = disk.manifest(result.chunks, new_bitmap if disk in marked else None)
                part.read_bytes, part.new_bytes = result.read_bytes, result.new_bytes
                parts.append(part)
            manifest = self._write_manifest(row, backup_id, started, parent, parts, note,
                                            consistency, incremental=any(since))  # fmt: skip
        except StoreCorrupt as exc:
            self._cleanup_failed(row, backup_id, created, new_bitmap, marked)
            if parent is None:
                raise
            # An incremental patches its parent's chunks: a bad one there stops it. The
            # parent is marked, so the next backup reads the whole disk instead.
            self._mark_failed(parent.id)
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
                        e.driver.remove_bitmap(row.id, old.name, disk.node)
        return _view(self._find(row.name, backup_id), manifest)

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
        e = self.e
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
            vm_row=backup_export.vm_row_data(self, row),
        )
        self.store.write_manifest(manifest)
        with e.db.session() as s:
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

    def _mark_failed(self, backup_id: str) -> None:
        with self.e.db.session() as s:
            fresh = s.get(BackupRow, backup_id)
            if fresh is not None:
                fresh.verify_ok, fresh.verified_at = False, utcnow()

    def _cleanup_failed(
        self,
        row: InstanceRow,
        backup_id: str,
        created: set[str],
        new_bitmap: str,
        marked: list[VmDisk],
    ) -> None:
        """Undo a backup that failed: its manifest, the chunks it added, its new bitmaps."""
        self.store.delete_manifest(row.id, backup_id)
        self.store.remove_chunks(created)  # new in this backup: nothing else uses them
        for disk in marked:
            with contextlib.suppress(CloudletError):
                self.e.driver.remove_bitmap(row.id, new_bitmap, disk.node)

    # ------------------------------------------------------------ reads
    def backups(self, vm: str | None = None) -> list[BackupView]:
        if vm is not None and not self._rows(vm):
            self.e.ctx.row(vm)  # an unknown VM with no backups: NotFound
        views = []
        for row in self._rows(vm):
            try:
                manifest: Manifest | None = self._manifest(row)
            except CloudletError:
                manifest = None  # unreadable: verify says why; the row still lists
            views.append(_view(row, manifest))
        return views

    def verify(self, vm: str, backup_id: str | None = None) -> VerifyReport:
        rows = [self._find(vm, backup_id)] if backup_id else self._rows(vm)
        if not rows:
            raise NotFound(f"{vm} has no backups", hint=f"take one: 'cloudlet backup create {vm}'")
        problems: list[str] = []
        chunks: set[str] = set()
        with self._store_lock():
            for row in rows:
                try:
                    manifest = self._manifest(row)
                    found = [str(p) for p in self.store.verify(manifest)]
                    if manifest.sha256 != row.manifest_sha256:
                        found.append(f"backup {row.id}: its manifest is not the one recorded")
                    chunks |= manifest.chunk_ids()
                except CloudletError as exc:
                    found = [f"backup {row.id}: {exc.message}"]
                problems += found
                with self.e.db.session() as s:
                    fresh = s.get(BackupRow, row.id)
                    if fresh is not None:
                        fresh.verified_at = utcnow()
                        fresh.verify_ok = not found
        return VerifyReport(vm, [r.id for r in rows], len(chunks), problems)

    # ------------------------------------------------------------ policy and retention
    def policy(self, vm: str) -> BackupPolicy:
        return self.e.spec(vm).backup

    def set_policy(self, vm: str, changes: dict[str, Any]) -> BackupPolicy:
        current = self.policy(vm).model_dump()
        policy = BackupPolicy.model_validate({**current, **changes})
        self.e.update_spec(vm, {"backup": policy})
        return self.policy(vm)

    def prune(self, vm: str, *, policy: BackupPolicy | None = None) -> tuple[list[str], int]:
        """Apply the VM's retention: (ids of the backups deleted, bytes of chunks freed)."""
        rules = (policy or self.policy(vm)).retention()
        with self._store_lock():
            rows = self._rows(vm)
            keep = keep_set([(r.id, r.created_at) for r in rows], rules)
            gone = [r for r in rows if r.id not in keep]
            for row in gone:
                with self.e.db.session() as s:
                    fresh = s.get(BackupRow, row.id)
                    if fresh is not None:
                        s.delete(fresh)
                self.store.delete_manifest(row.instance_id, row.id)
            _, freed = self.store.garbage_collect() if gone else (0, 0)
        if gone:
            self.e.ctx.event(vm, "backup-pruned", f"pruned {len(gone)} backup(s)")
        return [r.id for r in gone], freed

    def run_due(self, now: float | None = None) -> tuple[list[str], int]:
        """Back up every VM whose policy says it is time, then prune it: one line each,
        and how many failed (one VM's failure does not stop the others)."""
        now = time.time() if now is None else now
        lines: list[str] = []
        failed = 0
        with self.e.db.session() as s:
            vms = s.scalars(
                select(InstanceRow).where(InstanceRow.kind == "system").order_by(InstanceRow.name)
            ).all()
        for vm in vms:
            policy = InstanceSpec.model_validate_json(vm.spec_json).backup
            every = policy.interval()
            if every is None:
                continue
            latest = next((r for r in self._rows(vm.name) if r.instance_id == vm.id), None)
            last = latest.created_at.replace(tzinfo=UTC).timestamp() if latest else None
            if last is not None and now - last < every - 60:  # a minute of slack for cron
                continue
            try:
                backup = self.create(vm.name)
                pruned, _ = self.prune(vm.name, policy=policy)
                lines.append(
                    f"{vm.name}: {backup.kind} backup {backup.id}"
                    + (f", pruned {len(pruned)}" if pruned else "")
                )
            except CloudletError as exc:
                failed += 1
                lines.append(f"{vm.name}: FAILED: {exc.one_line()}")
        return lines, failed

    # ------------------------------------------------------------ restore
    def _pick(self, vm: str, backup_id: str | None) -> list[BackupRow]:
        if backup_id is not None:
            return [self._find(vm, backup_id)]
        rows = [r for r in self._rows(vm) if r.verify_ok is not False]
        if not rows:
            raise NotFound(
                f"{vm} has no usable backup",
                hint=f"see 'cloudlet backup list {vm}'",
            )
        return rows

    def _first_readable(self, vm: str, backup_id: str | None) -> Manifest:
        """The manifest of ``backup_id``, or of the newest backup whose manifest passes
        its checks: one that fails is marked failed (so --latest never uses it again),
        said in a notice, and the one before it tried."""
        candidates = self._pick(vm, backup_id)
        for i, row in enumerate(candidates):
            try:
                return self._manifest(row)
            except (StoreCorrupt, ManifestRefused) as exc:
                self._mark_failed(row.id)
                if backup_id is not None or i + 1 == len(candidates):
                    raise
                self.e.notices.append(
                    f"skipped backup {row.id}: {exc.message}; trying the one before it"
                )
        raise AssertionError("unreachable")

    def restore(
        self,
        vm: str,
        *,
        backup_id: str | None = None,
        as_name: str | None = None,
        force: bool = False,
    ) -> str:
        names.vm_name(vm)
        if backup_id is not None:
            names.backup_id(backup_id)
        if as_name is not None:
            names.vm_name(as_name)
            return self._restore_as(vm, backup_id, as_name)
        row = vm_state.reconcile(self.e.ctx, self.e.ctx.row(vm))
        restorer = Restorer(self)
        # unknown backups, and volumes that cannot go back, fail before anything stops
        first = self._first_readable(vm, backup_id)
        restorer.free_slots(row.id, restorer.plan_in_place(row.id, first))
        if row.state in ONLINE:
            if not force:
                raise Conflict(
                    f"cannot restore {vm} in place: it is {row.state}",
                    hint="stop it first, add --force to stop it now, "
                    "or restore beside it with --as NAME",
                )
            self.e.stop(vm, force=True)
        with self.e.ctx.lock(vm):
            row = vm_state.reconcile_locked(self.e.ctx, self.e.ctx.row(vm))
            if row.state not in OFFLINE:
                raise Conflict(f"cannot restore {vm} in place: it is {row.state}")
            snaps = snapshot_rows(self.e.ctx, row.id)
            clones = clones_of(self.e.ctx, [s.id for s in snaps])
            if clones:
                raise Conflict(
                    f"restoring {vm} would drop snapshots that linked clones "
                    f"({', '.join(sorted(clones))}) grow from",
                    hint=f"delete those clones first, or restore beside it: --as {vm}-restored",
                )
            instance_dir = self.e.paths.instance_dir(row.id)
            self._clean_killed_restore(instance_dir, active_disk(self.e.ctx, row.id))
            with self.e.ctx.operation(row, "restore") as op_id, self._store_lock():
                plans: dict[str, list[Any]] = {}

                def dirs_for(manifest: Manifest) -> dict[str, Path]:
                    plans[manifest.id] = restorer.plan_in_place(row.id, manifest)
                    return {ROOT: instance_dir, **{p.disk.name: p.directory
                                                   for p in plans[manifest.id]}}  # fmt: skip

                files, backup, manifest = restorer.materialize_first(
                    vm, backup_id, dirs_for, row.id
                )
                said = self._swap_in(row, snaps, plans[manifest.id], files)
                kept = sorted(
                    set(attached_volume_names(self.e.ctx, row.id))
                    - {p.name for p in plans[manifest.id]}
                )
                message = f"{vm} restored from backup {backup.id}"
                if said:
                    message += f" ({', '.join(said)})"
                if kept:
                    message += (
                        f"; volume(s) {', '.join(kept)} were not in the backup and stay as they are"
                    )
                if snaps:
                    message += (
                        f"; its snapshots ({', '.join(s.name for s in snaps)}) were dropped: "
                        "the disk is now a single file"
                    )
                self.e.ctx.event(vm, "restored", message, op_id)
        return message

    def _swap_in(
        self,
        row: InstanceRow,
        snaps: list[SnapshotRow],
        plans: list[Any],
        files: dict[str, Path],
    ) -> list[str]:
        """Make the restored disks the VM's in one database commit: the root disk (its old
        chain and snapshots dropped) and every volume of the backup. Killed before the
        commit, the VM keeps all its old disks; after it, all the restored ones."""
        restorer = Restorer(self)
        tag = uuid.uuid4().hex[:12]
        try:
            free = restorer.free_slots(row.id, plans)
            instance_dir = self.e.paths.instance_dir(row.id)
            old = [Path(s.file) for s in snaps] + [
                active_disk(self.e.ctx, row.id),
                default_disk(self.e.ctx, row.id),
            ]
            target = instance_dir / f"disk-{tag}.qcow2"
            os.replace(files[ROOT], target)
            files[ROOT] = target
            taken = restorer.take_volume_files(plans, files, tag)
            files.update({p.disk.name: taken[p.name] for p in plans})
            size = self.e.deps.disks.virtual_size(target)
            with self.e.db.session() as s:
                set_active_dropping(s, row.id, target, snaps)
                disk_row = s.get(InstanceDiskRow, row.id)
                if disk_row is not None:
                    disk_row.origin_snapshot_id = None  # no longer grows from a snapshot
                fresh_vm = s.get(InstanceRow, row.id)
                assert fresh_vm is not None
                fresh_vm.disk_size = size
                said, replaced = restorer.point_volumes(s, row.id, plans, taken, free)
        except BaseException:
            for path in files.values():
                path.unlink(missing_ok=True)
            raise
        for path in old + replaced:
            if path != target:
                path.unlink(missing_ok=True)
                state_file(path).unlink(missing_ok=True)  # memory snapshots
        return said

    def _clean_killed_restore(self, instance_dir: Path, active: Path) -> None:
        """Remove what a killed restore left: temp files, a restored disk never switched to
        (one not in the VM's chain)."""
        chain: set[Path] = set()
        layer: Path | None = active
        while layer is not None and layer not in chain and layer.exists():
            chain.add(layer)
            below = self.e.deps.disks.backing(layer)
            layer = below[0] if below is not None else None
        for stale in [*instance_dir.glob(".restore-*"), *instance_dir.glob("disk-*.qcow2")]:
            if stale not in chain:
                stale.unlink()

    def _restore_as(self, vm: str, backup_id: str | None, name: str) -> str:
        restorer = Restorer(self)
        holder: dict[str, Any] = {}

        def plan(manifest: Manifest) -> list[tuple[str, str]]:
            return [(new_volume_name(name, manifest.vm, d.name), d.pool)
                    for d in manifest.disks[1:]]  # fmt: skip

        first = self._first_readable(vm, backup_id)
        validate_name(name)
        vm_state.ensure_name_free(self.e.ctx, name)
        check_new_volumes(self.e, plan(first), f"backup {first.id}")

        def fill(disk: Path) -> list[NewVolume]:
            def dirs_for(manifest: Manifest) -> dict[str, Path]:
                source = f"backup {manifest.id}"
                return {ROOT: disk.parent, **{
                    d.name: pool_dir(self.e, pool, new, source)
                    for d, (new, pool) in zip(manifest.disks[1:], plan(manifest), strict=True)
                }}  # fmt: skip

            with self._store_lock():  # the new VM's directory is named by its id
                files, backup, manifest = restorer.materialize_first(
                    vm, backup_id, dirs_for, disk.parent.name
                )
            holder["backup"] = backup
            os.replace(files.pop(ROOT), disk)
            return [
                NewVolume(new, pool, d.virtual_size, files[d.name])
                for d, (new, pool) in zip(manifest.disks[1:], plan(manifest), strict=True)
            ]

        view = self._new_vm(
            name,
            first.spec,
            first.vm_row,
            fill,
            lambda: f"restored from backup {holder['backup'].id} of {vm}",
            f"backup {first.id}",
        )
        volumes = attached_volume_names(self.e.ctx, view.id)
        extra = f" with volume(s) {', '.join(volumes)}" if volumes else ""
        return f"{name} created from backup {holder['backup'].id} of {vm}{extra} (stopped)"

    def _new_vm(
        self,
        name: str,
        spec_data: object,
        row_data: object,
        fill: Callable[[Path], list[NewVolume]],
        story: Callable[[], str],
        source: str,
    ) -> InstanceView:
        """A new stopped VM with ``spec_data`` (renamed) whose root disk ``fill`` writes;
        the volumes it returns are made and attached. A failure removes all of it.
        ``spec_data`` and ``row_data`` come from a file (``source``): vm_record.py."""
        from cloudlet.engine import access as access_mod
        from cloudlet.engine.ports import ssh_port

        e = self.e
        record = check_record(e, name, spec_data, row_data, source)
        spec = record.spec
        vm_state.ensure_name_free(e.ctx, name)
        new_id = str(uuid.uuid4())
        with e.ctx.lock(name):
            vm_state.ensure_name_free(e.ctx, name)
            row = InstanceRow(
                id=new_id,
                name=name,
                state=VMState.CREATING.value,
                spec_json=spec.model_dump_json(),
                image=record.image.name,
                image_path=str(record.image.path),
                type_name=record.shape.name,
                cpus=record.shape.cpus,
                memory=record.shape.memory,
                disk_size=record.image.min_disk_bytes,  # the disk's own size, once filled
                arch=spec.arch,
                location=spec.location,
                ssh_port=ssh_port(e.db) if record.ssh else None,
            )
            with e.db.session() as s:
                s.add(row)
            made: list[str] = []
            try:
                with e.ctx.operation(row, "create") as op_id:
                    instance_dir = e.paths.instance_dir(new_id)
                    instance_dir.mkdir(parents=True)
                    disk = instance_dir / "disk.qcow2"
                    made = install_new_volumes(e, new_id, fill(disk))
                    if record.seed:
                        access_mod.write_seed(
                            instance_dir / "seed.iso",
                            instance_id=new_id,
                            hostname=name,
                            access=spec.access,
                            user_data=access_mod.seed_user_data(spec),
                        )
                    with e.db.session() as s:
                        fresh = s.get(InstanceRow, new_id)
                        assert fresh is not None
                        fresh.disk_size = e.deps.disks.virtual_size(disk)
                        fresh.state = VMState.STOPPED.value
                    e.ctx.event(name, "created", story(), op_id)
            except BaseException:
                e.storage.undo_new_vm_volumes(new_id, made)
                teardown.remove_everything(e.ctx, row)
                raise
        return e.show(name)

    # ------------------------------------------------------------ export / import
    def export(self, vm: str, dest: Path) -> str:
        """One tar with the VM's spec, its root disk and its volumes (backup_export.py)."""
        names.vm_name(vm)
        return backup_export.export(self, vm, dest)

    def import_(self, src: Path, name: str | None = None) -> InstanceView:
        if name is not None:
            names.vm_name(name)
        return backup_export.import_(self, src, name)
