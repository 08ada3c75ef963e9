"""The backups a VM has: list, verify, its policy, retention and the schedule."""

from __future__ import annotations

import time
from datetime import UTC
from typing import Any

from sqlalchemy import select

from cloudlet.backup.retention import keep_set
from cloudlet.backup.store import Manifest, VerifyProblem
from cloudlet.engine.backup_create import BackupCreator
from cloudlet.engine.backup_records import BackupRecords
from cloudlet.engine.backup_views import (
    BackupView,
    DueBackup,
    PruneResult,
    RunDueResult,
    VerifyReport,
    backup_view,
)
from cloudlet.engine.context import EngineContext
from cloudlet.engine.lifecycle import Lifecycle
from cloudlet.errors import CloudletError, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.spec.instance import BackupPolicy, InstanceSpec
from cloudlet.store.models import BackupRow, InstanceRow, utcnow


class BackupCatalog:
    """Reads and retention of the backup store; ``run_due`` takes the scheduled backups."""

    def __init__(
        self,
        ctx: EngineContext,
        records: BackupRecords,
        creator: BackupCreator,
        lifecycle: Lifecycle,
    ) -> None:
        self.ctx = ctx
        self.records = records
        self.creator = creator
        self.lifecycle = lifecycle

    # ------------------------------------------------------------ reads
    def backups(self, vm: str | None = None) -> list[BackupView]:
        rows = self.records.rows(vm)
        if vm is not None and not rows:
            self.ctx.row(vm)  # an unknown VM with no backups: NotFound
        views = []
        for row in rows:
            try:
                manifest: Manifest | None = self.records.manifest(row)
            except CloudletError:
                manifest = None  # unreadable: verify says why; the row still lists
            views.append(backup_view(row, manifest))
        return views

    def verify(self, vm: str, backup_id: str | None = None) -> VerifyReport:
        records = self.records
        rows = [records.find(vm, backup_id)] if backup_id else records.rows(vm)
        if not rows:
            raise NotFound(
                f"{vm} has no backups",
                hint="take one first",
                next_steps=[step(Step.BACKUP_CREATE, vm=vm)],
            )
        problems: list[VerifyProblem] = []
        chunks: set[str] = set()
        with records.store_lock():
            for row in rows:
                try:
                    manifest = records.manifest(row)
                    found = records.store.verify(manifest)
                    if manifest.sha256 != row.manifest_sha256:
                        found.append(VerifyProblem("manifest-changed", row.id))
                    chunks |= manifest.chunk_ids()
                except CloudletError as exc:
                    found = [VerifyProblem("unreadable", row.id, detail=exc.message)]
                problems += found
                with self.ctx.db.session() as s:
                    fresh = s.get(BackupRow, row.id)
                    if fresh is not None:
                        fresh.verified_at = utcnow()
                        fresh.verify_ok = not found
        return VerifyReport(vm, [r.id for r in rows], len(chunks), problems)

    # ------------------------------------------------------------ policy and retention
    def policy(self, vm: str) -> BackupPolicy:
        return self.lifecycle.spec(vm).backup

    def set_policy(self, vm: str, changes: dict[str, Any]) -> BackupPolicy:
        current = self.policy(vm).model_dump()
        policy = BackupPolicy.model_validate({**current, **changes})
        self.lifecycle.update_spec(vm, {"backup": policy})
        return self.policy(vm)

    def prune(self, vm: str, *, policy: BackupPolicy | None = None) -> PruneResult:
        """Apply the VM's retention: the backups deleted and the bytes of chunks freed."""
        rules = (policy or self.policy(vm)).retention()
        store = self.records.store
        with self.records.store_lock():
            rows = self.records.rows(vm)
            keep = keep_set([(r.id, r.created_at) for r in rows], rules)
            gone = [r for r in rows if r.id not in keep]
            for row in gone:
                with self.ctx.db.session() as s:
                    fresh = s.get(BackupRow, row.id)
                    if fresh is not None:
                        s.delete(fresh)
                store.delete_manifest(row.instance_id, row.id)
            _, freed = store.garbage_collect() if gone else (0, 0)
        if gone:
            self.ctx.event(vm, "backup-pruned", f"pruned {len(gone)} backup(s)")
        return PruneResult(vm, tuple(r.id for r in gone), freed)

    def run_due(self, now: float | None = None) -> RunDueResult:
        """Back up every VM whose policy says it is time, then prune it; one VM's failure
        does not stop the others."""
        now = time.time() if now is None else now
        runs: list[DueBackup] = []
        with self.ctx.db.session() as s:
            vms = s.scalars(
                select(InstanceRow).where(InstanceRow.kind == "system").order_by(InstanceRow.name)
            ).all()
        for vm in vms:
            policy = InstanceSpec.model_validate_json(vm.spec_json).backup
            every = policy.interval()
            if every is None:
                continue
            latest = next((r for r in self.records.rows(vm.name) if r.instance_id == vm.id), None)
            last = latest.created_at.replace(tzinfo=UTC).timestamp() if latest else None
            if last is not None and now - last < every - 60:  # a minute of slack for cron
                continue
            try:
                backup = self.creator.create(vm.name)
                pruned = self.prune(vm.name, policy=policy).pruned
                runs.append(DueBackup(vm.name, backup, pruned))
            except CloudletError as exc:
                runs.append(
                    DueBackup(vm.name, None, error=exc.one_line(), next_steps=exc.next_steps)
                )
        return RunDueResult(tuple(runs))
