"""A new stopped VM from a record we did not write: a backup restored as a new VM, an import.

The record (spec and old row) goes through vm_record.py's checks, the VM gets a fresh
id, its root disk and volumes are filled by the caller, and a failure anywhere removes
all of it: nothing half-made is left behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from cloudlet.engine import access as access_mod
from cloudlet.engine import instance_view, teardown, vm_state
from cloudlet.engine.backup_volumes import NewVolume, install_new_volumes
from cloudlet.engine.context import EngineContext
from cloudlet.engine.ports import ssh_port
from cloudlet.engine.storage import StorageService
from cloudlet.engine.views import InstanceView
from cloudlet.engine.vm_record import check_record
from cloudlet.spec.states import VMState
from cloudlet.store.models import InstanceRow


def new_vm(
    ctx: EngineContext,
    storage: StorageService,
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
    record = check_record(ctx, name, spec_data, row_data, source)
    spec = record.spec
    vm_state.ensure_name_free(ctx, name)
    new_id = str(uuid.uuid4())
    with ctx.lock(name):
        vm_state.ensure_name_free(ctx, name)
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
            ssh_port=ssh_port(ctx.db, ctx.paths.locks) if record.ssh else None,
        )
        with ctx.db.session() as s:
            s.add(row)
        made: list[str] = []
        try:
            with ctx.operation(row, "create") as op_id:
                instance_dir = ctx.paths.instance_dir(new_id)
                instance_dir.mkdir(parents=True)
                disk = instance_dir / "disk.qcow2"
                made = install_new_volumes(storage, new_id, fill(disk))
                if record.seed:
                    access_mod.write_seed(
                        instance_dir / "seed.iso",
                        instance_id=new_id,
                        hostname=name,
                        access=spec.access,
                        user_data=access_mod.seed_user_data(spec),
                    )
                with ctx.db.session() as s:
                    fresh = s.get(InstanceRow, new_id)
                    assert fresh is not None
                    fresh.disk_size = ctx.deps.disks.virtual_size(disk)
                    fresh.state = VMState.STOPPED.value
                ctx.event(name, "created", story(), op_id)
        except BaseException:
            storage.undo_new_vm_volumes(new_id, made)
            teardown.remove_everything(ctx, row)
            raise
    return instance_view.show(ctx, name)
