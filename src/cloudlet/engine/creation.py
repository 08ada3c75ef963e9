"""Creating a VM: validate every answer first, then record, make the disk and boot.

One operation covers everything from the row to the first boot, so a create killed
at any point is rolled back whole by the next command (``recovery``). Volumes asked
for at creation come from the storage service, which the facade hands in as
``NewVMVolumes``; the disk size cap comes in as a callable (see ``image_cap``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cloudlet.engine import access as access_mod
from cloudlet.engine import launch, licensing, network_rows, ports, teardown, vm_state
from cloudlet.engine.context import EngineContext
from cloudlet.engine.guest_access import finish_first_boot
from cloudlet.engine.image_lookup import get_image
from cloudlet.engine.images import Images, SizeCap
from cloudlet.errors import InvalidInput
from cloudlet.images.importer import check_size
from cloudlet.images.store import Image, Progress
from cloudlet.progress import CancelToken, ProgressSink, phase, stage_callback
from cloudlet.spec import names
from cloudlet.spec.instance import (
    LOCAL_ZONE,
    BackupPolicy,
    FirewallSpec,
    InstanceSpec,
    NetworkSpec,
)
from cloudlet.spec.machine_types import resolve_shape
from cloudlet.spec.states import VMState
from cloudlet.spec.units import format_size
from cloudlet.store.models import InstanceRow

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


class NewVMVolumes(Protocol):
    """What a create needs of the storage service: the volumes of a new VM."""

    def check_new_vm_volumes(self, vm: str, sizes: tuple[int, ...]) -> None: ...

    def create_for_new_vm(self, instance_id: str, vm: str, sizes: tuple[int, ...]) -> list[str]: ...

    def undo_new_vm_volumes(self, instance_id: str, made: list[str]) -> None: ...


class Creation:
    """The create use case on the shared context."""

    def __init__(self, ctx: EngineContext, volumes: NewVMVolumes, size_cap: SizeCap) -> None:
        self.ctx = ctx
        self.volumes = volumes
        self.size_cap = size_cap

    def create(
        self, req: CreateRequest, *, start: bool = True, wait: bool = True,
        progress: ProgressSink | None = None, cancel: CancelToken | None = None,
    ) -> None:  # fmt: skip
        """Validate everything first, then record, make the disk, and boot.

        ``progress`` hears the phases (the image's stages, disk, boot, agent,
        cloud-init, host keys); a cancelled ``cancel`` removes the VM, as a failure does.
        """
        ctx = self.ctx
        names.vm_name(req.name)
        if req.iso is None:
            names.image_name(req.image)
        if req.user is not None:
            names.login_user(req.user)
        shape = resolve_shape(req.type, req.cpus, req.memory)
        mode, nics = network_rows.split_networks(req.networks or (req.network,))
        vm_state.ensure_name_free(ctx, req.name)
        _check_request(req)
        image = self._image(req, stage_callback(progress))
        check_size(
            f"the disk of {req.name}",
            max(req.disk_size or 0, image.min_disk_bytes),
            self.size_cap(),
        )
        plan = access_mod.plan_access(
            image,
            user=req.user,
            ssh_keys=req.ssh_keys,
            user_data_file=req.user_data,
            keys_dir=ctx.paths.home / "keys",
            ssh_key_lines=req.ssh_key_lines,
            user_data_text=req.user_data_text,
        )
        if req.volumes:
            self.volumes.check_new_vm_volumes(req.name, req.volumes)
        if start:
            licensing.check_host_allowed(image, apple_hardware=licensing.host_is_apple_hardware())
            launch.check_seats(ctx, image)
            launch.capacity(ctx).check(shape.cpus, shape.memory, name=req.name)
        network_rows.check_networks(ctx, nics)
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
            ports.ssh_port(ctx.db, ctx.paths.locks)
            if network.mode == "nat" and network.ssh_forward
            else None
        )
        with ctx.lock(req.name, cancel=cancel):
            vm_state.ensure_name_free(ctx, req.name)
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
            with ctx.db.session() as s:
                s.add(row)
            self._build(req, row, spec, image, start=start, wait=wait, progress=progress,
                        cancel=cancel)  # fmt: skip
        self._note_recorded_only(spec)

    def _image(self, req: CreateRequest, progress: Progress | None) -> Image:
        """The image asked for (an installer ISO becomes one), checked against the request."""
        if req.iso is not None:
            if req.disk_size is None:
                raise InvalidInput(
                    "an install from ISO needs an empty disk size",
                    hint="give a disk size, such as 20G",
                )
            image = Images(self.ctx, self.size_cap).installer_image(req.iso, progress)
        else:
            image = get_image(self.ctx.deps.images, req.image, progress=progress, arch=req.arch)
        launch.check_arch(self.ctx, image.arch, req.profile)
        if req.containers and not image.cloud_init:
            raise InvalidInput(
                f"image {image.name} has no cloud-init, so a container runtime cannot be installed",
                hint="use an image with cloud-init, such as debian-12, or do without containers",
            )
        if req.disk_size is not None and req.disk_size < image.min_disk_bytes:
            raise InvalidInput(
                f"disk size {format_size(req.disk_size)} is smaller than image {image.name} "
                f"({format_size(image.min_disk_bytes)})",
                hint=f"give a disk size of {format_size(image.min_disk_bytes).replace(' ', '')} "
                "or more",
            )
        return image

    def _build(
        self, req: CreateRequest, row: InstanceRow, spec: InstanceSpec, image: Image, *,
        start: bool, wait: bool, progress: ProgressSink | None, cancel: CancelToken | None,
    ) -> None:  # fmt: skip
        """Everything from the recorded row to the first boot, undone whole on failure."""
        ctx = self.ctx
        made: list[str] = []
        try:
            with ctx.operation(row, "create") as op_id:
                phase(progress, cancel, "disk")
                instance_dir = ctx.paths.instance_dir(row.id)
                instance_dir.mkdir(parents=True)
                network_rows.allocate(ctx, row.id, spec.network.nics)
                disk = instance_dir / "disk.qcow2"
                if image.install_iso is not None:
                    assert req.disk_size is not None
                    ctx.deps.disks.create_blank(disk, req.disk_size)
                else:
                    ctx.deps.disks.create_overlay(image, disk, req.disk_size)
                if image.cloud_init:
                    access_mod.write_seed(
                        instance_dir / "seed.iso",
                        instance_id=row.id,
                        hostname=row.name,
                        access=spec.access,
                        user_data=access_mod.seed_user_data(spec),
                    )
                actual = ctx.deps.disks.virtual_size(disk)
                with ctx.db.session() as s:
                    fresh = s.get(InstanceRow, row.id)
                    assert fresh is not None
                    fresh.disk_size = actual
                    fresh.state = VMState.STOPPED.value
                ctx.event(row.name, "created", f"created from image {req.image}", op_id)
                made += self.volumes.create_for_new_vm(row.id, row.name, req.volumes)
                if start:
                    launch.boot(ctx, ctx.row(req.name), wait=wait, op_id=op_id,
                                progress=progress, cancel=cancel)  # fmt: skip
                    if wait and req.wait_cloud_init and image.cloud_init:
                        finish_first_boot(ctx, ctx.row(req.name), progress=progress, cancel=cancel)
        except BaseException:
            self.volumes.undo_new_vm_volumes(row.id, made)
            teardown.remove_everything(ctx, row)
            raise

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
                    "backup policy (made when due backups are run, from cron until the "
                    "server's scheduler lands)",
                    spec.backup != NO_BACKUP,
                ),
                ("API access (a token once the API server lands)", spec.api_access),
            )
            if asked
        ]
        if pending:
            self.ctx.notice(f"recorded in {spec.name}'s spec only: {', '.join(pending)}")


def _check_request(req: CreateRequest) -> None:
    """The answers that need nothing but the request to check."""
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
