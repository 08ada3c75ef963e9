"""Clones: a new VM from another's current disk (full) or from one of its snapshots
(full, or linked: a thin layer that grows from the snapshot, which then stays pinned)."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from cloudlet.engine import instance_view, network_rows, teardown, vm_state
from cloudlet.engine.snapshots import Snapshots
from cloudlet.engine.storage_rows import OFFLINE, active_disk, locked_vm_row, snapshot_rows
from cloudlet.errors import Conflict, InvalidInput, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.spec import names
from cloudlet.spec.instance import InstanceSpec
from cloudlet.spec.states import VMState
from cloudlet.store.models import InstanceDiskRow, InstanceRow, SnapshotRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext
    from cloudlet.engine.views import InstanceView


class Clones:
    """Making new VMs out of existing disks and snapshots."""

    def __init__(self, ctx: EngineContext, snapshots: Snapshots) -> None:
        self.ctx = ctx
        self.snapshots = snapshots

    def clone(
        self, source: str, name: str, *, linked: bool = False, snapshot: str | None = None
    ) -> InstanceView:
        names.vm_name(name)
        names.vm_name(source)
        if snapshot is not None:
            names.snapshot_name(snapshot)
        vm_state.ensure_name_free(self.ctx, name)
        src = vm_state.reconcile(self.ctx, self.ctx.row(source))
        snap: SnapshotRow | None = None
        if snapshot is not None:
            index, snaps = self.snapshots.find(src, snapshot)
            snap = snaps[index]
        elif linked:
            snaps = snapshot_rows(self.ctx, src.id)
            if not snaps:
                raise InvalidInput(
                    f"a linked clone grows from a snapshot, and {source} has none",
                    hint="take a snapshot first, or make a full clone",
                    next_steps=[step(Step.SNAPSHOT_CREATE, vm=source)],
                )
            snap = snaps[-1]
        elif src.state not in OFFLINE:
            raise Conflict(
                f"cannot clone {source}: it is {src.state}",
                hint="stop it first, or clone one of its snapshots",
                next_steps=[step(Step.VM_STOP, vm=source), step(Step.SNAPSHOT_LIST, vm=source)],
            )
        from cloudlet.engine.ports import ssh_port

        spec = InstanceSpec.model_validate_json(src.spec_json)
        # a clone gets NICs on the same networks (new addresses), not the source's forwards
        network = spec.network.model_copy(update={"ports": ()})
        spec = spec.model_copy(update={"name": name, "network": network})
        new_id = str(uuid.uuid4())
        with contextlib.ExitStack() as held:
            # One order everywhere (clones A->B and B->A at once never deadlock), and a
            # name once (a lock taken twice by one thread would wait for itself).
            for key in sorted({name, source}):
                held.enter_context(self.ctx.lock(key))
            vm_state.ensure_name_free(self.ctx, name)
            # Read the source again under its lock: another call may have deleted it (or
            # replaced it), or the snapshot, since the checks above.
            if locked_vm_row(self.ctx, source).id != src.id:
                raise NotFound(f"VM {source} was deleted meanwhile", hint="try again")
            src = locked_vm_row(self.ctx, source)
            if snap is not None:
                index, snaps = self.snapshots.find(src, snap.name)
                snap = snaps[index]
            row = InstanceRow(
                id=new_id,
                name=name,
                state=VMState.CREATING.value,
                spec_json=spec.model_dump_json(),
                image=src.image,
                image_path=src.image_path,
                type_name=src.type_name,
                cpus=src.cpus,
                memory=src.memory,
                disk_size=src.disk_size,
                arch=src.arch,
                location=src.location,
                ssh_port=ssh_port(self.ctx.db, self.ctx.paths.locks)
                if src.ssh_port is not None
                else None,
            )
            with self.ctx.db.session() as s:
                s.add(row)
            try:
                with self.ctx.operation(row, "create") as op_id:
                    instance_dir = self.ctx.paths.instance_dir(new_id)
                    instance_dir.mkdir(parents=True)
                    network_rows.allocate(self.ctx, new_id, spec.network.nics)
                    disk = instance_dir / "disk.qcow2"
                    if linked:
                        assert snap is not None
                        self.ctx.deps.disks.create_layer(Path(snap.file), "qcow2", disk)
                    else:
                        fresh_src = locked_vm_row(self.ctx, source)
                        if snap is None and fresh_src.state not in OFFLINE:
                            raise Conflict(
                                f"cannot clone {source}: it is {fresh_src.state}",
                                hint="stop it first",
                            )
                        origin = Path(snap.file) if snap is not None else None
                        self.ctx.deps.disks.flatten(origin or active_disk(self.ctx, src.id), disk)
                    if (self.ctx.paths.instance_dir(src.id) / "seed.iso").exists():
                        from cloudlet.engine import access as access_mod

                        access_mod.write_seed(
                            instance_dir / "seed.iso",
                            instance_id=new_id,
                            hostname=name,
                            access=spec.access,
                            user_data=spec.user_data,
                        )
                    with self.ctx.db.session() as s:
                        if linked:
                            assert snap is not None
                            s.add(
                                InstanceDiskRow(
                                    instance_id=new_id,
                                    active_path=str(disk),
                                    origin_snapshot_id=snap.id,
                                )
                            )
                        fresh = s.get(InstanceRow, new_id)
                        assert fresh is not None
                        fresh.state = VMState.STOPPED.value
                    what = f"snapshot {snap.name}" if snap is not None else "its current disk"
                    kind = "linked" if linked else "full"
                    self.ctx.event(name, "created", f"{kind} clone of {source} ({what})", op_id)
            except BaseException:
                teardown.remove_everything(self.ctx, row)
                raise
        return instance_view.show(self.ctx, name)
