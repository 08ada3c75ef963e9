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
import hashlib
import json
import os
import shutil
import tarfile
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
from cloudlet.backup.store import CHUNK_SIZE, BackupStore, DiskManifest, Manifest, StoreCorrupt
from cloudlet.driver.base import DirtyBitmap
from cloudlet.engine import locks
from cloudlet.engine.storage_ops import (
    _OFFLINE,
    _ONLINE,
    StorageOps,
    _clones_of,
    _set_active,
    _snapshot_rows,
    active_disk,
    default_disk,
    state_file,
)
from cloudlet.errors import CloudletError, Conflict, InvalidInput, NotFound, OutOfSpace
from cloudlet.spec.instance import BackupPolicy, InstanceSpec
from cloudlet.spec.names import validate_name
from cloudlet.spec.states import VMState
from cloudlet.store.models import BackupRow, InstanceDiskRow, InstanceRow, SnapshotRow, utcnow

if TYPE_CHECKING:
    from cloudlet.engine.engine import Engine
    from cloudlet.engine.views import InstanceView

STORE_LOCK = ".backup-store"
BITMAP_PREFIX = "cloudlet-"
EXPORT_FORMAT = 1
_ROW_FIELDS = ("image", "image_path", "type_name", "cpus", "memory", "disk_size", "arch",
               "location")  # fmt: skip


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


def _view(row: BackupRow) -> BackupView:
    verified = "" if row.verify_ok is None else ("ok" if row.verify_ok else "failed")
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
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class BackupOps:
    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self.store = BackupStore(engine.settings.backup_store)

    @contextmanager
    def _store_lock(self) -> Iterator[None]:
        with locks.hold(self.e.paths.locks, STORE_LOCK, what="the backup store"):
            self.store.ensure()
            yield

    def _rows(self, vm: str | None = None) -> list[BackupRow]:
        """Backups, newest first (of one VM name, or all)."""
        with self.e.db.session() as s:
            query = select(BackupRow).order_by(BackupRow.created_at.desc(), BackupRow.id.desc())
            if vm is not None:
                query = query.where(BackupRow.instance_name == vm)
            return list(s.scalars(query).all())

    def _find(self, vm: str, backup_id: str) -> BackupRow:
        for row in self._rows(vm):
            if row.id == backup_id:
                return row
        raise NotFound(f"{vm} has no backup {backup_id!r}", hint=f"see 'cloudlet backup list {vm}'")

    def _manifest(self, row: BackupRow) -> Manifest:
        return self.store.read_manifest(row.instance_id, row.id)

    # ------------------------------------------------------------ create
    def create(self, vm: str) -> BackupView:
        with self.e._lock(vm):
            row = self.e._reconcile_locked(self.e._row(vm))
            if row.state not in _ONLINE | _OFFLINE:
                raise Conflict(f"cannot back up {vm}: it is {row.state}", hint="try again soon")
            with self._store_lock(), self.e._operation(row, "backup") as op_id:
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
                self.e._event(vm, "backup", what, op_id)
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

    def _usable_bitmap(
        self, parent: Manifest | None, bitmaps: list[DirtyBitmap], layer: Path, size: int
    ) -> tuple[str | None, str]:
        """The bitmap an incremental backup can read from, or None and why not."""
        if parent is None:
            return None, ""
        why = "read the whole disk, stored only the chunks that changed"
        if self._find(parent.vm, parent.id).verify_ok is False:
            return None, f"backup {parent.id} failed verify, so nothing builds on it: {why}"
        if parent.disks[0].virtual_size != size:
            return None, f"the disk's size changed since backup {parent.id}: {why}"
        if parent.bitmap is None:
            return None, f"backup {parent.id} was taken while the VM was stopped: {why}"
        if parent.bitmap["layer"] != str(layer):
            return None, (
                f"a snapshot changed the disk's active layer since backup {parent.id}, "
                f"so its dirty bitmap is gone: {why}"
            )
        found = {b.name: b for b in bitmaps}.get(parent.bitmap["name"])
        if found is None:
            return None, (
                f"the dirty bitmap of backup {parent.id} is lost (QEMU stopped without "
                f"saving it, or the disk was replaced): {why}"
            )
        if found.inconsistent or not found.recording:
            return None, (
                f"the dirty bitmap of backup {parent.id} is inconsistent (QEMU was killed "
                f"while it recorded): {why}"
            )
        return found.name, ""

    def _take(self, row: InstanceRow) -> BackupView:
        e = self.e
        started = utcnow()
        backup_id = new_backup_id(started)
        parent = self._parent(row)
        layer = active_disk(e, row.id, heal=True)
        size = e.deps.disks.virtual_size(layer)
        live = row.state in _ONLINE
        work = self.store.tmp / f"{backup_id}.qcow2"
        new_bitmap: str | None = None
        bitmaps: list[DirtyBitmap] = []
        created: set[str] = set()
        try:
            if live:
                bitmaps = e.driver.disk_bitmaps(row.id)
                since, note = self._usable_bitmap(parent, bitmaps, layer, size)
                e.deps.disks.create_blank(work, size)
                new_bitmap = BITMAP_PREFIX + backup_id
                frozen = StorageOps(e)._freeze(row, "backup")
                consistency = "file systems frozen" if frozen else "crash-consistent"
                thawed: list[bool] = []

                def thaw() -> None:
                    # Right after the backup's instant: the guest is frozen for no longer
                    # than QEMU takes to start the job, not for the whole copy.
                    if frozen and not thawed:
                        e.driver.thaw_filesystems(row.id)
                        thawed.append(True)

                def thaw_quietly() -> None:
                    with contextlib.suppress(CloudletError):
                        thaw()

                try:
                    e.driver.backup_disk(
                        row.id,
                        work,
                        new_bitmap=new_bitmap,
                        since=since,
                        speed=e.settings.backup_speed,
                        started=thaw_quietly,
                    )
                finally:
                    thaw()
            else:
                consistency = "offline"
                since = None
                note = (
                    f"the VM was stopped: read the whole disk, stored only the chunks "
                    f"that changed since backup {parent.id}"
                    if parent is not None
                    else ""
                )
                e.deps.disks.flatten(layer, work)
            base = parent.disks[0].chunks if since is not None and parent is not None else None
            result = build_chunks(
                self.store,
                e.deps.disks.extents(work, CHUNK_SIZE),
                size,
                base,
                backup=backup_id,
                created=created,
            )
            spec = InstanceSpec.model_validate_json(row.spec_json)
            seed = (e.paths.instance_dir(row.id) / "seed.iso").exists()
            manifest = Manifest(
                id=backup_id,
                vm=row.name,
                vm_id=row.id,
                created_at=started.isoformat() + "Z",
                finished_at=utcnow().isoformat() + "Z",
                kind="incremental" if base is not None else "full",
                parent=parent.id if parent is not None else None,
                note=note,
                consistency=consistency,
                read_bytes=result.read_bytes,
                new_bytes=result.new_bytes,
                bitmap={"layer": str(layer), "name": new_bitmap} if new_bitmap else None,
                disks=[DiskManifest("root", size, result.chunks)],
                spec=spec.model_dump(mode="json"),
                vm_row={
                    **{f: getattr(row, f) for f in _ROW_FIELDS},
                    "ssh": row.ssh_port is not None,
                    "seed": seed,
                },
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
                        virtual_size=size,
                        read_bytes=result.read_bytes,
                        new_bytes=result.new_bytes,
                        chunks=sum(1 for c in result.chunks if c is not None),
                        manifest_sha256=manifest.sha256,
                        created_at=started,
                    )
                )
        except StoreCorrupt as exc:
            self._cleanup_failed(row, backup_id, created, new_bitmap)
            if parent is None:
                raise
            # An incremental patches its parent's chunks: a bad one there stops it. The
            # parent is marked, so the next backup reads the whole disk instead.
            self._mark_failed(parent.id)
            raise StoreCorrupt(
                exc.message, hint="run the backup again: it reads the whole disk"
            ) from None
        except BaseException:
            self._cleanup_failed(row, backup_id, created, new_bitmap)
            raise
        finally:
            work.unlink(missing_ok=True)
        # Recorded: the older bitmaps (and any an interrupted backup left) can go.
        for bitmap in bitmaps:
            if bitmap.name.startswith(BITMAP_PREFIX) and bitmap.name != new_bitmap:
                with contextlib.suppress(CloudletError):
                    e.driver.remove_bitmap(row.id, bitmap.name)
        return _view(self._find(row.name, backup_id))

    def _mark_failed(self, backup_id: str) -> None:
        with self.e.db.session() as s:
            fresh = s.get(BackupRow, backup_id)
            if fresh is not None:
                fresh.verify_ok, fresh.verified_at = False, utcnow()

    def _cleanup_failed(
        self, row: InstanceRow, backup_id: str, created: set[str], new_bitmap: str | None
    ) -> None:
        """Undo a backup that failed: its manifest, the chunks it added, its new bitmap."""
        self.store.delete_manifest(row.id, backup_id)
        self.store.remove_chunks(created)  # new in this backup: nothing else uses them
        if new_bitmap is not None:
            with contextlib.suppress(CloudletError):
                self.e.driver.remove_bitmap(row.id, new_bitmap)

    # ------------------------------------------------------------ reads
    def backups(self, vm: str | None = None) -> list[BackupView]:
        if vm is not None and not self._rows(vm):
            self.e._row(vm)  # an unknown VM with no backups: NotFound
        return [_view(r) for r in self._rows(vm)]

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
            self.e._event(vm, "backup-pruned", f"pruned {len(gone)} backup(s)")
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
    def _materialize(self, row: BackupRow, dest_dir: Path) -> Path:
        """Write a backup's root disk into a checked qcow2 in ``dest_dir`` (a temp name)."""
        manifest = self._manifest(row)
        disk = manifest.disks[0]
        tag = uuid.uuid4().hex[:8]
        raw = dest_dir / f".restore-{tag}.raw"
        out = dest_dir / f".restore-{tag}.qcow2"
        try:
            with open(raw, "wb") as f:
                f.truncate(disk.virtual_size)
                for i, digest in enumerate(disk.chunks):
                    if digest is not None:
                        f.seek(i * manifest.chunk_size)
                        f.write(self.store.get(digest, backup=row.id))
                f.flush()
                os.fsync(f.fileno())
            self.e.deps.disks.from_raw(raw, out)
            check = self.e.deps.disks.check(out)
            if check.get("corruptions") or check.get("check-errors"):
                raise CloudletError(
                    f"the disk restored from backup {row.id} fails qemu-img check: {check}",
                    hint="nothing was replaced; try another backup",
                )
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        finally:
            raw.unlink(missing_ok=True)
        return out

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

    def _materialize_first(
        self, vm: str, backup_id: str | None, dest: Path
    ) -> tuple[Path, BackupRow]:
        """The newest backup that restores cleanly (or exactly ``backup_id``)."""
        candidates = self._pick(vm, backup_id)
        with self._store_lock():
            for i, row in enumerate(candidates):
                try:
                    return self._materialize(row, dest), row
                except StoreCorrupt as exc:
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
        if as_name is not None:
            return self._restore_as(vm, backup_id, as_name)
        row = self.e._reconcile(self.e._row(vm))
        self._pick(vm, backup_id)  # unknown backups fail before anything stops
        if row.state in _ONLINE:
            if not force:
                raise Conflict(
                    f"cannot restore {vm} in place: it is {row.state}",
                    hint="stop it first, add --force to stop it now, "
                    "or restore beside it with --as NAME",
                )
            self.e.stop(vm, force=True)
        with self.e._lock(vm):
            row = self.e._reconcile_locked(self.e._row(vm))
            if row.state not in _OFFLINE:
                raise Conflict(f"cannot restore {vm} in place: it is {row.state}")
            snaps = _snapshot_rows(self.e, row.id)
            clones = _clones_of(self.e, [s.id for s in snaps])
            if clones:
                raise Conflict(
                    f"restoring {vm} would drop snapshots that linked clones "
                    f"({', '.join(sorted(clones))}) grow from",
                    hint=f"delete those clones first, or restore beside it: --as {vm}-restored",
                )
            instance_dir = self.e.paths.instance_dir(row.id)
            self._clean_killed_restore(instance_dir, active_disk(self.e, row.id))
            with self.e._operation(row, "restore") as op_id:
                disk, backup = self._materialize_first(vm, backup_id, instance_dir)
                old = [Path(s.file) for s in snaps] + [
                    active_disk(self.e, row.id),
                    default_disk(self.e, row.id),
                ]
                # The restored disk gets a name of its own and the switch to it is one
                # database commit: killed before it, the VM keeps its old chain (the
                # file is removed by the next restore); after it, the new disk.
                target = instance_dir / f"disk-{uuid.uuid4().hex[:12]}.qcow2"
                os.replace(disk, target)
                size = self.e.deps.disks.virtual_size(target)
                with self.e.db.session() as s:
                    for snap in snaps:
                        fresh = s.get(SnapshotRow, snap.id)
                        if fresh is not None:
                            s.delete(fresh)
                    _set_active(s, row.id, target)
                    disk_row = s.get(InstanceDiskRow, row.id)
                    if disk_row is not None:
                        disk_row.origin_snapshot_id = None  # no longer grows from a snapshot
                    fresh_vm = s.get(InstanceRow, row.id)
                    assert fresh_vm is not None
                    fresh_vm.disk_size = size
                for path in old:
                    if path != target:
                        path.unlink(missing_ok=True)
                        state_file(path).unlink(missing_ok=True)  # memory snapshots
                message = f"{vm} restored from backup {backup.id}"
                if snaps:
                    message += (
                        f"; its snapshots ({', '.join(s.name for s in snaps)}) were dropped: "
                        "the disk is now a single file"
                    )
                self.e._event(vm, "restored", message, op_id)
        return message

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
        holder: dict[str, BackupRow] = {}

        def fill(disk: Path) -> None:
            made, backup = self._materialize_first(vm, backup_id, disk.parent)
            holder["backup"] = backup
            os.replace(made, disk)

        manifest = self._manifest(self._pick(vm, backup_id)[0])
        self._new_vm(
            name,
            manifest.spec,
            manifest.vm_row,
            fill,
            lambda: f"restored from backup {holder['backup'].id} of {vm}",
        )
        return f"{name} created from backup {holder['backup'].id} of {vm} (stopped)"

    def _new_vm(
        self,
        name: str,
        spec_data: dict[str, Any],
        row_data: dict[str, Any],
        fill: Callable[[Path], None],
        story: Callable[[], str],
    ) -> InstanceView:
        """A new stopped VM with ``spec_data`` (renamed) whose disk ``fill`` writes."""
        from cloudlet.engine import access as access_mod
        from cloudlet.host.resources import free_loopback_port

        e = self.e
        validate_name(name)
        e._ensure_name_free(name)
        spec = InstanceSpec.model_validate({**spec_data, "name": name})
        image_path = Path(str(row_data["image_path"]))
        if not image_path.exists():
            image_path = e.deps.images.get(spec.image).path
        new_id = str(uuid.uuid4())
        with e._lock(name):
            e._ensure_name_free(name)
            row = InstanceRow(
                id=new_id,
                name=name,
                state=VMState.CREATING.value,
                spec_json=spec.model_dump_json(),
                image=str(row_data["image"]),
                image_path=str(image_path),
                type_name=str(row_data["type_name"]),
                cpus=int(row_data["cpus"]),
                memory=int(row_data["memory"]),
                disk_size=int(row_data["disk_size"]),
                arch=str(row_data["arch"]),
                location=str(row_data["location"]),
                ssh_port=free_loopback_port() if row_data.get("ssh") else None,
            )
            with e.db.session() as s:
                s.add(row)
            try:
                with e._operation(row, "create") as op_id:
                    instance_dir = e.paths.instance_dir(new_id)
                    instance_dir.mkdir(parents=True)
                    disk = instance_dir / "disk.qcow2"
                    fill(disk)
                    if row_data.get("seed"):
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
                    e._event(name, "created", story(), op_id)
            except BaseException:
                e._remove_everything(row)
                raise
        return e.show(name)

    # ------------------------------------------------------------ export / import
    def export(self, vm: str, dest: Path) -> str:
        """One tar: manifest.json (with SHA-256 of each file), spec.json, disk.qcow2."""
        dest = dest.absolute()
        if dest.exists():
            raise Conflict(f"{dest} already exists", hint="pick another file name")
        with self.e._lock(vm):
            row = self.e._reconcile_locked(self.e._row(vm))
            if row.state not in _OFFLINE:
                raise Conflict(
                    f"cannot export {vm}: it is {row.state}",
                    hint=f"stop it first ('cloudlet stop {vm}'), or restore a backup "
                    "as a stopped copy with 'cloudlet restore --as' and export that",
                )
            work = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}"
            work.mkdir()
            try:
                disk = work / "disk.qcow2"
                self.e.deps.disks.flatten(active_disk(self.e, row.id, heal=True), disk)
                spec = InstanceSpec.model_validate_json(row.spec_json).model_dump(mode="json")
                (work / "spec.json").write_text(json.dumps(spec, indent=1, sort_keys=True))
                seed = (self.e.paths.instance_dir(row.id) / "seed.iso").exists()
                manifest = {
                    "format": EXPORT_FORMAT,
                    "vm": vm,
                    "exported_at": utcnow().isoformat() + "Z",
                    "vm_row": {
                        **{f: getattr(row, f) for f in _ROW_FIELDS},
                        "ssh": row.ssh_port is not None,
                        "seed": seed,
                    },
                    "files": {n: _sha256(work / n) for n in ("spec.json", "disk.qcow2")},
                }
                (work / "manifest.json").write_text(json.dumps(manifest, indent=1))
                partial = work / "out.tar"
                with tarfile.open(partial, "w") as tar:
                    for name in ("manifest.json", "spec.json", "disk.qcow2"):
                        tar.add(work / name, arcname=name)
                with open(partial, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(partial, dest)
            except OSError as exc:
                raise CloudletError(
                    f"cannot write {dest}: {exc.strerror}", hint="check the path and free space"
                ) from None
            finally:
                shutil.rmtree(work, ignore_errors=True)
        size = dest.stat().st_size
        return f"{vm} exported to {dest} ({size >> 20} MiB)"

    def import_(self, src: Path, name: str | None = None) -> InstanceView:
        src = src.absolute()
        try:
            tar = tarfile.open(src, "r:")  # noqa: SIM115 (closed by the with below)
        except (OSError, tarfile.TarError) as exc:
            raise InvalidInput(f"{src} is not a cloudlet export: {exc}") from None
        with tar:
            members = {m.name: m for m in tar.getmembers()}
            expected = {"manifest.json", "spec.json", "disk.qcow2"}
            if set(members) != expected or not all(m.isfile() for m in members.values()):
                raise InvalidInput(
                    f"{src} is not a cloudlet export: it holds {sorted(members)}",
                    hint="make one with 'cloudlet export VM FILE'",
                )

            def read(member: str, limit: int = 1 << 20) -> bytes:
                f = tar.extractfile(members[member])
                assert f is not None
                return f.read(limit)

            try:
                manifest = json.loads(read("manifest.json"))
                spec_bytes = read("spec.json")
                spec_data = json.loads(spec_bytes)
                sums = manifest["files"]
                vm_row = manifest["vm_row"]
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidInput(f"{src}: its manifest is not valid ({exc})") from None
            if manifest.get("format") != EXPORT_FORMAT:
                raise InvalidInput(f"{src}: unknown export format {manifest.get('format')!r}")
            if hashlib.sha256(spec_bytes).hexdigest() != sums.get("spec.json"):
                raise InvalidInput(f"{src}: spec.json does not match its SHA-256")
            name = name or str(spec_data.get("name"))

            def fill(disk: Path) -> None:
                part = disk.with_name(".import.qcow2")
                digest = hashlib.sha256()
                f = tar.extractfile(members["disk.qcow2"])
                assert f is not None
                with open(part, "wb") as out:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
                if digest.hexdigest() != sums.get("disk.qcow2"):
                    part.unlink()
                    raise InvalidInput(f"{src}: disk.qcow2 does not match its SHA-256")
                self.e.deps.disks.inspect_import(part)  # no backing file, no data file
                os.replace(part, disk)

            return self._new_vm(name, spec_data, vm_row, fill, lambda: f"imported from {src.name}")
