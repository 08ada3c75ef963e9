"""Reaching into a running guest: SSH, file copy, exec, agent info, first-boot wait.

The helpers that plan access and pin host keys live in ``access``; this service
applies them to one VM's records on the shared context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloudlet.config import Settings
from cloudlet.driver.base import ExecResult, GuestInfo, GuestTerminal, PowerState
from cloudlet.engine import access as access_mod
from cloudlet.engine import guest_target, vm_state
from cloudlet.engine.context import EngineContext
from cloudlet.engine.guest_target import GuestTarget
from cloudlet.errors import Conflict, InvalidInput, NotFound
from cloudlet.guest import run_as
from cloudlet.guest.accounts import GuestOwner
from cloudlet.guest.copy_rules import TreeCopy
from cloudlet.guest.landing import CopyLimits
from cloudlet.images.store import Image
from cloudlet.next_steps import Step, step
from cloudlet.progress import CancelToken, ProgressSink, phase
from cloudlet.spec import names
from cloudlet.spec.instance import InstanceSpec
from cloudlet.spec.states import VMState
from cloudlet.store.models import InstanceRow

# Programs run through the agent run as this user unless another is named.
EXEC_USER = "root"
# A terminal no screen has: refused rather than passed on.
MAX_TERMINAL_SIDE = 10_000
LOOKUP_TIMEOUT = 60.0


@dataclass(frozen=True)
class ShellAccess:
    """How to give the user a login shell on a VM: the OpenSSH command line when the
    VM has SSH (``ssh_argv``), else a terminal through the guest agent as ``user``."""

    user: str
    ssh_argv: list[str] | None = None


def copy_limits(settings: Settings) -> CopyLimits:
    """How much a copy out of a guest may write (config.toml [guest])."""
    return CopyLimits(settings.copy_max_bytes, settings.copy_max_entries)


def finish_first_boot(
    ctx: EngineContext, row: InstanceRow, *, progress: ProgressSink | None = None,
    cancel: CancelToken | None = None,
) -> None:  # fmt: skip
    """--wait: cloud-init done, then the guest's SSH host keys pinned.

    With a guest agent both come over the agent; without one, sshd's banner says
    the guest is up and cloud-init's console output gives the host keys.
    """
    image = Image.load(Path(row.image_path))
    known_hosts = ctx.paths.instance_dir(row.id) / "known_hosts"
    if image.guest_agent:
        phase(progress, cancel, "cloud-init")
        access_mod.wait_cloud_init(ctx.driver, row.id, cancel=cancel)
        if row.ssh_port is not None:
            phase(progress, cancel, "host keys")
            access_mod.pin_host_keys(ctx.driver, row.id, row.ssh_port, known_hosts, cancel=cancel)
        return
    if row.ssh_port is None:
        raise InvalidInput(
            f"cannot wait for {row.name}: it has neither a guest agent nor SSH over NAT",
            hint="create it without waiting for it",
        )
    phase(progress, cancel, "ssh")
    access_mod.wait_ssh_banner(
        row.ssh_port,
        access_mod.CLOUD_INIT_TIMEOUT,
        alive=lambda: ctx.driver.power_state(row.id) == PowerState.RUNNING,
        cancel=cancel,
    )
    access_mod.pin_host_keys_from_serial(
        ctx.paths.instance_dir(row.id) / "serial.log", row.ssh_port, known_hosts
    )


class GuestAccess:
    """SSH, copy, exec and agent queries on running VMs."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def _running(self, name: str, action: str) -> InstanceRow:
        row = vm_state.reconcile(self.ctx, self.ctx.row(name))
        self.ctx.require_state(row, {VMState.RUNNING}, action)
        return row

    def _access(self, name: str) -> tuple[InstanceRow, InstanceSpec, Path]:
        row = self._running(name, "connect to")
        spec = InstanceSpec.model_validate_json(row.spec_json)
        if spec.access.user is None or row.ssh_port is None:
            raise Conflict(
                f"{name} has no SSH access (its image has no cloud-init or it has no NAT)",
                hint="run commands through its guest agent or use its serial console",
                next_steps=[step(Step.VM_EXEC, vm=name), step(Step.VM_CONSOLE, vm=name)],
            )
        instance_dir = self.ctx.paths.instance_dir(row.id)
        known_hosts = instance_dir / "known_hosts"
        if not known_hosts.exists():
            if Image.load(Path(row.image_path)).guest_agent:
                access_mod.pin_host_keys(self.ctx.driver, row.id, row.ssh_port, known_hosts)
            else:
                access_mod.pin_host_keys_from_serial(
                    instance_dir / "serial.log", row.ssh_port, known_hosts
                )
        return row, spec, known_hosts

    def ssh_argv(self, name: str, command: list[str], *, tty: bool = False) -> list[str]:
        """The OpenSSH client command line that reaches the VM, host key pinned
        (``tty``: with a terminal even for a command)."""
        row, spec, known_hosts = self._access(name)
        assert row.ssh_port is not None
        options = access_mod.ssh_options(spec.access, row.ssh_port, known_hosts)
        return ["ssh", *(["-t"] if tty else []), *options, "--", "127.0.0.1", *command]

    def login_user(self, name: str) -> str:
        """The VM's login user: its spec's, else its image's default, else root."""
        return guest_target.login_user(self.ctx.row(name))

    def shell_access(self, name: str, user: str | None = None) -> ShellAccess:
        """A login shell: over SSH as the login user when the VM has SSH and no other
        user is asked for, else through the guest agent's terminal."""
        asked = names.login_user(user) if user is not None else None
        row = self._running(name, "open a shell in")
        spec = InstanceSpec.model_validate_json(row.spec_json)
        wanted = asked or guest_target.login_user(row)
        if wanted == spec.access.user and row.ssh_port is not None:
            return ShellAccess(wanted, self.ssh_argv(name, [], tty=True))
        return ShellAccess(wanted)

    def _account(self, instance_id: str, user: str) -> run_as.GuestAccount:
        """The guest's own record of ``user`` (NotFound when it has none)."""
        result = self.ctx.driver.exec(instance_id, run_as.lookup_argv(user), timeout=LOOKUP_TIMEOUT)
        return run_as.parse_account(user, result.exit_code, result.stdout)

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
        """Run ``argv`` (empty: ``user``'s login shell) on a terminal in the guest,
        as ``user`` (default: the login user for a shell, root for a command), with
        that user's environment. The caller relays the bytes and closes it."""
        for side, value in (("rows", rows), ("columns", cols)):
            if not 1 <= value <= MAX_TERMINAL_SIDE:
                raise InvalidInput(
                    f"a terminal of {value} {side} cannot be given to the guest",
                    hint="resize the terminal",
                )
        asked = names.login_user(user) if user is not None else None
        row = self._running(name, "open a terminal in")
        if asked is None:
            asked = guest_target.login_user(row) if not argv else EXEC_USER
        account = self._account(row.id, asked)
        wrapped = run_as.run_as_argv(account, argv, term=run_as.clean_term(term))
        return self.ctx.driver.open_terminal(row.id, wrapped, rows=rows, cols=cols)

    def ssh_config(self, name: str) -> str:
        row, spec, known_hosts = self._access(name)
        assert row.ssh_port is not None
        return access_mod.ssh_config(name, spec.access, row.ssh_port, known_hosts)

    def _into(
        self, name: str, src: Path, dest: str, owner: str | None
    ) -> tuple[str, str, GuestOwner]:
        """The VM's id, the absolute guest path and the owner of a copy into ``name``."""
        row = self._running(name, "copy to")
        if not src.exists():
            raise NotFound(f"{src} does not exist on this host", hint="check the path")
        target = GuestTarget(self.ctx, row)
        return row.id, target.path(dest), target.owner(owner)

    def _from(self, name: str, src: str) -> tuple[str, str]:
        """The VM's id and the absolute guest path of a copy out of ``name``."""
        row = self._running(name, "copy from")
        return row.id, GuestTarget(self.ctx, row).path(src)

    def copy_to(
        self,
        name: str,
        src: Path,
        dest: str,
        *,
        progress: Callable[[int, int], None] | None,
        owner: str | None = None,
    ) -> int:
        """Copy a host file into the guest through the driver (no network needed).

        ``dest`` may start with ``~`` or be relative (the login user's home, as scp has
        it); the file belongs to ``owner`` (USER[:GROUP]), else to the login user.
        """
        vm, path, who = self._into(name, src, dest, owner)
        return self.ctx.driver.copy_in(vm, src, path, progress=progress, owner=who)

    def copy_from(
        self, name: str, src: str, dest: Path, *, progress: Callable[[int, int], None] | None
    ) -> int:
        vm, path = self._from(name, src)
        return self.ctx.driver.copy_out(vm, path, dest, progress=progress, limits=self.copy_limits)

    def copy_tree_to(
        self,
        name: str,
        src: Path,
        dest: str,
        *,
        progress: Callable[[int, int], None] | None,
        owner: str | None = None,
    ) -> TreeCopy:
        """Copy a host directory (or file) into the guest, as copy_to does a file."""
        vm, path, who = self._into(name, src, dest, owner)
        return self.ctx.driver.copy_tree_in(vm, src, path, progress=progress, owner=who)

    def copy_tree_from(
        self, name: str, src: str, dest: Path, *, progress: Callable[[int, int], None] | None
    ) -> TreeCopy:
        """Copy a guest directory (or file) to the host; the guest is not trusted."""
        vm, path = self._from(name, src)
        return self.ctx.driver.copy_tree_out(
            vm, path, dest, progress=progress, limits=self.copy_limits
        )

    @property
    def copy_limits(self) -> CopyLimits:
        return copy_limits(self.ctx.settings)

    def wait_ready(self, name: str) -> None:
        """--wait on an existing VM: cloud-init done and host keys pinned."""
        finish_first_boot(self.ctx, self._running(name, "wait for"))

    def exec(
        self,
        name: str,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        timeout: float = 600.0,
        user: str | None = None,
    ) -> ExecResult:
        """Run ``argv`` in the guest as ``user`` (default root) with that user's HOME,
        USER, LOGNAME, SHELL and PATH; its output and exit code come back."""
        if not argv:
            raise InvalidInput(
                "no command given",
                hint="name the program to run and its arguments",
                next_steps=[step(Step.VM_EXEC, vm=name)],
            )
        who = names.login_user(user) if user is not None else EXEC_USER
        row = self._running(name, "run a command in")
        account = self._account(row.id, who)
        wrapped = run_as.run_as_argv(account, argv)
        return self.ctx.driver.exec(row.id, wrapped, stdin=stdin, timeout=timeout)

    def guest_info(self, name: str) -> GuestInfo:
        row = self._running(name, "ask the guest agent of")
        return self.ctx.driver.guest_info(row.id)
