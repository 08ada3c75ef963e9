"""What state a VM is really in: the record made to match what the driver sees.

``reconcile`` is for readers (it leaves a VM alone while another command holds it);
``reconcile_locked`` for callers that hold the VM's lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from cloudlet.driver.base import PowerState
from cloudlet.engine import locks
from cloudlet.errors import Conflict
from cloudlet.spec.states import LIVE_STATES, VMState
from cloudlet.store.models import InstanceRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext


def reconcile(ctx: EngineContext, row: InstanceRow) -> InstanceRow:
    """Make the recorded state match reality, unless another command holds the VM."""
    if row.state not in LIVE_STATES:
        return row
    with locks.try_hold(ctx.paths.locks, row.name) as held:
        if not held:
            return row  # another command is working on it right now
        # Read again under the lock: another thread may have acted since ``row``.
        with ctx.db.session() as s:
            fresh = s.get(InstanceRow, row.id)
        return row if fresh is None else reconcile_locked(ctx, fresh)


def reconcile_locked(ctx: EngineContext, row: InstanceRow) -> InstanceRow:
    """Record what the driver sees: a dead QEMU is crashed, a powered-off guest stopped.

    The caller holds the VM's lock (or found it free).
    """
    if row.state not in LIVE_STATES:
        return row
    power = ctx.driver.power_state(row.id)
    new_state: VMState | None = None
    error: str | None = None
    if power == PowerState.RUNNING and row.state != VMState.RUNNING:
        new_state = VMState.RUNNING
    elif power == PowerState.PAUSED and row.state != VMState.PAUSED:
        new_state = VMState.PAUSED
    elif power == PowerState.NO_SPACE:
        # Not a crash: nothing is lost, the write waits in QEMU for space.
        error = (
            "QEMU paused the guest: a disk write found no space left on the host; "
            "free space there, then resume it to retry the write"
        )
        if row.state != VMState.PAUSED or row.last_error != error:
            new_state = VMState.PAUSED
            ctx.event(row.name, "paused", error)
    elif power == PowerState.SHUTDOWN:
        # The guest powered itself off; QEMU waits (-no-shutdown) to be reaped.
        ctx.driver.force_stop(row.id)
        ctx.driver.cleanup(row.id)
        new_state = VMState.STOPPED
        ctx.event(row.name, "stopped", "the guest powered off")
    elif power in (PowerState.GONE, PowerState.ABSENT, PowerState.FAILED):
        ctx.driver.force_stop(row.id)
        ctx.driver.cleanup(row.id)
        new_state = VMState.CRASHED
        error = {
            PowerState.GONE: "the QEMU process died unexpectedly",
            PowerState.ABSENT: "the VM's runtime record is missing",
            PowerState.FAILED: "the guest hit an internal error or panicked",
        }[power]
        ctx.event(row.name, "crashed", error)
    if new_state is None:
        return row
    ctx.set_state(row.id, new_state, error)
    with ctx.db.session() as s:
        fresh = s.get(InstanceRow, row.id)
    assert fresh is not None
    return fresh


def settle_interrupted(ctx: EngineContext, row: InstanceRow) -> None:
    power = ctx.driver.power_state(row.id)
    if power == PowerState.RUNNING:
        ctx.set_state(row.id, VMState.RUNNING)
    elif power in (PowerState.PAUSED, PowerState.NO_SPACE):
        ctx.set_state(row.id, VMState.PAUSED)
    else:
        ctx.driver.force_stop(row.id)
        ctx.driver.cleanup(row.id)
        ctx.set_state(row.id, VMState.STOPPED)


def ensure_name_free(ctx: EngineContext, name: str) -> None:
    with ctx.db.session() as s:
        exists = s.scalar(select(InstanceRow.id).where(InstanceRow.name == name))
    if exists is not None:
        raise Conflict(
            f"a VM named {name!r} already exists",
            hint="pick another name or delete the old VM first",
        )
