"""Stopping a VM: the ACPI power button (or its agent), a wait, then quit and clean up."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cloudlet.engine import instance_view, vm_state
from cloudlet.engine.views import ActionResult
from cloudlet.images.store import Image
from cloudlet.spec.states import VMState

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext


def stop(
    ctx: EngineContext, name: str, *, force: bool = False, timeout: float | None = None
) -> ActionResult:
    """ACPI power button, wait, then quit/kill; ``force`` skips the wait."""
    timeout = ctx.settings.stop_timeout if timeout is None else timeout
    with ctx.lock(name):
        row = vm_state.reconcile_locked(ctx, ctx.row(name))
        if row.state in (VMState.STOPPED, VMState.CRASHED, VMState.ERROR):
            return ActionResult(
                instance_view.view(ctx, row), False, f"{name} is already {row.state}"
            )
        ctx.require_state(row, {VMState.RUNNING, VMState.PAUSED}, "stop")
        ctx.set_state(row.id, VMState.STOPPING)
        how = "forced"
        with ctx.operation(row, "stop") as op_id:
            if not force:
                if row.state == VMState.PAUSED:
                    ctx.driver.resume(row.id)  # a paused guest cannot see the button
                # Direct-boot ARM guests have no ACPI power button: ask their agent.
                image = Image.load(Path(row.image_path))
                via_agent = row.arch != "x86_64" and image.guest_agent
                ctx.driver.request_shutdown(row.id, via_agent=via_agent)
                if ctx.driver.wait_shutdown(row.id, timeout):
                    how = "graceful"
            ctx.driver.force_stop(row.id)
            ctx.driver.cleanup(row.id)
            ctx.set_state(row.id, VMState.STOPPED)
            ctx.event(name, "stopped", f"{how} stop", op_id)
        message = f"{name} stopped" + (
            ""
            if how == "graceful" or force
            else f" (forced: the guest ignored the power button for {timeout:.0f} s)"
        )
        return ActionResult(instance_view.show(ctx, name), True, message)
