"""What the host offers and holds: accelerator, capacity, machine types, consoles, logs."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from cloudlet.engine import accel_cache, accel_note, launch, serial_tail, vm_state
from cloudlet.engine.context import EngineContext
from cloudlet.engine.serial_tail import SerialLog
from cloudlet.engine.type_listing import MachineTypeOffer, offers
from cloudlet.engine.views import HostView
from cloudlet.images.store import HOST_ARCH
from cloudlet.spec.states import VMState
from cloudlet.store.models import InstanceRow


class HostInfo:
    """Host-wide reads and the per-VM console and serial log paths."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def host(self, *, probe: bool = True) -> HostView:
        ctx = self.ctx
        cap = launch.capacity(ctx)
        accel, reason = "unknown", "not probed yet: the first VM start probes KVM"
        if probe:
            verdict = ctx.deps.accel(ctx.deps.images.get("tiny"))
            accel, reason = verdict.accel, verdict.reason
        with ctx.db.session() as s:
            rows = s.scalars(select(InstanceRow)).all()
        return HostView(
            accel=accel,
            accel_reason=reason,
            qemu_version=ctx.deps.hypervisor_version(),
            driver=ctx.driver.name,
            host_cpus=cap.host_cpus,
            host_memory=cap.host_memory,
            cpu_limit=cap.cpu_limit,
            memory_limit=cap.memory_limit,
            cpus_used=cap.cpus_used,
            memory_used=cap.memory_used,
            instances=len(rows),
            running=sum(1 for r in rows if r.state == VMState.RUNNING),
            home=str(ctx.paths.home),
            arches={
                arch: (accel if arch == HOST_ARCH else "tcg (emulated)")
                for arch in sorted(ctx.deps.arches())
            },
            qemu_user=ctx.driver.process_user(),
            accel_note=accel_note.host_note(reason) if accel == "tcg" else "",
        )

    def reprobe_host(self) -> HostView:
        """Forget the cached KVM verdict and probe again (after KVM was fixed)."""
        accel_cache.forget(self.ctx.paths.home)
        return self.host(probe=True)

    def machine_types(self) -> list[MachineTypeOffer]:
        """The machine types with the share of this host each would take, and their fit."""
        return offers(
            self.ctx.deps.host_cpus, self.ctx.deps.host_memory, limits=launch.capacity(self.ctx)
        )

    def serial_log(self, name: str) -> Path:
        row = self.ctx.row(name)
        return self.ctx.paths.instance_dir(row.id) / "serial.log"

    def serial_log_tail(self, name: str, lines: int | None = None) -> SerialLog:
        """The VM's serial log, or its last ``lines`` lines; no data before a first start."""
        return serial_tail.tail(name, self.serial_log(name), lines)

    def console_socket(self, name: str) -> Path:
        row = vm_state.reconcile(self.ctx, self.ctx.row(name))
        self.ctx.require_state(row, {VMState.RUNNING, VMState.PAUSED}, "attach to its console")
        runtime = self.ctx.driver.runtime(row.id)
        assert runtime is not None
        return runtime.console_socket
