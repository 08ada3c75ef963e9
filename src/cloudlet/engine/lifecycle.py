"""Instance lifecycle: start, pause, resume, delete and the spec changes of one VM.

Each change takes the VM's lock, records an operation, acts through the driver and
records the result. The service returns an ``Outcome`` (changed or not, and what to
say); the facade turns it into the instance view frontends show.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from sqlalchemy import select

from cloudlet.engine import launch, network_host, storage_rows, teardown, vm_state
from cloudlet.engine.context import EngineContext, event_row
from cloudlet.engine.views import Done
from cloudlet.errors import InvalidInput, StillRunning
from cloudlet.next_steps import NextStep, Step, step
from cloudlet.progress import CancelToken, ProgressSink
from cloudlet.spec import names
from cloudlet.spec.instance import BackupPolicy, FirewallSpec, InstanceSpec
from cloudlet.spec.machine_types import resolve_shape
from cloudlet.spec.states import LIVE_STATES, STARTABLE_STATES, VMState
from cloudlet.spec.units import format_size
from cloudlet.store.models import InstanceRow

SPEC_FIELDS_CHANGEABLE = frozenset({"volumes", "firewall", "backup", "api_access"})


@dataclass(frozen=True)
class SpecChanges:
    """A request to change the spec fields that need no action on the VM now; a field
    left None stays as it is. The fields are those of ``SPEC_FIELDS_CHANGEABLE``."""

    volumes: tuple[int, ...] | None = None
    firewall: FirewallSpec | None = None
    backup: BackupPolicy | None = None
    api_access: bool | None = None

    def as_dict(self) -> dict[str, object]:
        """The fields given, by name (what ``Lifecycle.update_spec`` takes)."""
        given = ((f.name, getattr(self, f.name)) for f in fields(self))
        return {name: value for name, value in given if value is not None}


@dataclass(frozen=True)
class Outcome:
    """What an action did to a VM: whether it changed anything, and the message."""

    changed: bool
    message: str
    next_steps: tuple[NextStep, ...] = ()


def still_running(name: str, state: str) -> StillRunning:
    """Why a VM whose QEMU runs is not deleted without force, and what to do."""
    return StillRunning(
        f"{name} is {state}",
        hint="stop it first, or delete it with force (it is stopped at once)",
        next_steps=[step(Step.VM_STOP, vm=name), step(Step.VM_FORCE_DELETE, vm=name)],
    )


class Lifecycle:
    """Start, pause, resume, delete, reshape and spec updates on the shared context."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def start(
        self, name: str, *, wait: bool = True, progress: ProgressSink | None = None,
        cancel: CancelToken | None = None,
    ) -> Outcome:  # fmt: skip
        """Boot a stopped VM; ``progress`` hears its phases, ``cancel`` leaves it stopped."""
        ctx = self.ctx
        with ctx.lock(name, cancel=cancel):
            row = vm_state.reconcile_locked(ctx, ctx.row(name))
            if row.state == VMState.RUNNING:
                return Outcome(False, f"{name} is already running")
            ctx.require_state(row, set(STARTABLE_STATES), "start")
            with ctx.operation(row, "start") as op_id:
                launch.boot(ctx, row, wait=wait, op_id=op_id, progress=progress, cancel=cancel)
            return Outcome(True, f"{name} is running")

    def pause(self, name: str) -> Outcome:
        """Freeze the vCPUs; memory stays allocated and counted."""
        return self._freeze(name, pause=True)

    def resume(self, name: str) -> Outcome:
        return self._freeze(name, pause=False)

    def _freeze(self, name: str, *, pause: bool) -> Outcome:
        ctx = self.ctx
        source, target = (VMState.RUNNING, VMState.PAUSED)[:: 1 if pause else -1]
        kind = "pause" if pause else "resume"
        with ctx.lock(name):
            row = vm_state.reconcile_locked(ctx, ctx.row(name))
            if row.state == target:
                return Outcome(False, f"{name} is already {target}")
            ctx.require_state(row, {source}, kind)
            with ctx.operation(row, kind) as op_id:
                (ctx.driver.pause if pause else ctx.driver.resume)(row.id)
                ctx.set_state(row.id, target)
                ctx.event(name, f"{kind}d", f"vCPUs {'stopped' if pause else 'running'}", op_id)
            return Outcome(True, f"{name} {kind}d")

    def delete(self, name: str, *, force: bool = False) -> Done:
        """Remove the VM, its overlay, sockets and records; a running VM only with
        ``force`` (then it is stopped at once, no ACPI)."""
        ctx = self.ctx
        with ctx.lock(name):
            row = self._deletable(name, force=force)
            kept = storage_rows.attached_volume_names(ctx, row.id)
            with ctx.operation(row, "delete") as op_id:
                ctx.set_state(row.id, VMState.DELETING)
                teardown.remove_everything(ctx, row)
                ctx.event(name, "deleted", "VM and its disk removed", op_id)
        message = f"{name} deleted" + (
            f" (volumes kept, now detached: {', '.join(kept)})" if kept else ""
        )
        return Done("vm", name, "deleted", message)

    def check_delete(self, name: str, *, force: bool = False) -> None:
        """Raise what ``delete`` would raise, changing nothing: a frontend deleting
        several VMs checks them all before the first one goes."""
        self.ctx.row(name)  # an unknown name fails before its lock file is made
        with self.ctx.lock(name):
            self._deletable(name, force=force)

    def _deletable(self, name: str, *, force: bool) -> InstanceRow:
        ctx = self.ctx
        row = vm_state.reconcile_locked(ctx, ctx.row(name))
        if row.state in LIVE_STATES and not force:
            raise still_running(name, row.state)
        storage_rows.check_deletable(ctx, row)
        return row

    # ------------------------------------------------------------------ spec changes
    def spec(self, name: str) -> InstanceSpec:
        """The spec a VM was created with (and changed to since)."""
        return InstanceSpec.model_validate_json(self.ctx.row(name).spec_json)

    def reshape(
        self, name: str, type_name: str | None, cpus: int | None, memory: int | None
    ) -> Outcome:
        """Change the machine type (vCPUs, memory) of a VM that is not running."""
        ctx = self.ctx
        shape = resolve_shape(type_name, cpus, memory)
        with ctx.lock(name):
            row = vm_state.reconcile_locked(ctx, ctx.row(name))
            if (row.type_name, row.cpus, row.memory) == (shape.name, shape.cpus, shape.memory):
                return Outcome(False, f"{name} is already {shape.name}")
            ctx.require_state(row, set(STARTABLE_STATES), "change the machine type of")
            before = f"{row.type_name} ({row.cpus} vCPU, {format_size(row.memory)})"
            after = f"{shape.name} ({shape.cpus} vCPU, {format_size(shape.memory)})"
            with ctx.operation(row, "reshape") as op_id, ctx.db.session() as s:
                fresh = s.get(InstanceRow, row.id)
                assert fresh is not None
                spec = InstanceSpec.model_validate_json(fresh.spec_json)
                changed = spec.model_copy(
                    update={"type": shape.name, "cpus": shape.cpus, "memory": shape.memory}
                )
                fresh.spec_json = changed.model_dump_json()
                fresh.type_name, fresh.cpus, fresh.memory = shape.name, shape.cpus, shape.memory
                s.add(event_row(name, "reshaped", f"{before} -> {after}", op_id))
            return Outcome(True, f"{name}: {before} -> {after}")

    def update_spec(self, name: str, changes: dict[str, object]) -> Outcome:
        """Record fields that need no action on the VM now (volumes, firewall, backup ...)."""
        ctx = self.ctx
        names.vm_name(name)
        if not changes.keys() <= SPEC_FIELDS_CHANGEABLE:
            raise InvalidInput(
                f"cannot change {', '.join(sorted(changes.keys() - SPEC_FIELDS_CHANGEABLE))} "
                f"of {name}",
                hint="those are fixed once created: delete and re-create the VM",
                next_steps=[step(Step.VM_DELETE, vm=name), step(Step.VM_CREATE, vm=name)],
            )
        with ctx.lock(name), ctx.db.session() as s:
            row = s.scalar(select(InstanceRow).where(InstanceRow.name == name))
            if row is None:
                raise ctx.no_vm(name)
            spec = InstanceSpec.model_validate_json(row.spec_json)
            # validate through the model: model_copy alone would skip the field checks
            new = InstanceSpec.model_validate({**spec.model_dump(), **changes})
            row.spec_json = new.model_dump_json()
        if "firewall" in changes and new.network.nics:
            network_host.sync_locked(ctx)  # enforce the new rules now
        return Outcome(new != spec, f"{name}: {', '.join(sorted(changes))}")
