"""Starting a VM's QEMU: accelerator, capacity and seats under the host lock, then launch.

The caller holds the VM's lock and an operation row; a failed launch leaves no
process behind and the VM in ``error`` with the reason.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from cloudlet.driver.base import LaunchConfig
from cloudlet.engine import accel_note, licensing, locks, network_rows, storage_rows
from cloudlet.engine import capacity as capacity_mod
from cloudlet.errors import Cancelled, CloudletError, InvalidInput
from cloudlet.host.kvm import AccelVerdict
from cloudlet.images.store import HOST_ARCH, Image
from cloudlet.progress import CancelToken, ProgressSink, phase
from cloudlet.spec.instance import InstanceSpec
from cloudlet.spec.states import CAPACITY_STATES, VMState
from cloudlet.spec.units import MIB
from cloudlet.store.models import InstanceRow, LicenceRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext


def accel_for(ctx: EngineContext, image: Image) -> AccelVerdict:
    if image.arch != HOST_ARCH:
        return AccelVerdict("tcg", f"{image.arch} guests are emulated on this {HOST_ARCH} host")
    return ctx.deps.accel(image)


def check_arch(ctx: EngineContext, arch: str, profile: str) -> None:
    runnable = ctx.deps.arches()
    if arch not in runnable:
        raise InvalidInput(
            f"this host cannot run {arch} guests (no QEMU for it)",
            hint="install qemu-system-arm for aarch64, or pick another architecture",
        )
    if profile == "legacy" and arch != "x86_64":
        raise InvalidInput(
            "the legacy profile is an x86 PC (i440fx, IDE, e1000, BIOS)",
            hint="use the legacy profile only with x86_64 guests",
        )


def capacity(ctx: EngineContext, exclude: str | None = None) -> capacity_mod.Capacity:
    with ctx.db.session() as s:
        rows = s.scalars(
            select(InstanceRow).where(InstanceRow.state.in_([st.value for st in CAPACITY_STATES]))
        ).all()
    used = [(r.cpus, r.memory) for r in rows if r.id != exclude]
    return capacity_mod.compute(
        host_cpus=ctx.deps.host_cpus,
        host_memory=ctx.deps.host_memory,
        cpu_overcommit=ctx.settings.cpu_overcommit,
        memory_reserve=ctx.settings.memory_reserve,
        used=used,
    )


def seats_in_use(ctx: EngineContext, licence: str, exclude: str | None = None) -> int:
    with ctx.db.session() as s:
        rows = s.scalars(
            select(InstanceRow).where(InstanceRow.state.in_([st.value for st in CAPACITY_STATES]))
        ).all()
    count = 0
    for r in rows:
        if r.id == exclude:
            continue
        try:
            if Image.load(Path(r.image_path)).licence == licence:
                count += 1
        except OSError:
            continue
    return count


def check_seats(ctx: EngineContext, image: Image, exclude: str | None = None) -> None:
    if not image.needs_seats:
        return
    with ctx.db.session() as s:
        row = s.get(LicenceRow, image.licence)
        seats = row.seats if row is not None else None
    licensing.check_seats(image, seats=seats, in_use=seats_in_use(ctx, image.licence, exclude))


def launch_config(ctx: EngineContext, row: InstanceRow, image: Image, accel: str) -> LaunchConfig:
    spec = InstanceSpec.model_validate_json(row.spec_json)
    instance_dir = ctx.paths.instance_dir(row.id)
    cmdline = f"{image.cmdline} cloudlet.hostname={row.name}".strip() if image.kernel else ""
    seed = instance_dir / "seed.iso"
    return LaunchConfig(
        instance_id=row.id,
        name=row.name,
        arch=row.arch,
        accel=accel,
        cpus=row.cpus,
        memory_mib=row.memory // MIB,
        disk=storage_rows.active_disk(ctx, row.id, heal=True),
        disk_format="qcow2",
        extra_disks=storage_rows.boot_disks(ctx, row.id),
        runtime_dir=ctx.paths.runtime_dir(row.id),
        serial_log=instance_dir / "serial.log",
        serial_log_max=ctx.settings.serial_log_max,
        kernel=image.kernel,
        initrd=image.initrd,
        cmdline=cmdline,
        network_mode=spec.network.mode,
        tap_nics=network_rows.boot_nics(ctx, row.id),
        host_forwards=network_rows.host_forwards(spec),
        network_restrict=spec.network.restrict or ctx.settings.force_restrict_network,
        ssh_port=row.ssh_port,
        uuid=row.id,
        profile=spec.profile,
        seed_iso=seed if seed.exists() else None,
        install_iso=image.install_iso,
        linked_base=storage_rows.linked_base(ctx, row.id),
    )


def boot(
    ctx: EngineContext,
    row: InstanceRow,
    *,
    wait: bool,
    op_id: int,
    state: Path | None = None,
    progress: ProgressSink | None = None,
    cancel: CancelToken | None = None,
) -> None:
    """Check capacity, launch QEMU, wait for the agent; the caller holds the VM's lock.

    ``state``: a saved RAM and device state (a memory snapshot) to resume from
    instead of booting; the guest then runs on where it was saved. ``progress`` hears
    the phases (boot, agent); a cancelled ``cancel`` stops QEMU and leaves the VM stopped.
    """
    image = Image.load(Path(row.image_path))
    verdict = accel_for(ctx, image)
    licensing.check_host_allowed(image, apple_hardware=licensing.host_is_apple_hardware())
    with locks.hold(ctx.paths.locks, locks.HOST_KEY, what="host capacity", cancel=cancel):
        check_seats(ctx, image, exclude=row.id)
        capacity(ctx, exclude=row.id).check(row.cpus, row.memory, name=row.name)
        ctx.set_state(row.id, VMState.STARTING)
    try:
        phase(progress, cancel, "boot")
        ctx.driver.force_stop(row.id)  # a crashed VM may leave a stuck process
        ctx.driver.cleanup(row.id)
        network_rows.ensure_for_boot(ctx, row.id)
        config = launch_config(ctx, row, image, verdict.accel)
        with ctx.db.session() as s:
            fresh = s.get(InstanceRow, row.id)
            assert fresh is not None
            fresh.accel = verdict.accel
        if state is not None:
            config = dataclasses.replace(config, incoming=True)
        ctx.driver.start(config)
        ctx.notices.extend(n for n in ctx.driver.take_notices() if n not in ctx.notices)
        if state is not None:
            ctx.driver.restore_state(row.id, state)
            ctx.driver.resume(row.id)
        ctx.set_state(row.id, VMState.RUNNING)
        if wait and image.guest_agent and state is None:
            phase(progress, cancel, "agent")
            ctx.driver.wait_agent(row.id, ctx.agent_timeout, cancel=cancel)
    except BaseException as exc:
        ctx.driver.force_stop(row.id)
        ctx.driver.cleanup(row.id)
        if isinstance(exc, Cancelled):  # asked for, not a fault of the VM
            ctx.set_state(row.id, VMState.STOPPED)
            raise
        message = exc.one_line() if isinstance(exc, CloudletError) else repr(exc)
        ctx.set_state(row.id, VMState.ERROR, message)
        raise
    if verdict.accel == "tcg" and accel_note.first_since_boot(ctx.paths.home, image.arch):
        ctx.notice(accel_note.vm_note(row.name, verdict.reason))
    how = " from its memory state" if state is not None else ""
    ctx.event(row.name, "started", f"started with {verdict.accel}{how}", op_id)
