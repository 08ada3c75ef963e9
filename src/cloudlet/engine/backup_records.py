"""The backup store and the records of the backups in it, shared by every backup use case.

The rows live in the database, the manifests (signed with a host key kept in the state
directory, out of the store's reach) in the store; a manifest that fails its checks
marks its backup failed, so a restore of "the latest" never picks it again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import select

from cloudlet.backup.store import BackupStore, Manifest
from cloudlet.engine import locks
from cloudlet.engine.context import EngineContext
from cloudlet.errors import ManifestRefused, NotFound, StoreCorrupt
from cloudlet.next_steps import Step, step
from cloudlet.spec import names
from cloudlet.store.models import BackupRow, InstanceRow, utcnow

STORE_LOCK = ".backup-store"
MANIFEST_KEY = "keys/backup-manifest.key"
ROW_FIELDS = ("image", "image_path", "type_name", "cpus", "memory", "disk_size", "arch",
              "location")  # fmt: skip


def new_backup_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def vm_row_data(ctx: EngineContext, row: InstanceRow) -> dict[str, Any]:
    """What a new VM made from a backup or an export needs of the old one's row."""
    seed = (ctx.paths.instance_dir(row.id) / "seed.iso").exists()
    return {
        **{f: getattr(row, f) for f in ROW_FIELDS},
        "ssh": row.ssh_port is not None,
        "seed": seed,
    }


class BackupRecords:
    """Rows and manifests of backups, and the store's lock."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self._store: BackupStore | None = None

    @property
    def store(self) -> BackupStore:
        """The store the settings name now (one object while they name the same one)."""
        root, key = self.ctx.settings.backup_store, self.ctx.paths.home / MANIFEST_KEY
        if self._store is None or (self._store.root, self._store.key.path) != (root, key):
            self._store = BackupStore(root, key)
        return self._store

    @contextmanager
    def store_lock(self) -> Iterator[None]:
        with locks.hold(self.ctx.paths.locks, STORE_LOCK, what="the backup store"):
            self.store.ensure()
            yield

    def rows(self, vm: str | None = None) -> list[BackupRow]:
        """Backups, newest first (of one VM name, or all)."""
        if vm is not None:
            names.vm_name(vm)
        with self.ctx.db.session() as s:
            query = select(BackupRow).order_by(BackupRow.created_at.desc(), BackupRow.id.desc())
            if vm is not None:
                query = query.where(BackupRow.instance_name == vm)
            return list(s.scalars(query).all())

    def find(self, vm: str, backup_id: str) -> BackupRow:
        names.backup_id(backup_id)
        for row in self.rows(vm):
            if row.id == backup_id:
                return row
        raise NotFound(
            f"{vm} has no backup {backup_id!r}",
            hint="list its backups",
            next_steps=[step(Step.BACKUP_LIST, vm=vm)],
        )

    def manifest(self, row: BackupRow) -> Manifest:
        return self.store.read_manifest(row.instance_id, row.id, row.manifest_sha256)

    def mark_failed(self, backup_id: str) -> None:
        with self.ctx.db.session() as s:
            fresh = s.get(BackupRow, backup_id)
            if fresh is not None:
                fresh.verify_ok, fresh.verified_at = False, utcnow()

    def pick(self, vm: str, backup_id: str | None) -> list[BackupRow]:
        """Exactly ``backup_id``, or every backup not known to be bad, newest first."""
        if backup_id is not None:
            return [self.find(vm, backup_id)]
        rows = [r for r in self.rows(vm) if r.verify_ok is not False]
        if not rows:
            raise NotFound(
                f"{vm} has no usable backup",
                hint="list its backups",
                next_steps=[step(Step.BACKUP_LIST, vm=vm)],
            )
        return rows

    def first_readable(self, vm: str, backup_id: str | None) -> Manifest:
        """The manifest of ``backup_id``, or of the newest backup whose manifest passes
        its checks: one that fails is marked failed (so --latest never uses it again),
        said in a notice, and the one before it tried."""
        candidates = self.pick(vm, backup_id)
        for i, row in enumerate(candidates):
            try:
                return self.manifest(row)
            except (StoreCorrupt, ManifestRefused) as exc:
                self.mark_failed(row.id)
                if backup_id is not None or i + 1 == len(candidates):
                    raise
                self.ctx.notice(f"skipped backup {row.id}: {exc.message}; trying the one before it")
        raise AssertionError("unreachable")
