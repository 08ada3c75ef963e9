"""Recovery: finish or roll back what a dead process left half done.

Runs when an engine opens: operations still 'running' whose lock is free, process
VMs whose owner is gone, and staging directories nobody holds.
"""

from __future__ import annotations

from sqlalchemy import select

from cloudlet.engine import locks, teardown, vm_state
from cloudlet.engine.context import EngineContext
from cloudlet.engine.process_vms import owner_alive
from cloudlet.engine.sweep import sweep_staging
from cloudlet.engine.views import Cleanup
from cloudlet.store.models import InstanceRow, OperationRow


def recover(ctx: EngineContext) -> list[Cleanup]:
    """Finish or roll back operations whose process died (lock free, still 'running');
    what was done, one item each."""
    notes: list[Cleanup] = []
    with ctx.db.session() as s:
        ops = s.scalars(select(OperationRow).where(OperationRow.status == "running")).all()
    for op in ops:
        if not locks.is_free(ctx.paths.locks, op.instance_name):
            continue
        with locks.hold(ctx.paths.locks, op.instance_name, wait=5):
            with ctx.db.session() as s:
                fresh = s.get(OperationRow, op.id)
                if fresh is None or fresh.status != "running":
                    continue
                row = s.get(InstanceRow, op.instance_id)
            name = op.instance_name
            if op.kind == "run" and row is not None:
                teardown.remove_everything(ctx, row)
                status = "rolled_back"
                notes.append(_command_gone(name))
            elif op.kind in ("create", "delete") and row is not None:
                teardown.remove_everything(ctx, row)
                status = "rolled_back" if op.kind == "create" else "done"
                action = "rolled back" if op.kind == "create" else "finished"
                notes.append(
                    Cleanup(
                        "operation",
                        name,
                        action,
                        f"{action} the interrupted {op.kind} of {name}",
                    )
                )
            elif row is not None:
                # start, stop, pause, resume: the truth is what the driver sees now
                vm_state.settle_interrupted(ctx, row)
                status = "interrupted"
                notes.append(
                    Cleanup(
                        "operation", name, "settled", f"settled the interrupted {op.kind} of {name}"
                    )
                )
            else:
                status = "interrupted"
            ctx.finish_operation(op.id, status, "the process running it died")
            ctx.event(name, "recovered", notes[-1].message if notes else status, op.id)
    notes += reap_process_vms(ctx)
    notes += sweep_staging(ctx)
    return notes


def _command_gone(vm: str) -> Cleanup:
    return Cleanup("process VM", vm, "removed", f"removed process VM {vm}: its command is gone")


def reap_process_vms(ctx: EngineContext) -> list[Cleanup]:
    """Process VMs whose command is gone (and not just finishing up under its lock)."""
    with ctx.db.session() as s:
        rows = s.scalars(select(InstanceRow).where(InstanceRow.kind == "process")).all()
    notes = []
    for row in rows:
        if owner_alive(row) or not locks.is_free(ctx.paths.locks, row.name):
            continue
        with locks.hold(ctx.paths.locks, row.name, wait=5):
            teardown.remove_everything(ctx, row)
        notes.append(_command_gone(row.name))
    return notes
