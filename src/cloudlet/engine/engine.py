"""The engine: every use case on VMs, with validation, capacity, locks and operations.

Each state change follows one pattern: take the VM's lock, write an operation row
(and the new transitional state), act through the driver, then record the result.
A process killed half way leaves an operation row whose lock is free; the next
engine to open finishes it or rolls it back (``recover``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import select

from cloudlet.config import Settings
from cloudlet.driver.base import ExecResult, GuestInfo, PowerState
from cloudlet.engine import (
    accel_cache,
    addresses,
    launch,
    licensing,
    locks,
    network_ops,
    ports,
    serial_tail,
    storage_ops,
    teardown,
    vm_state,
)
from cloudlet.engine import access as access_mod
from cloudlet.engine import capacity as capacity_mod
from cloudlet.engine import image_menu as image_menu_mod
from cloudlet.engine.context import EngineContext
from cloudlet.engine.deps import EngineDeps
from cloudlet.engine.image_cap import check_disk_size, image_size_cap
from cloudlet.engine.image_menu import ImageChoice
from cloudlet.engine.serial_tail import SerialLog
from cloudlet.engine.sweep import sweep_staging
from cloudlet.engine.type_listing import MachineTypeOffer, offers
from cloudlet.engine.views import HostView, InstanceView
from cloudlet.errors import Conflict, InvalidInput, NotFound, StillRunning
from cloudlet.guest.landing import CopyLimits
from cloudlet.host.kvm import AccelVerdict
from cloudlet.images.store import HOST_ARCH, Image, Progress
from cloudlet.spec import names
from cloudlet.spec.instance import (
    LOCAL_ZONE,
    BackupPolicy,
    FirewallSpec,
    InstanceSpec,
    NetworkSpec,
)
from cloudlet.spec.machine_types import resolve_shape
from cloudlet.spec.states import LIVE_STATES, STARTABLE_STATES, VMState
from cloudlet.spec.units import format_size
from cloudlet.store.database import Database
from cloudlet.store.models import EventRow, InstanceRow, LicenceRow, OperationRow

if TYPE_CHECKING:
    from cloudlet.engine.process_vms import RunningProcessVM
    from cloudlet.spec.process import ProcessSpec

_T = TypeVar("_T")
HOST_LOCK = locks.HOST_KEY
NO_BACKUP = BackupPolicy()


@dataclass(frozen=True)
class CreateRequest:
    """The create command's inputs, before validation."""

    name: str
    image: str = "tiny"
    type: str | None = None
    cpus: int | None = None
    memory: int | None = None
    disk_size: int | None = None
    restrict_network: bool = False
    network: str = "nat"  # nat, none or a virtual network (spec files, the wizard)
    networks: tuple[str, ...] = ()  # --network, repeatable: nat, none and virtual networks
    arch: str | None = None
    profile: str = "modern"
    user: str | None = None
    ssh_keys: tuple[Path, ...] = ()
    user_data: Path | None = None
    iso: Path | None = None
    wait_cloud_init: bool = False
    location: str = LOCAL_ZONE
    ssh_key_lines: tuple[str, ...] = ()  # public keys given as text (spec files)
    user_data_text: str | None = None  # the user's #cloud-config given as text
    containers: bool = False
    volumes: tuple[int, ...] = ()
    inbound_ports: tuple[int, ...] = ()
    backup: BackupPolicy = NO_BACKUP
    api_access: bool = False


@dataclass(frozen=True)
class ActionResult:
    """An instance after an action, and whether the action changed anything."""

    instance: InstanceView
    changed: bool
    message: str


class Engine:
    """The use cases. Frontends call these and nothing below."""

    def __init__(self, settings: Settings, deps: EngineDeps, db: Database) -> None:
        self.ctx = EngineContext(settings, deps, db)
        self.networks = network_ops.NetworkOps(self.ctx)
        self.settings = settings
        self.paths = settings.paths
        self.deps = deps
        self.driver = deps.driver
        self.db = db
        self.agent_timeout = self.ctx.agent_timeout

    @property
    def notices(self) -> list[str]:
        """What the calls of this thread (or of the open collect block) want said."""
        return self.ctx.notices

    def collect_notices(self) -> AbstractContextManager[list[str]]:
        """Scope notices to the calls inside the block (one request of a server)."""
        return self.ctx.notices_store.collect()

    # ------------------------------------------------------------------ helpers
    # Thin delegates to the shared context while the services move onto it.
    def _lock(self, name: str, wait: float = locks.DEFAULT_WAIT) -> AbstractContextManager[None]:
        return self.ctx.lock(name, wait)

    def _row(self, name: str) -> InstanceRow:
        return self.ctx.row(name)

    def _set_state(self, instance_id: str, state: VMState, error: str | None = None) -> None:
        self.ctx.set_state(instance_id, state, error)

    def _event(self, name: str, kind: str, message: str, op_id: int | None = None) -> None:
        self.ctx.event(name, kind, message, op_id)

    def _operation(self, row: InstanceRow, kind: str) -> AbstractContextManager[int]:
        return self.ctx.operation(row, kind)

    def _finish_op(self, op_id: int, status: str, error: str | None = None) -> None:
        self.ctx.finish_operation(op_id, status, error)

    def _view(self, row: InstanceRow) -> InstanceView:
        runtime = self.driver.runtime(row.id) if row.state in LIVE_STATES else None
        spec = InstanceSpec.model_validate_json(row.spec_json)
        instance_dir = self.paths.instance_dir(row.id)
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
            pid=runtime.pid if runtime else None,
            created_at=row.created_at,
            last_error=row.last_error,
            kind=row.kind,
            addresses=addresses.of(self.db, row.id, user_mode=spec.network.mode == "nat"),
            network={
                **spec.network.model_dump(),
                "restrict": spec.network.restrict or self.settings.force_restrict_network,
            },
            paths={
                "disk": str(storage_ops.active_disk(self.ctx, row.id)),
                "serial_log": str(instance_dir / "serial.log"),
                "image": row.image_path,
                "runtime": str(self.paths.runtime_dir(row.id)),
            },
        )

    def _capacity(self, exclude: str | None = None) -> capacity_mod.Capacity:
        return launch.capacity(self.ctx, exclude)

    # ------------------------------------------------------------------ reconcile
    def _reconcile(self, row: InstanceRow) -> InstanceRow:
        return vm_state.reconcile(self.ctx, row)

    def _reconcile_locked(self, row: InstanceRow) -> InstanceRow:
        return vm_state.reconcile_locked(self.ctx, row)

    def recover(self) -> list[str]:
        """Finish or roll back operations whose process died (lock free, still 'running')."""
        notes: list[str] = []
        with self.db.session() as s:
            ops = s.scalars(select(OperationRow).where(OperationRow.status == "running")).all()
        for op in ops:
            if not locks.is_free(self.paths.locks, op.instance_name):
                continue
            with locks.hold(self.paths.locks, op.instance_name, wait=5):
                with self.db.session() as s:
                    fresh = s.get(OperationRow, op.id)
                    if fresh is None or fresh.status != "running":
                        continue
                    row = s.get(InstanceRow, op.instance_id)
                if op.kind == "run" and row is not None:
                    self._remove_everything(row)
                    status = "rolled_back"
                    notes.append(f"removed process VM {op.instance_name}: its command is gone")
                elif op.kind in ("create", "delete") and row is not None:
                    self._remove_everything(row)
                    status = "rolled_back" if op.kind == "create" else "done"
                    notes.append(
                        f"{'rolled back' if op.kind == 'create' else 'finished'} the interrupted "
                        f"{op.kind} of {op.instance_name}"
                    )
                elif row is not None:
                    # start, stop, pause, resume: the truth is what the driver sees now
                    self._settle_interrupted(row)
                    status = "interrupted"
                    notes.append(f"settled the interrupted {op.kind} of {op.instance_name}")
                else:
                    status = "interrupted"
                self._finish_op(op.id, status, "the process running it died")
                self._event(op.instance_name, "recovered", notes[-1] if notes else status, op.id)
        notes += self._reap_process_vms()
        notes += sweep_staging(self.ctx)
        return notes

    def _reap_process_vms(self) -> list[str]:
        """Process VMs whose command is gone (and not just finishing up under its lock)."""
        from cloudlet.engine.process_vms import owner_alive

        with self.db.session() as s:
            rows = s.scalars(select(InstanceRow).where(InstanceRow.kind == "process")).all()
        notes = []
        for row in rows:
            if owner_alive(row) or not locks.is_free(self.paths.locks, row.name):
                continue
            with locks.hold(self.paths.locks, row.name, wait=5):
                self._remove_everything(row)
            notes.append(f"removed process VM {row.name}: its command is gone")
        return notes

    def _settle_interrupted(self, row: InstanceRow) -> None:
        vm_state.settle_interrupted(self.ctx, row)

    def _remove_everything(self, row: InstanceRow) -> None:
        teardown.remove_everything(self.ctx, row)

    # ------------------------------------------------------------------ reads
    def instances(self, *, include_process: bool = False) -> list[InstanceView]:
        """System VMs; process VMs (cloudlet run) too when asked."""
        query = select(InstanceRow).order_by(InstanceRow.name)
        if not include_process:
            query = query.where(InstanceRow.kind == "system")
        with self.db.session() as s:
            rows = s.scalars(query).all()
        return [self._view(self._reconcile(r)) for r in rows]

    def show(self, name: str) -> InstanceView:
        return self._view(self._reconcile(self._row(name)))

    def host(self, *, probe: bool = True) -> HostView:
        cap = self._capacity()
        accel, reason = "unknown", "not probed yet: the first VM start probes KVM"
        if probe:
            image = self.deps.images.get("tiny")
            verdict = self.deps.accel(image)
            accel, reason = verdict.accel, verdict.reason
        with self.db.session() as s:
            rows = s.scalars(select(InstanceRow)).all()
        return HostView(
            accel=accel,
            accel_reason=reason,
            qemu_version=self.deps.hypervisor_version(),
            driver=self.driver.name,
            host_cpus=cap.host_cpus,
            host_memory=cap.host_memory,
            cpu_limit=cap.cpu_limit,
            memory_limit=cap.memory_limit,
            cpus_used=cap.cpus_used,
            memory_used=cap.memory_used,
            instances=len(rows),
            running=sum(1 for r in rows if r.state == VMState.RUNNING),
            home=str(self.paths.home),
            arches={
                arch: (accel if arch == HOST_ARCH else "tcg (emulated)")
                for arch in sorted(self.deps.arches())
            },
            qemu_user=self.driver.process_user(),
        )

    def serial_log(self, name: str) -> Path:
        row = self._row(name)
        return self.paths.instance_dir(row.id) / "serial.log"

    def console_socket(self, name: str) -> Path:
        row = self._reconcile(self._row(name))
        self._require_state(row, {VMState.RUNNING, VMState.PAUSED}, "attach to its console")
        runtime = self.driver.runtime(row.id)
        assert runtime is not None
        return runtime.console_socket

    # ------------------------------------------------------------------ create
    def create(
        self, req: CreateRequest, *, start: bool = True, wait: bool = True,
        progress: Progress | None = None,
    ) -> InstanceView:  # fmt: skip
        """Validate everything first, then record, make the disk, and boot."""
        names.vm_name(req.name)
        if req.iso is None:
            names.image_name(req.image)
        if req.user is not None:
            names.login_user(req.user)
        shape = resolve_shape(req.type, req.cpus, req.memory)
        mode, nics = network_ops.split_networks(req.networks or (req.network,))
        self._ensure_name_free(req.name)
        if req.location != LOCAL_ZONE:
            raise InvalidInput(
                f"unknown location {req.location!r}",
                hint=f"this host's zone is {LOCAL_ZONE!r} (the only one for now)",
            )
        for port in req.inbound_ports:
            if not 1 <= port <= 65535:
                raise InvalidInput(f"invalid port {port}", hint="open ports from 1 to 65535")
        if req.profile not in ("modern", "legacy"):
            raise InvalidInput(f"unknown profile {req.profile!r}", hint="use modern or legacy")
        if req.iso is not None:
            if req.disk_size is None:
                raise InvalidInput(
                    "an install from ISO needs an empty disk size",
                    hint="add --disk-size, such as --disk-size 20G",
                )
            image = self._installer_image(req.iso, progress)
        else:
            image = self.deps.images.get(req.image, progress=progress, arch=req.arch)
        self._check_arch(image.arch, req.profile)
        if req.containers and not image.cloud_init:
            raise InvalidInput(
                f"image {image.name} has no cloud-init, so a container runtime cannot be installed",
                hint="use an image with cloud-init, such as debian-12, or drop --containers",
            )
        if req.disk_size is not None and req.disk_size < image.min_disk_bytes:
            raise InvalidInput(
                f"disk size {format_size(req.disk_size)} is smaller than image {image.name} "
                f"({format_size(image.min_disk_bytes)})",
                hint=f"use --disk-size {format_size(image.min_disk_bytes).replace(' ', '')} "
                "or more",
            )
        check_disk_size(self, req.name, max(req.disk_size or 0, image.min_disk_bytes))
        plan = access_mod.plan_access(
            image,
            user=req.user,
            ssh_keys=req.ssh_keys,
            user_data_file=req.user_data,
            keys_dir=self.paths.home / "keys",
            ssh_key_lines=req.ssh_key_lines,
            user_data_text=req.user_data_text,
        )
        volumes = storage_ops.StorageOps(self)
        if req.volumes:
            volumes.check_new_vm_volumes(req.name, req.volumes)
        if start:
            licensing.check_host_allowed(image, apple_hardware=licensing.host_is_apple_hardware())
            self._check_seats(image)
            self._capacity().check(shape.cpus, shape.memory, name=req.name)
        network_ops.check_networks(self.ctx, nics)
        network = NetworkSpec(mode=mode, restrict=req.restrict_network, nics=nics)  # type: ignore[arg-type]
        spec = InstanceSpec(
            name=req.name,
            image=image.name,
            type=shape.name,
            cpus=shape.cpus,
            memory=shape.memory,
            disk_size=req.disk_size,
            arch=image.arch,  # type: ignore[arg-type]
            network=network,
            profile=req.profile,  # type: ignore[arg-type]
            access=plan.access,
            user_data=plan.user_data,
            install_iso=image.name if image.install_iso else None,
            location=req.location,
            containers=req.containers,
            volumes=req.volumes,
            firewall=FirewallSpec(inbound_ports=req.inbound_ports),
            backup=req.backup,
            api_access=req.api_access,
        )
        ssh_port = (
            ports.ssh_port(self.db) if network.mode == "nat" and network.ssh_forward else None
        )
        with self._lock(req.name):
            self._ensure_name_free(req.name)
            row = InstanceRow(
                id=str(uuid.uuid4()),
                name=req.name,
                state=VMState.CREATING.value,
                spec_json=spec.model_dump_json(),
                image=image.name,
                image_path=str(image.path),
                type_name=shape.name,
                cpus=shape.cpus,
                memory=shape.memory,
                disk_size=req.disk_size or image.min_disk_bytes,
                arch=spec.arch,
                location=spec.location,
                ssh_port=ssh_port,
            )
            with self.db.session() as s:
                s.add(row)
            made: list[str] = []
            try:
                # One operation from the row to the first boot: a create killed at any
                # point is rolled back whole by the next command.
                with self._operation(row, "create") as op_id:
                    instance_dir = self.paths.instance_dir(row.id)
                    instance_dir.mkdir(parents=True)
                    network_ops.allocate(self.ctx, row.id, nics)
                    disk = instance_dir / "disk.qcow2"
                    if image.install_iso is not None:
                        assert req.disk_size is not None
                        self.deps.disks.create_blank(disk, req.disk_size)
                    else:
                        self.deps.disks.create_overlay(image, disk, req.disk_size)
                    if image.cloud_init:
                        access_mod.write_seed(
                            instance_dir / "seed.iso",
                            instance_id=row.id,
                            hostname=row.name,
                            access=plan.access,
                            user_data=access_mod.seed_user_data(spec),
                        )
                    actual = self.deps.disks.virtual_size(disk)
                    with self.db.session() as s:
                        fresh = s.get(InstanceRow, row.id)
                        assert fresh is not None
                        fresh.disk_size = actual
                        fresh.state = VMState.STOPPED.value
                    self._event(row.name, "created", f"created from image {req.image}", op_id)
                    made += volumes.create_for_new_vm(row.id, row.name, req.volumes)
                    if start:
                        self._boot(self._row(req.name), wait=wait, op_id=op_id)
                        if wait and req.wait_cloud_init and image.cloud_init:
                            self._finish_first_boot(self._row(req.name))
            except BaseException:
                volumes.undo_new_vm_volumes(row.id, made)
                self._remove_everything(row)
                raise
        self._note_recorded_only(spec)
        return self.show(req.name)

    def _note_recorded_only(self, spec: InstanceSpec) -> None:
        """Say which answers are only recorded until the features that enforce them land."""
        pending = [
            what
            for what, asked in (
                (
                    "inbound ports (enforced on virtual networks; NAT is reached by port forwards)",
                    spec.firewall.inbound_ports and not spec.network.nics,
                ),
                (
                    "backup policy (run by 'cloudlet backup run-due' from cron until the "
                    "server's scheduler lands)",
                    spec.backup != NO_BACKUP,
                ),
                ("API access (a token once the API server lands)", spec.api_access),
            )
            if asked
        ]
        if pending:
            self.notices.append(f"recorded in {spec.name}'s spec only: {', '.join(pending)}")

    def _accel_for(self, image: Image) -> AccelVerdict:
        return launch.accel_for(self.ctx, image)

    def _check_arch(self, arch: str, profile: str) -> None:
        launch.check_arch(self.ctx, arch, profile)

    def _installer_image(self, iso: Path, progress: Progress | None) -> Image:
        """An installer ISO becomes an image once (after its safety checks), then is reused."""
        from cloudlet.images import importer

        name = "iso-" + "".join(
            c if c.isascii() and c.isalnum() else "-" for c in iso.stem.lower()
        ).strip("-")
        name = name[:63].rstrip("-")
        try:
            return self.deps.images.get(name, progress=progress)
        except NotFound:
            pass
        importer.import_image(
            iso, name, "iso", self.paths.images, progress=None, max_size=image_size_cap(self)
        )
        return self.deps.images.get(name)

    def _finish_first_boot(self, row: InstanceRow) -> None:
        """--wait: cloud-init done, then the guest's SSH host keys pinned.

        With a guest agent both come over the agent; without one, sshd's banner says
        the guest is up and cloud-init's console output gives the host keys.
        """
        image = Image.load(Path(row.image_path))
        known_hosts = self.paths.instance_dir(row.id) / "known_hosts"
        if image.guest_agent:
            access_mod.wait_cloud_init(self.driver, row.id)
            if row.ssh_port is not None:
                access_mod.pin_host_keys(self.driver, row.id, row.ssh_port, known_hosts)
            return
        if row.ssh_port is None:
            raise InvalidInput(
                f"cannot wait for {row.name}: it has neither a guest agent nor SSH over NAT",
                hint="drop --wait",
            )
        access_mod.wait_ssh_banner(
            row.ssh_port,
            access_mod.CLOUD_INIT_TIMEOUT,
            alive=lambda: self.driver.power_state(row.id) == PowerState.RUNNING,
        )
        access_mod.pin_host_keys_from_serial(
            self.paths.instance_dir(row.id) / "serial.log", row.ssh_port, known_hosts
        )

    def _ensure_name_free(self, name: str) -> None:
        vm_state.ensure_name_free(self.ctx, name)

    # ------------------------------------------------------------------ spec changes
    def spec(self, name: str) -> InstanceSpec:
        """The spec a VM was created with (and changed to since)."""
        return InstanceSpec.model_validate_json(self._row(name).spec_json)

    def reshape(
        self, name: str, type_name: str | None, cpus: int | None, memory: int | None
    ) -> ActionResult:
        """Change the machine type (vCPUs, memory) of a VM that is not running."""
        shape = resolve_shape(type_name, cpus, memory)
        with self._lock(name):
            row = self._reconcile_locked(self._row(name))
            if (row.type_name, row.cpus, row.memory) == (shape.name, shape.cpus, shape.memory):
                return ActionResult(self._view(row), False, f"{name} is already {shape.name}")
            self._require_state(row, set(STARTABLE_STATES), "change the machine type of")
            before = f"{row.type_name} ({row.cpus} vCPU, {format_size(row.memory)})"
            after = f"{shape.name} ({shape.cpus} vCPU, {format_size(shape.memory)})"
            with self._operation(row, "reshape") as op_id, self.db.session() as s:
                fresh = s.get(InstanceRow, row.id)
                assert fresh is not None
                spec = InstanceSpec.model_validate_json(fresh.spec_json)
                changed = spec.model_copy(
                    update={"type": shape.name, "cpus": shape.cpus, "memory": shape.memory}
                )
                fresh.spec_json = changed.model_dump_json()
                fresh.type_name, fresh.cpus, fresh.memory = shape.name, shape.cpus, shape.memory
                s.add(EventRow(instance_name=name, kind="reshaped", message=f"{before} -> {after}",
                               operation_id=op_id))  # fmt: skip
            return ActionResult(self.show(name), True, f"{name}: {before} -> {after}")

    def update_spec(self, name: str, changes: dict[str, object]) -> ActionResult:
        """Record fields that need no action on the VM now (volumes, firewall, backup ...)."""
        names.vm_name(name)
        allowed = {"volumes", "firewall", "backup", "api_access"}
        if not changes.keys() <= allowed:
            raise InvalidInput(
                f"cannot change {', '.join(sorted(changes.keys() - allowed))} of {name}",
                hint="those are fixed once created: delete and re-create the VM",
            )
        with self._lock(name), self.db.session() as s:
            row = s.scalar(select(InstanceRow).where(InstanceRow.name == name))
            if row is None:
                raise NotFound(f"no VM named {name!r}", hint="run 'cloudlet list'")
            spec = InstanceSpec.model_validate_json(row.spec_json)
            # validate through the model: model_copy alone would skip the field checks
            new = InstanceSpec.model_validate({**spec.model_dump(), **changes})
            row.spec_json = new.model_dump_json()
        if "firewall" in changes and new.network.nics:
            self.networks.sync_locked()  # enforce the new rules now
        return ActionResult(self.show(name), new != spec, f"{name}: {', '.join(sorted(changes))}")

    # ------------------------------------------------------------------ power
    def _require_state(self, row: InstanceRow, allowed: set[VMState], action: str) -> None:
        self.ctx.require_state(row, allowed, action)

    def start(self, name: str, *, wait: bool = True) -> ActionResult:
        with self._lock(name):
            row = self._reconcile_locked(self._row(name))
            if row.state == VMState.RUNNING:
                return ActionResult(self._view(row), False, f"{name} is already running")
            self._require_state(row, set(STARTABLE_STATES), "start")
            with self._operation(row, "start") as op_id:
                self._boot(row, wait=wait, op_id=op_id)
            return ActionResult(self.show(name), True, f"{name} is running")

    def _boot(self, row: InstanceRow, *, wait: bool, op_id: int, state: Path | None = None) -> None:
        launch.boot(self.ctx, row, wait=wait, op_id=op_id, state=state)

    def stop(self, name: str, *, force: bool = False, timeout: float | None = None) -> ActionResult:
        """ACPI power button, wait, then quit/kill; ``force`` skips the wait."""
        timeout = self.settings.stop_timeout if timeout is None else timeout
        with self._lock(name):
            row = self._reconcile_locked(self._row(name))
            if row.state in (VMState.STOPPED, VMState.CRASHED, VMState.ERROR):
                return ActionResult(self._view(row), False, f"{name} is already {row.state}")
            self._require_state(row, {VMState.RUNNING, VMState.PAUSED}, "stop")
            self._set_state(row.id, VMState.STOPPING)
            how = "forced"
            with self._operation(row, "stop") as op_id:
                if not force:
                    if row.state == VMState.PAUSED:
                        self.driver.resume(row.id)  # a paused guest cannot see the button
                    # Direct-boot ARM guests have no ACPI power button: ask their agent.
                    image = Image.load(Path(row.image_path))
                    via_agent = row.arch != "x86_64" and image.guest_agent
                    self.driver.request_shutdown(row.id, via_agent=via_agent)
                    if self.driver.wait_shutdown(row.id, timeout):
                        how = "graceful"
                self.driver.force_stop(row.id)
                self.driver.cleanup(row.id)
                self._set_state(row.id, VMState.STOPPED)
                self._event(name, "stopped", f"{how} stop", op_id)
            message = f"{name} stopped" + (
                ""
                if how == "graceful" or force
                else f" (forced: the guest ignored the power button for {timeout:.0f} s)"
            )
            return ActionResult(self.show(name), True, message)

    def restart(self, name: str, *, force: bool = False, wait: bool = True) -> ActionResult:
        self.stop(name, force=force)
        self.start(name, wait=wait)
        return ActionResult(self.show(name), True, f"{name} restarted")

    def pause(self, name: str) -> ActionResult:
        """Freeze the vCPUs; memory stays allocated and counted."""
        return self._freeze(name, pause=True)

    def resume(self, name: str) -> ActionResult:
        return self._freeze(name, pause=False)

    def _freeze(self, name: str, *, pause: bool) -> ActionResult:
        source, target = (VMState.RUNNING, VMState.PAUSED)[:: 1 if pause else -1]
        kind = "pause" if pause else "resume"
        with self._lock(name):
            row = self._reconcile_locked(self._row(name))
            if row.state == target:
                return ActionResult(self._view(row), False, f"{name} is already {target}")
            self._require_state(row, {source}, kind)
            with self._operation(row, kind) as op_id:
                (self.driver.pause if pause else self.driver.resume)(row.id)
                self._set_state(row.id, target)
                self._event(name, f"{kind}d", f"vCPUs {'stopped' if pause else 'running'}", op_id)
            return ActionResult(self.show(name), True, f"{name} {kind}d")

    def delete(self, name: str, *, force: bool = False) -> str:
        """Remove the VM, its overlay, sockets and records; a running VM only with
        ``force`` (then it is stopped at once, no ACPI)."""
        with self._lock(name):
            row = self._reconcile_locked(self._row(name))
            if row.state in LIVE_STATES and not force:
                raise StillRunning(
                    f"{name} is {row.state}",
                    hint="stop it first, or delete it with force (it is stopped at once)",
                )
            storage_ops.check_deletable(self.ctx, row)
            kept = storage_ops.attached_volume_names(self.ctx, row.id)
            with self._operation(row, "delete") as op_id:
                self._set_state(row.id, VMState.DELETING)
                self._remove_everything(row)
                self._event(name, "deleted", "VM and its disk removed", op_id)
        return f"{name} deleted" + (
            f" (volumes kept, now detached: {', '.join(kept)})" if kept else ""
        )

    # ------------------------------------------------------------------ licences
    def _check_seats(self, image: Image, exclude: str | None = None) -> None:
        launch.check_seats(self.ctx, image, exclude)

    def license_add(self, name: str, seats: int) -> dict[str, object]:
        """Register (or change) the seats of a proprietary licence."""
        names.licence_name(name)
        licensing.validate_seats(seats)
        with locks.hold(self.paths.locks, HOST_LOCK, what="host capacity"), self.db.session() as s:
            row = s.get(LicenceRow, name)
            if row is None:
                s.add(LicenceRow(name=name, seats=seats))
            else:
                row.seats = seats
        return {"name": name, "seats": seats, "in_use": launch.seats_in_use(self.ctx, name)}

    def licences(self) -> list[dict[str, object]]:
        with self.db.session() as s:
            rows = s.scalars(select(LicenceRow).order_by(LicenceRow.name)).all()
        return [
            {"name": r.name, "seats": r.seats, "in_use": launch.seats_in_use(self.ctx, r.name)}
            for r in rows
        ]

    # ------------------------------------------------------------------ images
    def images(self) -> list[dict[str, object]]:
        """Local images with the VMs that use each."""
        with self.db.session() as s:
            rows = s.scalars(select(InstanceRow)).all()
        result = []
        for image in self.deps.images.images():
            info = image.describe()
            info["used_by"] = sorted(r.name for r in rows if r.image == image.name)
            result.append(info)
        return result

    def image_show(self, name: str) -> dict[str, object]:
        names.image_name(name)
        for info in self.images():
            if info["name"] == name:
                return info
        raise NotFound(f"unknown image {name!r}", hint="run 'cloudlet image list'")

    def image_build(self, name: str, *, arch: str | None, progress: Progress | None) -> Image:
        names.image_name(name)
        return self.deps.images.get(name, progress=progress, arch=arch)

    def image_delete(self, name: str) -> str:
        """Refused while any VM still uses the image (its disk is their backing file)."""
        names.image_name(name)
        with locks.hold(self.paths.locks, f".image-{name}", what=f"image {name}"):
            with self.db.session() as s:
                users = s.scalars(select(InstanceRow.name).where(InstanceRow.image == name)).all()
            if users:
                raise Conflict(
                    f"image {name} is used by {', '.join(sorted(users))}",
                    hint="delete those VMs first",
                )
            self.deps.images.delete(name)
        return f"image {name} deleted"

    def image_import(
        self,
        path: Path,
        name: str,
        fmt: str,
        *,
        licence: str = "free",
        os_family: str = "linux",
        default_user: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, object]:
        from cloudlet.images import importer

        names.image_name(name)
        names.licence_name(licence)
        if default_user is not None:
            names.login_user(default_user)
        if not path.is_file():
            raise NotFound(f"no file {path}", hint="check the path")
        importer.import_image(
            path, name, fmt, self.paths.images, licence=licence, default_user=default_user,
            os_family=os_family, max_size=image_size_cap(self),
        )  # fmt: skip
        return self.image_show(name)

    def catalog(self) -> list[dict[str, object]]:
        """Official cloud images 'cloudlet image pull' can fetch."""
        from cloudlet.images import catalog

        return [
            {
                "name": e.name,
                "title": e.title,
                "arch": e.arch,
                "licence": e.licence_name or e.licence,
                "default_user": e.default_user,
                "url": e.url,
            }
            for e in (catalog.get_entry(n) for n in catalog.names())
        ]

    def image_pull(
        self, name: str, *, progress: Callable[[int, int | None], None] | None
    ) -> dict[str, object]:
        from cloudlet.images import catalog, importer

        names.image_name(name)
        entry = catalog.get_entry(name)
        importer.pull(
            entry, self.paths.images, self.paths.cache / "downloads", progress,
            max_size=image_size_cap(self),
        )  # fmt: skip
        return self.image_show(name)

    # ------------------------------------------------------------------ access
    def _access(self, name: str) -> tuple[InstanceRow, InstanceSpec, Path]:
        row = self._reconcile(self._row(name))
        self._require_state(row, {VMState.RUNNING}, "connect to")
        spec = InstanceSpec.model_validate_json(row.spec_json)
        if spec.access.user is None or row.ssh_port is None:
            raise Conflict(
                f"{name} has no SSH access (its image has no cloud-init or it has no NAT)",
                hint="use 'cloudlet exec' or 'cloudlet console'",
            )
        known_hosts = self.paths.instance_dir(row.id) / "known_hosts"
        if not known_hosts.exists():
            if Image.load(Path(row.image_path)).guest_agent:
                access_mod.pin_host_keys(self.driver, row.id, row.ssh_port, known_hosts)
            else:
                access_mod.pin_host_keys_from_serial(
                    self.paths.instance_dir(row.id) / "serial.log", row.ssh_port, known_hosts
                )
        return row, spec, known_hosts

    def ssh_argv(self, name: str, command: list[str]) -> list[str]:
        """The OpenSSH client command line that reaches the VM, host key pinned."""
        row, spec, known_hosts = self._access(name)
        assert row.ssh_port is not None
        options = access_mod.ssh_options(spec.access, row.ssh_port, known_hosts)
        return ["ssh", *options, "--", "127.0.0.1", *command]

    def ssh_config(self, name: str) -> str:
        row, spec, known_hosts = self._access(name)
        assert row.ssh_port is not None
        return access_mod.ssh_config(name, spec.access, row.ssh_port, known_hosts)

    def copy_to(
        self, name: str, src: Path, dest: str, *, progress: Callable[[int, int], None] | None
    ) -> int:
        """Copy a host file into the guest through the driver (no network needed)."""
        row = self._reconcile(self._row(name))
        self._require_state(row, {VMState.RUNNING}, "copy to")
        if not src.is_file():
            raise NotFound(f"no file {src} on this host", hint="check the path")
        return self.driver.copy_in(row.id, src, dest, progress=progress)

    def copy_from(
        self, name: str, src: str, dest: Path, *, progress: Callable[[int, int], None] | None
    ) -> int:
        row = self._reconcile(self._row(name))
        self._require_state(row, {VMState.RUNNING}, "copy from")
        return self.driver.copy_out(row.id, src, dest, progress=progress, limits=self.copy_limits)

    @property
    def copy_limits(self) -> CopyLimits:
        """How much a copy out of a guest may write (config.toml [guest])."""
        return CopyLimits(self.settings.copy_max_bytes, self.settings.copy_max_entries)

    def wait_ready(self, name: str) -> None:
        """--wait on an existing VM: cloud-init done and host keys pinned."""
        row = self._reconcile(self._row(name))
        self._require_state(row, {VMState.RUNNING}, "wait for")
        self._finish_first_boot(row)

    # ------------------------------------------------------------------ process VMs
    def run(self, spec: ProcessSpec, attach: Callable[[RunningProcessVM], _T]) -> _T:
        """cloudlet run: a throw-away VM for one program; ``attach`` does the I/O."""
        from cloudlet.engine.process_vms import ProcessVMs

        return ProcessVMs(self).run(spec, attach)

    # ------------------------------------------------------------------ guest
    def exec(
        self, name: str, argv: list[str], *, stdin: bytes | None = None, timeout: float = 600.0
    ) -> ExecResult:
        if not argv:
            raise InvalidInput("no command given", hint="use: cloudlet exec NAME -- COMMAND [ARGS]")
        row = self._reconcile(self._row(name))
        self._require_state(row, {VMState.RUNNING}, "run a command in")
        return self.driver.exec(row.id, argv, stdin=stdin, timeout=timeout)

    def guest_info(self, name: str) -> GuestInfo:
        row = self._reconcile(self._row(name))
        self._require_state(row, {VMState.RUNNING}, "ask the guest agent of")
        return self.driver.guest_info(row.id)

    # ------------------------------------------- what every frontend shows (not the CLI's)
    def serial_log_tail(self, name: str, lines: int | None = None) -> SerialLog:
        """The VM's serial log, or its last ``lines`` lines; no data before a first start."""
        return serial_tail.tail(name, self.serial_log(name), lines)

    def reprobe_host(self) -> HostView:
        """Forget the cached KVM verdict and probe again (after KVM was fixed)."""
        accel_cache.forget(self.paths.home)
        return self.host(probe=True)

    def machine_types(self) -> list[MachineTypeOffer]:
        """The machine types with the share of this host each would take, and their fit."""
        return offers(self.deps.host_cpus, self.deps.host_memory, limits=self._capacity())

    def image_menu(self) -> list[ImageChoice]:
        """The images a new VM can be made from: local, catalog, built on first use."""
        return image_menu_mod.menu(self.images(), self.catalog())
