"""Restore a backup with all its disks: in place over a VM, or beside it as a new VM.

The disks are written and checked first (restore_disks.py); in place, they are swapped
in with one database commit, so a restore killed at any point leaves the VM with all
its old disks or all the restored ones.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from cloudlet.backup.store import ROOT, Manifest
from cloudlet.engine import call_options, power, vm_state
from cloudlet.engine.backup_new_vm import new_vm
from cloudlet.engine.backup_records import BackupRecords
from cloudlet.engine.backup_volumes import NewVolume, check_new_volumes, new_volume_name, pool_dir
from cloudlet.engine.context import EngineContext
from cloudlet.engine.restore_disks import InPlace, Restorer
from cloudlet.engine.storage import StorageService
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
from cloudlet.engine.views import Done
from cloudlet.errors import Conflict
from cloudlet.next_steps import Step, step
from cloudlet.progress import Tracker
from cloudlet.spec import names
from cloudlet.spec.names import validate_name
from cloudlet.store.models import InstanceDiskRow, InstanceRow, SnapshotRow


class BackupRestore:
    """Restores backups (in place, or as a new VM), holding the store's lock while it reads."""

    def __init__(self, ctx: EngineContext, records: BackupRecords, storage: StorageService) -> None:
        self.ctx = ctx
        self.records = records
        self.storage = storage
        self.restorer = Restorer(ctx, records, storage)

    def restore(
        self,
        vm: str,
        *,
        backup_id: str | None = None,
        as_name: str | None = None,
        force: bool = False,
        track: Tracker | None = None,
    ) -> Done:
        """Restore in place (a Done of kind "vm", action "restored"), or as a new VM
        (``as_name``: action "created"). ``track`` hears the stages; cancelled, every
        disk stays as it was (no new VM is left)."""
        track = track or call_options.tracker()
        names.vm_name(vm)
        if backup_id is not None:
            names.backup_id(backup_id)
        if as_name is not None:
            names.vm_name(as_name)
            return self._restore_as(vm, backup_id, as_name, track)
        row = vm_state.reconcile(self.ctx, self.ctx.row(vm))
        restorer = self.restorer
        # unknown backups, and volumes that cannot go back, fail before anything stops
        first = self.records.first_readable(vm, backup_id)
        restorer.free_slots(row.id, restorer.plan_in_place(row.id, first))
        if row.state in ONLINE:
            if not force:
                raise Conflict(
                    f"cannot restore {vm} in place: it is {row.state}",
                    hint="stop it first, let the restore stop it (force), "
                    "or restore beside it as a new VM",
                    next_steps=[
                        step(Step.VM_STOP, vm=vm),
                        step(Step.RESTORE_FORCE, vm=vm),
                        step(Step.RESTORE_AS, vm=vm, new=f"{vm}-restored"),
                    ],
                )
            track.phase(f"stopping {vm}")
            power.stop(self.ctx, vm, force=True)
        with self.ctx.lock(vm, cancel=track.cancel):
            row = vm_state.reconcile_locked(self.ctx, self.ctx.row(vm))
            if row.state not in OFFLINE:
                raise Conflict(f"cannot restore {vm} in place: it is {row.state}")
            snaps = snapshot_rows(self.ctx, row.id)
            clones = clones_of(self.ctx, [s.id for s in snaps])
            if clones:
                raise Conflict(
                    f"restoring {vm} would drop snapshots that linked clones "
                    f"({', '.join(sorted(clones))}) grow from",
                    hint="delete those clones first, or restore beside it as a new VM",
                    next_steps=[step(Step.RESTORE_AS, vm=vm, new=f"{vm}-restored")],
                )
            instance_dir = self.ctx.paths.instance_dir(row.id)
            self._clean_killed_restore(instance_dir, active_disk(self.ctx, row.id))
            with self.ctx.operation(row, "restore") as op_id, self.records.store_lock():
                plans: dict[str, list[InPlace]] = {}

                def dirs_for(manifest: Manifest) -> dict[str, Path]:
                    plans[manifest.id] = restorer.plan_in_place(row.id, manifest)
                    return {ROOT: instance_dir, **{p.disk.name: p.directory
                                                   for p in plans[manifest.id]}}  # fmt: skip

                files, backup, manifest = restorer.materialize_first(
                    vm, backup_id, dirs_for, row.id, track
                )
                said = self._swap_in(row, snaps, plans[manifest.id], files, track)
                kept = sorted(
                    set(attached_volume_names(self.ctx, row.id))
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
                self.ctx.event(vm, "restored", message, op_id)
        return Done("vm", vm, "restored", message)

    def _swap_in(
        self,
        row: InstanceRow,
        snaps: list[SnapshotRow],
        plans: list[InPlace],
        files: dict[str, Path],
        track: Tracker,
    ) -> list[str]:
        """Make the restored disks the VM's in one database commit: the root disk (its old
        chain and snapshots dropped) and every volume of the backup. Killed before the
        commit, the VM keeps all its old disks; after it, all the restored ones."""
        restorer = self.restorer
        tag = uuid.uuid4().hex[:12]
        try:
            track.phase("switching to the restored disks")  # the last point to stop at
            free = restorer.free_slots(row.id, plans)
            instance_dir = self.ctx.paths.instance_dir(row.id)
            old = [Path(s.file) for s in snaps] + [
                active_disk(self.ctx, row.id),
                default_disk(self.ctx, row.id),
            ]
            target = instance_dir / f"disk-{tag}.qcow2"
            os.replace(files[ROOT], target)
            files[ROOT] = target
            taken = restorer.take_volume_files(plans, files, tag)
            files.update({p.disk.name: taken[p.name] for p in plans})
            size = self.ctx.deps.disks.virtual_size(target)
            with self.ctx.db.session() as s:
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
            below = self.ctx.deps.disks.backing(layer)
            layer = below[0] if below is not None else None
        for stale in [*instance_dir.glob(".restore-*"), *instance_dir.glob("disk-*.qcow2")]:
            if stale not in chain:
                stale.unlink()

    def _restore_as(self, vm: str, backup_id: str | None, name: str, track: Tracker) -> Done:
        restorer = self.restorer
        holder: dict[str, Any] = {}

        def plan(manifest: Manifest) -> list[tuple[str, str]]:
            return [(new_volume_name(name, manifest.vm, d.name), d.pool)
                    for d in manifest.disks[1:]]  # fmt: skip

        first = self.records.first_readable(vm, backup_id)
        validate_name(name)
        vm_state.ensure_name_free(self.ctx, name)
        check_new_volumes(self.storage, plan(first), f"backup {first.id}")

        def fill(disk: Path) -> list[NewVolume]:
            def dirs_for(manifest: Manifest) -> dict[str, Path]:
                source = f"backup {manifest.id}"
                return {ROOT: disk.parent, **{
                    d.name: pool_dir(self.storage, pool, new, source)
                    for d, (new, pool) in zip(manifest.disks[1:], plan(manifest), strict=True)
                }}  # fmt: skip

            with self.records.store_lock():  # the new VM's directory is named by its id
                files, backup, manifest = restorer.materialize_first(
                    vm, backup_id, dirs_for, disk.parent.name, track
                )
            holder["backup"] = backup
            try:
                track.phase(f"creating {name}")
            except BaseException:
                for path in files.values():
                    path.unlink(missing_ok=True)
                raise
            os.replace(files.pop(ROOT), disk)
            return [
                NewVolume(new, pool, d.virtual_size, files[d.name])
                for d, (new, pool) in zip(manifest.disks[1:], plan(manifest), strict=True)
            ]

        view = new_vm(
            self.ctx,
            self.storage,
            name,
            first.spec,
            first.vm_row,
            fill,
            lambda: f"restored from backup {holder['backup'].id} of {vm}",
            f"backup {first.id}",
        )
        volumes = attached_volume_names(self.ctx, view.id)
        extra = f" with volume(s) {', '.join(volumes)}" if volumes else ""
        message = f"{name} created from backup {holder['backup'].id} of {vm}{extra} (stopped)"
        return Done("vm", name, "created", message, next_steps=(step(Step.VM_START, vm=name),))
