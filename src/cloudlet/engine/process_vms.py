"""Process VMs (cloudlet run): boot, run one program, and leave nothing behind.

A process VM is an instance row of kind "process" owned by the command that
started it (pid and start time), recorded before anything exists, under the VM's
lock for its whole life. Whoever ends first cleans up: the command itself on exit,
Ctrl-C or SIGTERM; its watcher (a small process in its own session) when the
command is SIGKILLed; the next command's recovery if both are gone.
"""

from __future__ import annotations

import os
import secrets
import shlex
import socket
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from cloudlet.driver.base import Channel, LaunchConfig, Share
from cloudlet.engine import launch, locks, teardown, vm_state
from cloudlet.engine.guest_access import copy_limits
from cloudlet.engine.image_lookup import get_image
from cloudlet.engine.process_io import io_dir, release
from cloudlet.errors import Conflict, InvalidInput
from cloudlet.guest.landing import CopyLimits
from cloudlet.host import processes
from cloudlet.host.run import spawn
from cloudlet.images.store import Image
from cloudlet.next_steps import Step, step
from cloudlet.process import copies, virtiofs
from cloudlet.process import guest_init as g
from cloudlet.process.channels import Channels
from cloudlet.spec.instance import InstanceSpec, NetworkSpec
from cloudlet.spec.names import image_name, vm_name
from cloudlet.spec.process import ProcessSpec
from cloudlet.spec.states import VMState
from cloudlet.spec.units import MIB
from cloudlet.store.models import InstanceRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext

T = TypeVar("T")
TCG_WARNING = (
    "this host has no working KVM: the sandbox runs under QEMU's TCG emulator, which "
    "gives no isolation guarantee against a hostile guest"
)


@dataclass
class RunningProcessVM:
    """What the frontend gets while the program runs: the VM and its connected ports."""

    name: str
    instance_id: str
    accel: str
    conns: dict[str, socket.socket]
    spec: ProcessSpec
    notices: list[str] = field(default_factory=list)
    copy_limits: CopyLimits = field(default_factory=CopyLimits)


def _channel_names(spec: ProcessSpec) -> list[str]:
    names = [g.PORT_STATUS]
    names += [g.PORT_TTY] if spec.tty else [g.PORT_STDIN, g.PORT_STDOUT, g.PORT_STDERR]
    names += [g.copy_in_port(i) for i in range(len(spec.copy_in))]
    names += [g.copy_out_port(i) for i in range(len(spec.copy_out))]
    return names


class ProcessVMs:
    """The run use case, on the shared context's records, locks and driver."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------------ checks
    def _validate(self, spec: ProcessSpec) -> Image:
        image_name(spec.image)
        if spec.name is not None:
            vm_name(spec.name)
        if not spec.argv:
            raise InvalidInput(
                "no program to run",
                hint="name the program and its arguments",
                next_steps=[step(Step.VM_RUN, image=spec.image, command="uname -a")],
            )
        if spec.sandbox:
            if spec.network != "none":
                raise InvalidInput(
                    "a sandbox has no network", hint="run it with no network, or not as a sandbox"
                )
            writable = [s for s in spec.shares if not s.read_only]
            if writable:
                raise InvalidInput(
                    f"a sandbox shares only read-only: {writable[0].host} is writable",
                    hint="share it read-only (:ro), or copy the results out instead",
                )
        if spec.boot and spec.sandbox:
            raise InvalidInput(
                "booting first starts the program through the guest agent, which a sandbox lacks",
                hint="run it without booting first, or not as a sandbox",
            )
        if spec.network not in ("none", "nat"):
            raise InvalidInput(f"unknown network {spec.network!r}", hint="use nat or none")
        image = get_image(self.ctx.deps.images, spec.image, arch=spec.arch)
        if image.kernel is None or image.initrd is None or image.install_iso is not None:
            raise InvalidInput(
                f"image {image.name} does not boot a kernel directly, which a process VM needs",
                hint="use tiny or debian-12, or create a system VM from this image",
                next_steps=[
                    step(Step.VM_RUN, image="tiny", command=shlex.join(spec.argv)),
                    step(Step.VM_CREATE_FROM_IMAGE, image=image.name),
                ],
            )
        if spec.boot and not image.guest_agent:
            raise InvalidInput(
                f"booting first needs a guest agent, and image {image.name} has none",
                hint="run it without booting first: the program then runs before any service "
                "starts",
            )
        if image.arch not in self.ctx.deps.arches():
            raise InvalidInput(
                f"this host cannot run {image.arch} guests", hint="pick another architecture"
            )
        launch.capacity(self.ctx).check(spec.cpus, spec.memory, name=spec.name or "the process VM")
        return image

    def _name(self, spec: ProcessSpec) -> str:
        if spec.name is not None:
            vm_name(spec.name)
            vm_state.ensure_name_free(self.ctx, spec.name)
            return spec.name
        return f"run-{secrets.token_hex(3)}"

    # ------------------------------------------------------------------ run
    def run(self, spec: ProcessSpec, attach: Callable[[RunningProcessVM], T]) -> T:
        """Boot, hand the connected VM to ``attach`` (the I/O), then destroy or keep it."""
        image = self._validate(spec)
        name = self._name(spec)
        ctx = self.ctx
        with ctx.lock(name):
            vm_state.ensure_name_free(ctx, name)
            row = self._record(spec, name, image)
            booted = False
            try:
                with ctx.operation(row, "run") as op_id:
                    self._claim_capacity(row)
                    running = self._boot(spec, row, image)
                    booted = True
                    ctx.event(name, "started", f"process VM for {spec.argv[0]!r}", op_id)
                    return attach(running)
            finally:
                # --keep keeps the VM whatever happened to the program (post-mortem).
                if spec.keep and booted:
                    self._keep(row)
                else:
                    self.destroy(row)

    def _claim_capacity(self, row: InstanceRow) -> None:
        """Check and count the VM's share in one step under the host lock: two runs that
        each fit alone cannot both boot when together they do not."""
        ctx = self.ctx
        with locks.hold(ctx.paths.locks, locks.HOST_KEY, what="host capacity"):
            launch.capacity(ctx, exclude=row.id).check(row.cpus, row.memory, name=row.name)
            ctx.set_state(row.id, VMState.STARTING)

    def _record(self, spec: ProcessSpec, name: str, image: Image) -> InstanceRow:
        instance_spec = InstanceSpec(
            name=name,
            image=image.name,
            type="custom",
            cpus=spec.cpus,
            memory=spec.memory,
            arch=image.arch,  # type: ignore[arg-type]
            network=NetworkSpec(mode="nat" if spec.network == "nat" else "none",
                                restrict=False, ssh_forward=False),
        )  # fmt: skip
        row = InstanceRow(
            id=str(uuid.uuid4()),
            name=name,
            state=VMState.CREATING.value,
            spec_json=instance_spec.model_dump_json(),
            image=image.name,
            image_path=str(image.path),
            type_name="custom",
            cpus=spec.cpus,
            memory=spec.memory,
            disk_size=image.min_disk_bytes,
            arch=image.arch,
            location=instance_spec.location,
            kind="process",
            owner_pid=os.getpid(),
            owner_start=processes.start_time(os.getpid()),
        )
        with self.ctx.db.session() as s:
            s.add(row)
        return row

    def _boot(self, spec: ProcessSpec, row: InstanceRow, image: Image) -> RunningProcessVM:
        ctx = self.ctx
        assert image.kernel is not None and image.initrd is not None
        instance_dir = ctx.paths.instance_dir(row.id)
        instance_dir.mkdir(parents=True)
        disk = instance_dir / "disk.qcow2"
        shares = tuple((g.share_tag(i), s.guest, s.read_only) for i, s in enumerate(spec.shares))
        # qemu-img makes the overlay while this thread builds the initramfs.
        with ThreadPoolExecutor(1, thread_name_prefix="run-overlay") as pool:
            overlay = pool.submit(ctx.deps.disks.create_overlay, image, disk, None)
            plan = g.GuestPlan(
                hostname=row.name,
                argv=spec.argv,
                workdir=spec.workdir or "/",
                env=spec.env,
                shares=shares,
                copy_in=tuple(copies.copy_in_target(c)[0] for c in spec.copy_in),
                copy_out=tuple(c.guest for c in spec.copy_out),
                network=spec.network == "nat",
                tty=spec.tty,
                terminal_size=spec.terminal_size,
            )
            initrd = instance_dir / "run-initrd.img"
            initrd.write_bytes(g.run_initrd(image.initrd.read_bytes(), plan, boot=spec.boot))
            overlay.result()
        verdict = launch.accel_for(ctx, image)
        notices: list[str] = []
        if spec.sandbox and verdict.accel != "kvm":
            notices.append(TCG_WARNING)
        directory = io_dir(ctx, row.id)
        directory.mkdir(mode=0o700)
        share_sockets = virtiofs.start(directory, [(s.host, s.read_only) for s in spec.shares])
        channels = Channels(directory, _channel_names(spec))
        try:
            config = LaunchConfig(
                instance_id=row.id,
                name=row.name,
                arch=image.arch,
                accel=verdict.accel,
                cpus=spec.cpus,
                memory_mib=spec.memory // MIB,
                disk=disk,
                disk_format="qcow2",
                runtime_dir=ctx.paths.runtime_dir(row.id),
                serial_log=instance_dir / "serial.log",
                serial_log_max=ctx.settings.serial_log_max,
                kernel=image.kernel,
                initrd=initrd,
                # The root disk is the first virtio disk: no wait for a label lookup.
                cmdline=f"{image.cmdline} root=/dev/vda cloudlet.hostname={row.name}".strip(),
                network_mode="nat" if spec.network == "nat" else "none",
                network_restrict=ctx.settings.force_restrict_network,
                uuid=row.id,
                guest_agent=spec.boot or not spec.sandbox,
                channels=tuple(
                    Channel(name, channels.path(name), console=name == g.PORT_TTY)
                    for name in channels.listeners
                ),
                shares=tuple(Share(g.share_tag(i), path) for i, path in enumerate(share_sockets)),
                exit_on_poweroff=True,
                hotplug=False,
            )
            ctx.driver.start(config)
            notices += ctx.driver.take_notices()
            conns = channels.accept_all()
        except BaseException:
            channels.close()
            raise
        if spec.boot:
            # The image's own init boots the system; then the agent starts the program.
            ctx.driver.wait_agent(row.id, ctx.agent_timeout)
            ctx.driver.exec(row.id, g.BOOTED_START, timeout=60)
        with ctx.db.session() as s:
            fresh = s.get(InstanceRow, row.id)
            if fresh is not None:
                fresh.state, fresh.accel = VMState.RUNNING.value, verdict.accel
        self._spawn_watcher(row)
        return RunningProcessVM(
            row.name, row.id, verdict.accel, conns, spec, notices, copy_limits(ctx.settings)
        )

    def _spawn_watcher(self, row: InstanceRow) -> None:
        """A process in its own session that cleans up if this one is SIGKILLed."""
        assert row.owner_pid is not None
        spawn(
            [
                sys.executable, "-m", "cloudlet.engine.run_watcher",
                str(self.ctx.paths.home), str(row.owner_pid), str(row.owner_start or 0),
                row.id,
            ],
            detach=True,
        )  # fmt: skip

    # ------------------------------------------------------------------ end
    def destroy(self, row: InstanceRow) -> None:
        """Stop QEMU and the share daemons, remove the files and the row. Idempotent."""
        teardown.remove_everything(self.ctx, row)

    def _keep(self, row: InstanceRow) -> None:
        """--keep: the VM stays as an ordinary stopped VM, its disk as the program left it."""
        ctx = self.ctx
        if not ctx.driver.wait_shutdown(row.id, 10.0):
            ctx.driver.force_stop(row.id)
        ctx.driver.cleanup(row.id)
        release(ctx, row.id)
        (ctx.paths.instance_dir(row.id) / "run-initrd.img").unlink(missing_ok=True)
        with ctx.db.session() as s:
            fresh = s.get(InstanceRow, row.id)
            if fresh is None:
                raise Conflict(f"process VM {row.name} vanished before it could be kept")
            fresh.kind = "system"
            fresh.owner_pid = None
            fresh.owner_start = None
            fresh.state = VMState.STOPPED.value
        ctx.event(row.name, "kept", "kept after its program ended (--keep)")


def owner_alive(row: InstanceRow) -> bool:
    return row.owner_pid is not None and processes.is_alive(row.owner_pid, row.owner_start)
