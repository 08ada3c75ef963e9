"""Snapshots of a VM's root disk: take (live, frozen or with memory), list, revert, delete.

Deleting a snapshot merges its layer into the layer above (block-stream while the VM
runs, ``qemu-img rebase`` while it is stopped); reverting puts a fresh layer on the
snapshot's file and discards what lay above it (see storage_rows for the chain).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from cloudlet.engine import launch, power, vm_state
from cloudlet.engine.storage_rows import (
    OFFLINE,
    ONLINE,
    active_disk,
    allocated,
    clones_of,
    locked_vm_row,
    set_active,
    set_active_dropping,
    snapshot_rows,
    state_file,
    undo_snapshot,
)
from cloudlet.engine.storage_views import SnapshotView
from cloudlet.engine.views import Done
from cloudlet.errors import CapacityExceeded, CloudletError, Conflict, NotFound, OutOfSpace
from cloudlet.images.store import Image
from cloudlet.next_steps import Step, step
from cloudlet.progress import Tracker
from cloudlet.spec import names
from cloudlet.spec.states import VMState
from cloudlet.store.models import InstanceRow, SnapshotRow, utcnow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext


class Snapshots:
    """The snapshot chain of each VM's root disk."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def _layers_dir(self, instance_id: str) -> Path:
        path = self.ctx.paths.instance_dir(instance_id) / "layers"
        path.mkdir(exist_ok=True)
        return path

    def find(self, row: InstanceRow, name: str) -> tuple[int, list[SnapshotRow]]:
        """The index of snapshot ``name`` in the VM's chain, and the chain."""
        names.snapshot_name(name)
        snaps = snapshot_rows(self.ctx, row.id)
        for i, snap in enumerate(snaps):
            if snap.name == name:
                return i, snaps
        with self.ctx.db.session() as s:
            elsewhere = s.execute(
                select(InstanceRow.name)
                .join(SnapshotRow, SnapshotRow.instance_id == InstanceRow.id)
                .where(SnapshotRow.name == name)
            ).first()
        if elsewhere is not None:
            raise NotFound(
                f"snapshot {name!r} belongs to VM {elsewhere[0]}, not {row.name}",
                hint="a VM can only go back to its own snapshots; clone that one instead",
                next_steps=[step(Step.CLONE, vm=elsewhere[0], snapshot=name)],
            )
        raise NotFound(
            f"{row.name} has no snapshot {name!r}",
            hint="list its snapshots",
            next_steps=[step(Step.SNAPSHOT_LIST, vm=row.name)],
        )

    def snapshot_create(
        self, vm: str, name: str, *, memory: bool = False, track: Tracker | None = None
    ) -> SnapshotView:
        """Snapshot the root disk; ``memory`` also keeps RAM and device state (the VM is
        paused meanwhile, so disk and memory match without freezing file systems).
        ``track`` hears the stages; its token is honoured until the snapshot begins."""
        names.snapshot_name(name)
        names.vm_name(vm)
        track = track or Tracker()
        with self.ctx.lock(vm, cancel=track.cancel):
            row = locked_vm_row(self.ctx, vm)
            self.ctx.require_state(row, ONLINE | OFFLINE, "snapshot")
            if memory and row.state not in ONLINE:
                raise Conflict(
                    f"cannot keep the memory of {vm}: it is {row.state}",
                    hint="start it first, or snapshot its disk only",
                    next_steps=[step(Step.VM_START, vm=vm)],
                )
            if any(s.name == name for s in snapshot_rows(self.ctx, row.id)):
                raise Conflict(f"{vm} already has a snapshot {name!r}", hint="pick another name")
            old_top = active_disk(self.ctx, row.id, heal=True)
            new_top = self._layers_dir(row.id) / f"{uuid.uuid4()}.qcow2"
            live = row.state in ONLINE
            # A memory state left by an older snapshot on this file (killed mid-way) is stale.
            state_file(old_top).unlink(missing_ok=True)
            track.check()  # the last point to stop at: from here the snapshot is finished
            with self.ctx.operation(row, "snapshot") as op_id:
                if live and not memory:
                    track.tell("freezing the guest")
                frozen = live and not memory and self.freeze_guest(row)
                paused_here = memory and row.state == VMState.RUNNING
                if paused_here:
                    track.tell(f"pausing {vm}")
                    self.ctx.driver.pause(row.id)
                snap_id = str(uuid.uuid4())
                try:
                    # Recorded before it is acted on: if this process dies before the new
                    # layer exists, active_disk(heal=True) rolls the record back.
                    with self.ctx.db.session() as s:
                        s.add(
                            SnapshotRow(
                                id=snap_id,
                                instance_id=row.id,
                                name=name,
                                file=str(old_top),
                                live=live,
                                frozen=frozen,
                                created_at=utcnow(),
                            )
                        )
                        set_active(s, row.id, new_top)
                    try:
                        track.tell("taking the disk snapshot")
                        if live:
                            self.ctx.driver.snapshot_disk(row.id, new_top)
                        else:
                            self.ctx.deps.disks.create_layer(old_top, "qcow2", new_top)
                    except BaseException:
                        if not live or new_top not in self._chain_or_empty(row.id):
                            new_top.unlink(missing_ok=True)
                            undo_snapshot(self.ctx, row.id, snap_id, old_top)
                        raise
                    if memory:
                        track.tell("saving the memory state")
                        self._save_memory(vm, name, row.id, snap_id, old_top, new_top)
                        if not paused_here:
                            # Saving hands the disks over to a (never coming) target; only
                            # cont takes them back. A paused VM then stays paused.
                            self.ctx.driver.resume(row.id)
                            self.ctx.driver.pause(row.id)
                finally:
                    if frozen:
                        self.ctx.driver.thaw_filesystems(row.id)
                    if paused_here:
                        self.ctx.driver.resume(row.id)
                how = "file systems frozen" if frozen else ("live" if live else "offline")
                if memory:
                    how = "with memory"
                elif live and not frozen:
                    how = "crash-consistent"
                self._remember(vm, "snapshot", f"snapshot {name} taken ({how})", op_id)
            # Read under the lock: a delete from another thread may follow at once.
            return next(v for v in self.snapshots(vm) if v.name == name)

    def _save_memory(
        self, vm: str, name: str, instance_id: str, snap_id: str, layer: Path, new_top: Path
    ) -> None:
        """Save the paused VM's RAM and device state next to the layer just frozen; when
        that fails, take the disk snapshot back too, so no half snapshot stays."""
        target = state_file(layer)
        part = Path(f"{target}.part")
        try:
            self.ctx.driver.save_state(instance_id, part)
            part.rename(target)
        except CloudletError as exc:
            part.unlink(missing_ok=True)
            try:
                self.ctx.driver.unsnapshot_disk(instance_id, new_top)
            except CloudletError:
                raise CloudletError(
                    f"snapshot {name} of {vm} kept its disk but not its memory: {exc.message}",
                    hint="delete it and try again",
                    next_steps=[step(Step.SNAPSHOT_DELETE, vm=vm, snapshot=name)],
                ) from None
            new_top.unlink(missing_ok=True)
            undo_snapshot(self.ctx, instance_id, snap_id, layer)
            if isinstance(exc, OutOfSpace):
                free = shutil.disk_usage(layer.parent).free >> 20
                raise CapacityExceeded(
                    f"snapshot {name} of {vm} was not taken: no space left in {layer.parent} "
                    f"for its memory state ({free} MiB free now)",
                    hint="free space there, or snapshot the disk only",
                    next_steps=[step(Step.SNAPSHOT_CREATE, vm=vm, snapshot=name)],
                ) from None
            raise CloudletError(
                f"snapshot {name} of {vm} was not taken: {exc.message}", hint="try again"
            ) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise

    def _remember(self, vm: str, kind: str, message: str, op_id: int) -> None:
        self.ctx.event(vm, kind, message, op_id)

    def _chain_or_empty(self, instance_id: str) -> list[Path]:
        try:
            return self.ctx.driver.disk_chain(instance_id)
        except CloudletError:
            return []

    def freeze_guest(self, row: InstanceRow, what: str = "snapshot") -> bool:
        """Freeze the guest's file systems when it runs an agent; say so when we cannot."""
        if row.state != VMState.RUNNING or not Image.load(Path(row.image_path)).guest_agent:
            return False
        try:
            self.ctx.driver.freeze_filesystems(row.id)
            return True
        except CloudletError as exc:
            self.ctx.notice(
                f"the guest agent could not freeze {row.name}'s file systems ({exc.message}): "
                f"the {what} is crash-consistent"
            )
            return False

    def snapshots(self, vm: str) -> list[SnapshotView]:
        row = self.ctx.row(vm)
        snaps = snapshot_rows(self.ctx, row.id)
        clones = clones_of(self.ctx, [s.id for s in snaps])
        views = []
        for i, snap in enumerate(snaps):
            path = Path(snap.file)
            views.append(
                SnapshotView(
                    name=snap.name,
                    vm=vm,
                    parent=snaps[i - 1].name if i > 0 else None,
                    created_at=snap.created_at,
                    size=allocated(path),
                    live=snap.live,
                    frozen=snap.frozen,
                    linked_clones=sorted(c for c, sid in clones.items() if sid == snap.id),
                    memory=state_file(path).exists(),
                )
            )
        return views

    def snapshot_revert(
        self, vm: str, name: str, *, force: bool = False, track: Tracker | None = None
    ) -> Done:
        """Put the root disk back to snapshot ``name`` (later ones are dropped); ``track``
        hears the stages, its token honoured until the disk is switched."""
        track = track or Tracker()
        row = vm_state.reconcile(self.ctx, self.ctx.row(vm))
        self.find(row, name)  # unknown names fail before anything stops
        if row.state in ONLINE:
            if not force:
                raise Conflict(
                    f"cannot revert {vm}: it is {row.state}",
                    hint="stop it first, or revert with force to stop it now",
                    next_steps=[
                        step(Step.VM_STOP, vm=vm),
                        step(Step.SNAPSHOT_REVERT_FORCE, vm=vm, snapshot=name),
                    ],
                )
            track.phase(f"stopping {vm}")
            power.stop(self.ctx, vm, force=True)
        with self.ctx.lock(vm, cancel=track.cancel):
            row = locked_vm_row(self.ctx, vm)
            self.ctx.require_state(row, OFFLINE, "revert")
            active_disk(self.ctx, row.id, heal=True)
            index, snaps = self.find(row, name)
            later = snaps[index + 1 :]
            clones = clones_of(self.ctx, [s.id for s in later])
            if clones:
                raise Conflict(
                    f"reverting {vm} to {name} would discard snapshots that linked clones "
                    f"({', '.join(sorted(clones))}) grow from",
                    hint="delete those clones first",
                )
            target = Path(snaps[index].file)
            old_files = [Path(s.file) for s in later] + [active_disk(self.ctx, row.id)]
            new_top = self._layers_dir(row.id) / f"{uuid.uuid4()}.qcow2"
            track.phase("reverting the disk")
            with self.ctx.operation(row, "snapshot-revert") as op_id:
                self.ctx.deps.disks.create_layer(target, "qcow2", new_top)
                try:
                    with self.ctx.db.session() as s:
                        set_active_dropping(s, row.id, new_top, later)
                except BaseException:
                    new_top.unlink(missing_ok=True)
                    raise
                for path in old_files:
                    if path != target:
                        path.unlink(missing_ok=True)
                        state_file(path).unlink(missing_ok=True)
                dropped = f" (discarded later snapshots: {', '.join(s.name for s in later)})"
                message = f"{vm} reverted to {name}" + (dropped if later else "")
                self._remember(vm, "snapshot-reverted", message, op_id)
                saved = state_file(target)
                if saved.exists():
                    track.tell("loading the memory state")
                    try:
                        launch.boot(
                            self.ctx,
                            locked_vm_row(self.ctx, vm),
                            wait=False,
                            op_id=op_id,
                            state=saved,
                        )
                    except CloudletError as exc:
                        raise CloudletError(
                            f"{message}, but its memory state could not be loaded: {exc.message}",
                            hint="start it to boot it from the reverted disk",
                            next_steps=[step(Step.VM_START, vm=vm)],
                        ) from None
                    message += " and resumed from its memory state"
        return Done("vm", vm, "reverted", message)

    def snapshot_delete(self, vm: str, name: str) -> Done:
        with self.ctx.lock(vm):
            row = locked_vm_row(self.ctx, vm)
            active_disk(self.ctx, row.id, heal=True)
            index, snaps = self.find(row, name)
            snap = snaps[index]
            clones = clones_of(self.ctx, [snap.id])
            if clones:
                raise Conflict(
                    f"snapshot {name} is the base of linked clone(s) {', '.join(sorted(clones))}",
                    hint="delete those clones first",
                )
            self.ctx.require_state(row, ONLINE | OFFLINE, "delete a snapshot of")
            layer = Path(snap.file)
            above = (
                Path(snaps[index + 1].file)
                if index + 1 < len(snaps)
                else active_disk(self.ctx, row.id)
            )
            with self.ctx.operation(row, "snapshot-delete") as op_id:
                if row.state in ONLINE:
                    chain = self.ctx.driver.disk_chain(row.id)
                    if layer not in chain:
                        raise Conflict(
                            f"the running {vm} does not use snapshot {name}'s layer",
                            hint="restart the VM and try again",
                        )
                    pos = chain.index(layer)
                    base = chain[pos + 1] if pos + 1 < len(chain) else None
                    self.ctx.driver.stream_disk(row.id, above, base)
                else:
                    backing = self.ctx.deps.disks.backing(layer)
                    base_path, base_format = backing if backing is not None else (None, "qcow2")
                    self.ctx.deps.disks.rebase(above, base_path, base_format)
                with self.ctx.db.session() as s:
                    fresh = s.get(SnapshotRow, snap.id)
                    if fresh is not None:
                        s.delete(fresh)
                layer.unlink(missing_ok=True)
                state_file(layer).unlink(missing_ok=True)
                self._remember(vm, "snapshot-deleted", f"snapshot {name} merged and deleted", op_id)
        message = f"snapshot {name} of {vm} deleted (its data merged into the layer above)"
        return Done("snapshot", name, "deleted", message)
