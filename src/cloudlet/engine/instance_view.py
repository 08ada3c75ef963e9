"""What a VM looks like to a frontend: its record, as the driver sees it now, as a view."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from cloudlet.engine import addresses, vm_state
from cloudlet.engine.access import has_ssh
from cloudlet.engine.storage_rows import active_disk
from cloudlet.engine.views import InstanceView
from cloudlet.spec.instance import InstanceSpec
from cloudlet.spec.states import LIVE_STATES
from cloudlet.store.models import InstanceRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext


def view(ctx: EngineContext, row: InstanceRow) -> InstanceView:
    """The view of a VM record (reconciled by the caller)."""
    runtime = ctx.driver.runtime(row.id) if row.state in LIVE_STATES else None
    spec = InstanceSpec.model_validate_json(row.spec_json)
    instance_dir = ctx.paths.instance_dir(row.id)
    return InstanceView(
        id=row.id,
        name=row.name,
        state=row.state,
        type=row.type_name,
        cpus=row.cpus,
        memory=row.memory,
        disk_size=row.disk_size,
        image=row.image,
        arch=row.arch,
        location=row.location,
        accel=row.accel,
        ssh_port=row.ssh_port,
        ssh_access=has_ssh(spec.access, row.ssh_port),
        pid=runtime.pid if runtime else None,
        created_at=row.created_at,
        last_error=row.last_error,
        kind=row.kind,
        addresses=addresses.of(ctx.db, row.id, user_mode=spec.network.mode == "nat"),
        network={
            **spec.network.model_dump(),
            "restrict": spec.network.restrict or ctx.settings.force_restrict_network,
        },
        paths={
            "disk": str(active_disk(ctx, row.id)),
            "serial_log": str(instance_dir / "serial.log"),
            "image": row.image_path,
            "runtime": str(ctx.paths.runtime_dir(row.id)),
        },
    )


def show(ctx: EngineContext, name: str) -> InstanceView:
    """The VM named ``name``, its state first made to match what the driver sees."""
    return view(ctx, vm_state.reconcile(ctx, ctx.row(name)))


def instances(ctx: EngineContext, *, include_process: bool = False) -> list[InstanceView]:
    """System VMs by name; process VMs (cloudlet run) too when asked."""
    query = select(InstanceRow).order_by(InstanceRow.name)
    if not include_process:
        query = query.where(InstanceRow.kind == "system")
    with ctx.db.session() as s:
        rows = s.scalars(query).all()
    return [view(ctx, vm_state.reconcile(ctx, r)) for r in rows]
