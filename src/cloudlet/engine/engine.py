"""The engine facade: the one object frontends call, delegating to the services.

Each use case lives in a service with one concern that takes the shared
``EngineContext`` (creation, lifecycle, images, licences, host, recovery, guest
access, process runs, networks, storage); this class wires them together and keeps
the public method names the CLI, the API and the tests call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from cloudlet.config import Paths, Settings
from cloudlet.driver.base import Driver, ExecResult, GuestInfo, GuestTerminal
from cloudlet.engine import (
    call_options,
    instance_view,
    locks,
    power,
    recovery,
)
from cloudlet.engine.backups import BackupService
from cloudlet.engine.context import EngineContext
from cloudlet.engine.creation import Creation
from cloudlet.engine.deps import EngineDeps
from cloudlet.engine.events import EventFeed
from cloudlet.engine.guest_access import GuestAccess, ShellAccess
from cloudlet.engine.host_info import HostInfo
from cloudlet.engine.idempotency import IdempotencyRecords
from cloudlet.engine.image_cap import image_size_cap
from cloudlet.engine.image_menu import ImageChoice
from cloudlet.engine.image_views import CatalogEntryView, ImageView, LicenceView
from cloudlet.engine.images import Images
from cloudlet.engine.licences import Licences
from cloudlet.engine.lifecycle import Lifecycle, Outcome, SpecChanges
from cloudlet.engine.network import NetworkService
from cloudlet.engine.operation_records import OperationRecords
from cloudlet.engine.serial_tail import SerialLog
from cloudlet.engine.storage import StorageService
from cloudlet.engine.tokens import Tokens
from cloudlet.engine.type_listing import MachineTypeOffer
from cloudlet.engine.views import ActionResult, Cleanup, Done, HostView, InstanceView
from cloudlet.guest.copy_rules import TreeCopy
from cloudlet.guest.landing import CopyLimits
from cloudlet.images.store import Progress
from cloudlet.progress import CancelToken, ProgressSink, phase
from cloudlet.spec.document import VMBody
from cloudlet.spec.instance import InstanceSpec
from cloudlet.store.database import Database

if TYPE_CHECKING:
    from cloudlet.engine.process_vms import RunningProcessVM
    from cloudlet.spec.process import ProcessSpec

__all__ = ["ActionResult", "Engine", "SpecChanges", "VMBody"]

_T = TypeVar("_T")


class Engine:
    """The use cases. Frontends call these and nothing below."""

    def __init__(self, settings: Settings, deps: EngineDeps, db: Database) -> None:
        self.ctx = ctx = EngineContext(settings, deps, db)
        self.networks = NetworkService(ctx)
        size_cap = functools.partial(image_size_cap, ctx)
        self.lifecycle = Lifecycle(ctx)
        self.storage = StorageService(ctx)
        self.backups = BackupService(ctx, self.storage, self.lifecycle)
        self.creation = Creation(ctx, self.storage, size_cap)
        self.image_service = Images(ctx, size_cap)
        self.licence_service = Licences(ctx)
        self.host_info = HostInfo(ctx)
        self.guest = GuestAccess(ctx)
        self.tokens = Tokens(ctx)
        self.operations = OperationRecords(ctx)
        self.events = EventFeed(ctx)
        self.idempotency = IdempotencyRecords(ctx)

    # The shared parts live in the context, so a change here reaches every service.
    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        self.ctx.settings = value

    @property
    def deps(self) -> EngineDeps:
        return self.ctx.deps

    @deps.setter
    def deps(self, value: EngineDeps) -> None:
        self.ctx.deps = value

    @property
    def paths(self) -> Paths:
        return self.ctx.paths

    @property
    def driver(self) -> Driver:
        return self.ctx.driver

    @property
    def db(self) -> Database:
        return self.ctx.db

    @property
    def agent_timeout(self) -> float:
        return self.ctx.agent_timeout

    @property
    def notices(self) -> list[str]:
        """What the calls of this thread (or of the open collect block) want said."""
        return self.ctx.notices

    def collect_notices(self) -> AbstractContextManager[list[str]]:
        """Scope notices to the calls inside the block (one request of a server)."""
        return self.ctx.notices_store.collect()

    # ------------------------------------------------------------------ helpers
    def _result(self, name: str, outcome: Outcome) -> ActionResult:
        return ActionResult(self.show(name), outcome.changed, outcome.message, outcome.next_steps)

    # ------------------------------------------------------------------ recovery
    def recover(self) -> list[Cleanup]:
        """Finish or roll back operations whose process died (lock free, still 'running')."""
        return recovery.recover(self.ctx)

    # ------------------------------------------------------------------ reads
    def instances(self, *, include_process: bool = False) -> list[InstanceView]:
        """System VMs; process VMs (cloudlet run) too when asked."""
        return instance_view.instances(self.ctx, include_process=include_process)

    def show(self, name: str) -> InstanceView:
        return instance_view.show(self.ctx, name)

    def busy(self, name: str) -> bool:
        """Whether another call holds the VM's lock right now (a server answers "busy"
        at once instead of queueing a request behind it)."""
        return not locks.is_free(self.paths.locks, name)

    def host(self, *, probe: bool = True) -> HostView:
        return self.host_info.host(probe=probe)

    def serial_log(self, name: str) -> Path:
        return self.host_info.serial_log(name)

    def console_socket(self, name: str) -> Path:
        return self.host_info.console_socket(name)

    def serial_log_tail(self, name: str, lines: int | None = None) -> SerialLog:
        """The VM's serial log, or its last ``lines`` lines; no data before a first start."""
        return self.host_info.serial_log_tail(name, lines)

    def reprobe_host(self) -> HostView:
        """Forget the cached KVM verdict and probe again (after KVM was fixed)."""
        return self.host_info.reprobe_host()

    def machine_types(self) -> list[MachineTypeOffer]:
        """The machine types with the share of this host each would take."""
        return self.host_info.machine_types()

    # ------------------------------------------------------------------ create
    def create(
        self, name: str, body: VMBody, *, key_files: tuple[Path, ...] = (),
        progress: ProgressSink | None = None, cancel: CancelToken | None = None,
    ) -> InstanceView:  # fmt: skip
        """Create VM ``name`` as ``body`` (a spec file's VM body) describes it.

        Validate everything first, then record, make the disk, and boot (unless the
        body's state is stopped). ``key_files``: the host files a local frontend read
        the body's SSH keys from (see local_files). ``progress`` hears each phase; a
        cancelled ``cancel`` (default: the call's, see call_options) leaves no VM behind."""
        cancel = call_options.cancel_token(cancel)
        self.creation.create(name, body, key_files=key_files, progress=progress, cancel=cancel)
        return self.show(name)

    # ------------------------------------------------------------------ spec changes
    def spec(self, name: str) -> InstanceSpec:
        """The spec a VM was created with (and changed to since)."""
        return self.lifecycle.spec(name)

    def reshape(
        self, name: str, type_name: str | None, cpus: int | None, memory: int | None
    ) -> ActionResult:
        """Change the machine type (vCPUs, memory) of a VM that is not running."""
        return self._result(name, self.lifecycle.reshape(name, type_name, cpus, memory))

    def update_spec(self, name: str, changes: SpecChanges) -> ActionResult:
        """Record fields that need no action on the VM now (volumes, firewall, backup ...)."""
        return self._result(name, self.lifecycle.update_spec(name, changes.as_dict()))

    # ------------------------------------------------------------------ power
    def start(
        self, name: str, *, wait: bool = True, progress: ProgressSink | None = None,
        cancel: CancelToken | None = None,
    ) -> ActionResult:  # fmt: skip
        """Boot a stopped VM; a cancelled ``cancel`` (or the call's) leaves it stopped."""
        cancel = call_options.cancel_token(cancel)
        outcome = self.lifecycle.start(name, wait=wait, progress=progress, cancel=cancel)
        return self._result(name, outcome)

    def stop(self, name: str, *, force: bool = False, timeout: float | None = None) -> ActionResult:
        """ACPI power button, wait, then quit/kill; ``force`` skips the wait."""
        return power.stop(self.ctx, name, force=force, timeout=timeout)

    def restart(
        self, name: str, *, force: bool = False, wait: bool = True,
        progress: ProgressSink | None = None, cancel: CancelToken | None = None,
    ) -> ActionResult:  # fmt: skip
        cancel = call_options.cancel_token(cancel)
        phase(progress, cancel, "stop")
        self.stop(name, force=force)
        self.start(name, wait=wait, progress=progress, cancel=cancel)
        return ActionResult(self.show(name), True, f"{name} restarted")

    def pause(self, name: str) -> ActionResult:
        """Freeze the vCPUs; memory stays allocated and counted."""
        return self._result(name, self.lifecycle.pause(name))

    def resume(self, name: str) -> ActionResult:
        return self._result(name, self.lifecycle.resume(name))

    def delete(self, name: str, *, force: bool = False) -> Done:
        """Remove the VM and its records; a running VM only with ``force``."""
        return self.lifecycle.delete(name, force=force)

    def check_delete(self, name: str, *, force: bool = False) -> None:
        """What ``delete`` would refuse, raised without changing anything."""
        self.lifecycle.check_delete(name, force=force)

    # ------------------------------------------------------------------ licences
    def license_add(self, name: str, seats: int) -> LicenceView:
        """Register (or change) the seats of a proprietary licence."""
        return self.licence_service.license_add(name, seats)

    def licences(self) -> list[LicenceView]:
        return self.licence_service.licences()

    # ------------------------------------------------------------------ images
    def images(self) -> list[ImageView]:
        """Local images with the VMs that use each."""
        return self.image_service.images()

    def image_show(self, name: str) -> ImageView:
        return self.image_service.image_show(name)

    def image_build(self, name: str, *, arch: str | None, progress: Progress | None) -> ImageView:
        return self.image_service.image_build(name, arch=arch, progress=progress)

    def image_delete(self, name: str) -> Done:
        """Refused while any VM still uses the image (its disk is their backing file)."""
        return self.image_service.image_delete(name)

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
    ) -> ImageView:
        return self.image_service.image_import(
            path, name, fmt, licence=licence, os_family=os_family,
            default_user=default_user, progress=progress,
        )  # fmt: skip

    def catalog(self) -> list[CatalogEntryView]:
        """Official cloud images that can be downloaded (pulled) by name."""
        return self.image_service.catalog()

    def image_pull(
        self, name: str, *, progress: Callable[[int, int | None], None] | None
    ) -> ImageView:
        return self.image_service.image_pull(name, progress=progress)

    def image_menu(self) -> list[ImageChoice]:
        """The images a new VM can be made from: local, catalog, built on first use."""
        return self.image_service.image_menu()

    # ------------------------------------------------------------------ access
    def ssh_argv(self, name: str, command: list[str]) -> list[str]:
        """The OpenSSH client command line that reaches the VM, host key pinned."""
        return self.guest.ssh_argv(name, command)

    def ssh_config(self, name: str) -> str:
        return self.guest.ssh_config(name)

    def copy_to(
        self,
        name: str,
        src: Path,
        dest: str,
        *,
        progress: Callable[[int, int], None] | None,
        owner: str | None = None,
    ) -> int:
        """Copy a host file into the guest through the driver (no network needed); ``~``
        and relative paths are below the login user's home, who owns the file unless
        ``owner`` (USER[:GROUP]) says otherwise."""
        return self.guest.copy_to(name, src, dest, progress=progress, owner=owner)

    def copy_from(
        self, name: str, src: str, dest: Path, *, progress: Callable[[int, int], None] | None
    ) -> int:
        return self.guest.copy_from(name, src, dest, progress=progress)

    def copy_tree_to(
        self,
        name: str,
        src: Path,
        dest: str,
        *,
        progress: Callable[[int, int], None] | None,
        owner: str | None = None,
    ) -> TreeCopy:
        """Copy a host directory tree into the guest, as copy_to does a file."""
        return self.guest.copy_tree_to(name, src, dest, progress=progress, owner=owner)

    def copy_tree_from(
        self, name: str, src: str, dest: Path, *, progress: Callable[[int, int], None] | None
    ) -> TreeCopy:
        """Copy a guest directory tree to the host; what the guest sends is checked."""
        return self.guest.copy_tree_from(name, src, dest, progress=progress)

    @property
    def copy_limits(self) -> CopyLimits:
        """How much a copy out of a guest may write (config.toml [guest])."""
        return self.guest.copy_limits

    def wait_ready(self, name: str) -> None:
        """--wait on an existing VM: cloud-init done and host keys pinned."""
        self.guest.wait_ready(name)

    def exec(
        self,
        name: str,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        timeout: float = 600.0,
        user: str | None = None,
    ) -> ExecResult:
        """Run a command in the guest as ``user`` (default root), with its environment."""
        return self.guest.exec(name, argv, stdin=stdin, timeout=timeout, user=user)

    def shell_access(self, name: str, user: str | None = None) -> ShellAccess:
        """How to open a login shell on the VM: SSH when it has it, else the agent."""
        return self.guest.shell_access(name, user)

    def open_terminal(
        self,
        name: str,
        argv: list[str],
        *,
        user: str | None = None,
        rows: int,
        cols: int,
        term: str | None = None,
    ) -> GuestTerminal:
        """A program (empty argv: a login shell) on a terminal in the guest."""
        return self.guest.open_terminal(name, argv, user=user, rows=rows, cols=cols, term=term)

    def guest_info(self, name: str) -> GuestInfo:
        return self.guest.guest_info(name)

    # ------------------------------------------------------------------ process VMs
    def run(self, spec: ProcessSpec, attach: Callable[[RunningProcessVM], _T]) -> _T:
        """cloudlet run: a throw-away VM for one program; ``attach`` does the I/O."""
        from cloudlet.engine.process_vms import ProcessVMs

        return ProcessVMs(self.ctx).run(spec, attach)
