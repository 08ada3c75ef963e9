"""Creating a VM: validate every answer first, then record, make the disk and boot.

One operation covers everything from the row to the first boot, so a create killed
at any point is rolled back whole by the next command (``recovery``). Volumes asked
for at creation come from the storage service, which the facade hands in as
``NewVMVolumes``; the disk size cap comes in as a callable (see ``image_cap``).
"""

from __future__ import annotations

import uuid
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
from cloudlet.spec.create_checks import check_answers
from cloudlet.spec.document import VMBody
from cloudlet.spec.instance import (
    LOCAL_ZONE,
    BackupPolicy,
    FirewallSpec,
    InstanceSpec,
    NetworkSpec,
)
from cloudlet.spec.machine_types import resolve_shape
from cloudlet.spec.network import split_networks
from cloudlet.spec.states import VMState
from cloudlet.spec.units import format_size
from cloudlet.store.models import InstanceRow

NO_BACKUP = BackupPolicy()


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
        self, name: str, body: VMBody, *, key_files: tuple[Path, ...] = (),
        progress: ProgressSink | None = None, cancel: CancelToken | None = None,
    ) -> None:  # fmt: skip
        """Validate everything first, then record, make the disk, and boot.

        ``body`` is the VM as a spec file's body describes it (its ``state`` says
        whether to boot, its ``wait`` what to wait for); ``key_files`` are the host
        files its SSH keys were read from (a local frontend's), where the private key
        of the first is looked for. ``progress`` hears the phases (the image's stages,
        disk, boot, agent, cloud-init, host keys); a cancelled ``cancel`` removes the
        VM, as a failure does.
        """
        ctx = self.ctx
        check_answers(
            name, image=body.image, iso=body.iso, user=body.access.user, type_name=body.type,
            cpus=body.cpus, memory=body.memory, profile=body.profile, arch=body.arch,
            ports=body.firewall.inbound_ports,
        )  # fmt: skip
        shape = resolve_shape(body.type, body.cpus, body.memory)
        mode, nics = split_networks((body.network, *body.networks))
        vm_state.ensure_name_free(ctx, name)
        _check_request(body)
        start = body.state == "running"
        image = self._image(body, stage_callback(progress))
        check_size(
            f"the disk of {name}",
            max(body.disk_size or 0, image.min_disk_bytes),
            self.size_cap(),
        )
        plan = access_mod.plan_access(
            image,
            user=body.access.user,
            key_files=key_files,
            keys_dir=ctx.paths.home / "keys",
            ssh_key_lines=tuple(body.access.ssh_keys),
            user_data_text=body.user_data,
        )
        volumes = tuple(body.volumes)
        if volumes:
            self.volumes.check_new_vm_volumes(name, volumes)
        if start:
            licensing.check_host_allowed(image, apple_hardware=licensing.host_is_apple_hardware())
            launch.check_seats(ctx, image)
            launch.capacity(ctx).check(shape.cpus, shape.memory, name=name)
        network_rows.check_networks(ctx, nics)
        network = NetworkSpec(mode=mode, restrict=body.restrict_network, nics=nics)  # type: ignore[arg-type]
        spec = InstanceSpec(
            name=name,
            image=image.name,
            type=shape.name,
            cpus=shape.cpus,
            memory=shape.memory,
            disk_size=body.disk_size,
            arch=image.arch,  # type: ignore[arg-type]
            network=network,
            profile=body.profile,
            access=plan.access,
            user_data=plan.user_data,
            install_iso=image.name if image.install_iso else None,
            location=body.location,
            containers=body.containers,
            volumes=volumes,
            firewall=FirewallSpec(inbound_ports=body.firewall.inbound_ports),
            backup=body.backup,
            api_access=body.access.api_access,
        )
        ssh_port = (
            ports.ssh_port(ctx.db, ctx.paths.locks)
            if network.mode == "nat" and network.ssh_forward
            else None
        )
        with ctx.lock(name, cancel=cancel):
            vm_state.ensure_name_free(ctx, name)
            row = InstanceRow(
                id=str(uuid.uuid4()),
                name=name,
                state=VMState.CREATING.value,
                spec_json=spec.model_dump_json(),
                image=image.name,
                image_path=str(image.path),
                type_name=shape.name,
                cpus=shape.cpus,
                memory=shape.memory,
                disk_size=body.disk_size or image.min_disk_bytes,
                arch=spec.arch,
                location=spec.location,
                ssh_port=ssh_port,
            )
            with ctx.db.session() as s:
                s.add(row)
            self._build(body, row, spec, image, progress=progress, cancel=cancel)
        self._note_recorded_only(spec)

    def _image(self, req: VMBody, progress: Progress | None) -> Image:
        """The image asked for (an installer ISO becomes one), checked against the request."""
        if req.iso is not None:
            if req.disk_size is None:
                raise InvalidInput(
                    "an install from ISO needs an empty disk size",
                    hint="give a disk size, such as 20G",
                )
            image = Images(self.ctx, self.size_cap).installer_image(Path(req.iso), progress)
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
        self, req: VMBody, row: InstanceRow, spec: InstanceSpec, image: Image, *,
        progress: ProgressSink | None, cancel: CancelToken | None,
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
                made += self.volumes.create_for_new_vm(row.id, row.name, spec.volumes)
                if req.state == "running":
                    launch.boot(ctx, ctx.row(row.name), wait=req.wait != "none", op_id=op_id,
                                progress=progress, cancel=cancel)  # fmt: skip
                    if req.wait == "cloud-init" and image.cloud_init:
                        finish_first_boot(ctx, ctx.row(row.name), progress=progress, cancel=cancel)
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


def _check_request(req: VMBody) -> None:
    """The answers that need nothing but the request to check."""
    if req.user_data_file is not None:
        raise InvalidInput(
            "user_data_file names a file, and the engine takes the user-data itself",
            hint="read the file and give its text as user_data",
        )
    if req.location != LOCAL_ZONE:
        raise InvalidInput(
            f"unknown location {req.location!r}",
            hint=f"this host's zone is {LOCAL_ZONE!r} (the only one for now)",
        )
