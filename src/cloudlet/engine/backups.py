"""The backup service: one object with every backup use case, built on the shared context.

Back up, list, verify, prune, schedule (backup_create.py, backup_catalog.py), restore in
place or as a new VM (backup_restore.py), export and import (backup_export.py). Each
takes the ``EngineContext`` and the storage service, never the Engine facade.
"""

from __future__ import annotations

from pathlib import Path

from cloudlet.backup.store import BackupStore
from cloudlet.engine import backup_export, call_options
from cloudlet.engine.backup_catalog import BackupCatalog
from cloudlet.engine.backup_create import BackupCreator
from cloudlet.engine.backup_records import BackupRecords
from cloudlet.engine.backup_requests import PolicyUpdate
from cloudlet.engine.backup_restore import BackupRestore
from cloudlet.engine.backup_views import BackupView, PruneResult, RunDueResult, VerifyReport
from cloudlet.engine.context import EngineContext
from cloudlet.engine.lifecycle import Lifecycle
from cloudlet.engine.storage import StorageService
from cloudlet.engine.views import Done, InstanceView
from cloudlet.progress import CancelToken, ProgressSink
from cloudlet.spec import names
from cloudlet.spec.instance import BackupPolicy


class BackupService:
    """Backups, restores, exports and imports of VMs."""

    def __init__(
        self,
        ctx: EngineContext,
        storage: StorageService,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.ctx = ctx
        self.records = BackupRecords(ctx)
        self.storage = storage
        self.creator = BackupCreator(ctx, self.records, storage)
        self.catalog = BackupCatalog(ctx, self.records, self.creator, lifecycle or Lifecycle(ctx))
        self.restorer = BackupRestore(ctx, self.records, storage)

    @property
    def store(self) -> BackupStore:
        return self.records.store

    @property
    def notices(self) -> list[str]:
        """What the calls of this thread want said (a skipped backup, work files removed)."""
        return self.ctx.notices

    # ------------------------------------------------------------ back up and read
    def create(
        self, vm: str, *, progress: ProgressSink | None = None, cancel: CancelToken | None = None
    ) -> BackupView:
        """``progress`` hears the stages (copying, storing chunks with bytes, signing); a
        cancelled ``cancel`` (default: the call's) stops at the next stage and chunk,
        leaving no manifest, chunk or work file of this backup."""
        return self.creator.create(vm, call_options.tracker(progress, cancel))

    def backups(self, vm: str | None = None) -> list[BackupView]:
        return self.catalog.backups(vm)

    def verify(self, vm: str, backup_id: str | None = None) -> VerifyReport:
        return self.catalog.verify(vm, backup_id)

    # ------------------------------------------------------------ policy and retention
    def policy(self, vm: str) -> BackupPolicy:
        return self.catalog.policy(vm)

    def set_policy(self, vm: str, update: PolicyUpdate) -> BackupPolicy:
        """Apply ``update`` (checked first) to the VM's policy; nothing to change: read it."""
        changes = update.changes()
        return self.catalog.set_policy(vm, changes) if changes else self.catalog.policy(vm)

    def prune(self, vm: str, *, policy: BackupPolicy | None = None) -> PruneResult:
        return self.catalog.prune(vm, policy=policy)

    def run_due(self, now: float | None = None) -> RunDueResult:
        return self.catalog.run_due(now)

    # ------------------------------------------------------------ restore
    def restore(
        self,
        vm: str,
        *,
        backup_id: str | None = None,
        as_name: str | None = None,
        force: bool = False,
        progress: ProgressSink | None = None,
        cancel: CancelToken | None = None,
    ) -> Done:
        """``progress`` hears the stages (writing each disk with bytes, checking it,
        switching); a cancelled ``cancel`` leaves the VM's disks (or no new VM) as before."""
        track = call_options.tracker(progress, cancel)
        return self.restorer.restore(
            vm, backup_id=backup_id, as_name=as_name, force=force, track=track
        )

    # ------------------------------------------------------------ export / import
    def export(
        self,
        vm: str,
        dest: Path,
        *,
        progress: ProgressSink | None = None,
        cancel: CancelToken | None = None,
    ) -> Done:
        """One tar with the VM's spec, its root disk and its volumes (backup_export.py);
        cancelled, no file and no work directory is left."""
        names.vm_name(vm)
        return backup_export.export(self.ctx, vm, dest, call_options.tracker(progress, cancel))

    def import_(
        self,
        src: Path,
        name: str | None = None,
        *,
        progress: ProgressSink | None = None,
        cancel: CancelToken | None = None,
    ) -> InstanceView:
        """A new stopped VM from an export; cancelled, no part of the VM is left."""
        if name is not None:
            names.vm_name(name)
        track = call_options.tracker(progress, cancel)
        return backup_export.import_(self.ctx, self.storage, src, name, track)
