"""FakeDriver: behaves like the QEMU driver without any process, for engine unit tests.

Its guest understands a handful of commands (nproc, echo, true, false,
``sh -c 'exit N'``, ``cat /proc/meminfo``, ``cat FILE``) so the shared contract tests
can run the same assertions against it and against real QEMU. Its guest's files live in
an in-memory tree (guest_fs.FakeGuestFS) that copies go in and out of.
"""

from __future__ import annotations

import json
import shlex
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudlet.driver.base import (
    DirtyBitmap,
    DiskCopy,
    Driver,
    ExecResult,
    ExtraDisk,
    GuestInfo,
    GuestTerminal,
    HostForward,
    LaunchConfig,
    PowerState,
    RuntimeInfo,
    TapNic,
)
from cloudlet.driver.fake.guest_fs import FakeGuestFS
from cloudlet.driver.fake.terminal import FakeTerminal
from cloudlet.errors import CloudletError, Conflict, GuestError, Timeout
from cloudlet.guest import run_as
from cloudlet.guest.accounts import GuestOwner
from cloudlet.guest.copy_rules import CopyProgress, TreeCopy
from cloudlet.guest.landing import CopyLimits
from cloudlet.progress import CancelToken, check, pause


@dataclass
class FakeVM:
    config: LaunchConfig
    state: PowerState = PowerState.RUNNING
    alive: bool = True
    ignores_acpi: bool = False
    # a hung guest: waits on it block until their timeout (or a cancel), as with QEMU
    hangs: bool = False
    pid: int = 0
    started_at: float = field(default_factory=time.time)
    commands: list[list[str]] = field(default_factory=list)
    # storage: hot-plugged disks (node -> disk, size), the root chain (top first), freeze
    disks: dict[str, tuple[ExtraDisk, int]] = field(default_factory=dict)
    chain: list[Path] = field(default_factory=list)
    frozen: bool = False
    # network: hot-plugged NICs (node -> nic), user-mode port forwards
    nics: dict[str, TapNic] = field(default_factory=dict)
    forwards: set[tuple[str, int]] = field(default_factory=set)
    # memory: what the guest holds in RAM only (a test hook), and whether the VM waits
    # for a saved state (started with ``incoming``)
    ram: dict[str, str] = field(default_factory=dict)
    awaiting_state: bool = False
    # the guest's users (passwd lines by name) and its open terminal sessions
    users: dict[str, str] = field(default_factory=lambda: {"root": "root:x:0:0:root:/root:/bin/sh"})
    terminals: set[int] = field(default_factory=set)


def _file_size(path: Path) -> int:
    """Fake disk files are JSON ({"size": N}); anything else counts as 1 GiB."""
    try:
        return int(json.loads(path.read_text())["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return 1 << 30


class FakeDriver(Driver):
    """VMs are dict entries; "processes" are flags."""

    name = "fake"

    def __init__(self) -> None:
        self.vms: dict[str, FakeVM] = {}
        # Each guest's files, by instance id: like a disk, they outlive a restart.
        self.guest_files: dict[str, FakeGuestFS] = {}
        self.fail_next_start: str | None = None
        self._next_pid = 10_000
        # One engine serves many threads: pids come out unique, a start is all or nothing.
        self._starting = threading.Lock()

    # test hooks -----------------------------------------------------------
    def crash(self, instance_id: str) -> None:
        """Simulate QEMU killed behind our back."""
        self.vms[instance_id].alive = False

    def ignore_acpi(self, instance_id: str) -> None:
        self.vms[instance_id].ignores_acpi = True

    def add_user(self, instance_id: str, passwd_line: str) -> None:
        """Give the guest a user (a passwd line: name:x:uid:gid:gecos:home:shell)."""
        self.vms[instance_id].users[passwd_line.split(":", 1)[0]] = passwd_line

    def hang(self, instance_id: str, hangs: bool = True) -> None:
        """The guest stops answering: wait_agent, wait_shutdown and exec block until their
        timeout or a cancel. Otherwise the fake has no clock and its waits answer at once."""
        self.vms[instance_id].hangs = hangs

    @staticmethod
    def _hung(vm: FakeVM, timeout: float, cancel: CancelToken | None) -> bool:
        """Block while ``vm`` hangs, up to ``timeout``; True if it still hangs then."""
        deadline = time.monotonic() + timeout
        while vm.hangs and (left := deadline - time.monotonic()) > 0:
            pause(cancel, min(left, 0.05))
        return vm.hangs

    # Driver ---------------------------------------------------------------
    def start(self, config: LaunchConfig) -> RuntimeInfo:
        if self.fail_next_start:
            message, self.fail_next_start = self.fail_next_start, None
            raise CloudletError(message)
        with self._starting:
            existing = self.vms.get(config.instance_id)
            if existing is not None and existing.alive:
                raise Conflict("a fake QEMU already runs for this VM")
            self._next_pid += 1
            vm = FakeVM(config=config, pid=self._next_pid, chain=_chain(config.disk))
            if config.incoming:
                vm.state, vm.awaiting_state = PowerState.PAUSED, True
            vm.disks = {d.node: (d, _file_size(d.path)) for d in config.extra_disks}
            vm.nics = {n.node: n for n in config.tap_nics}
            vm.forwards = {(f.proto, f.host_port) for f in config.host_forwards}
            self.vms[config.instance_id] = vm
        info = self.runtime(config.instance_id)
        assert info is not None
        return info

    def runtime(self, instance_id: str) -> RuntimeInfo | None:
        vm = self.vms.get(instance_id)
        if vm is None:
            return None
        run = vm.config.runtime_dir
        return RuntimeInfo(
            instance_id=instance_id,
            pid=vm.pid,
            pid_start=0,
            argv=["fake-qemu", vm.config.name],
            qemu_version="fake",
            qmp_socket=run / "qmp.sock",
            agent_socket=run / "qga.sock",
            console_socket=run / "console.sock",
            serial_log=vm.config.serial_log,
            started_at=vm.started_at,
            accel=vm.config.accel,
        )

    def power_state(self, instance_id: str) -> PowerState:
        vm = self.vms.get(instance_id)
        if vm is None:
            return PowerState.ABSENT
        if not vm.alive:
            return PowerState.GONE
        return vm.state

    def _live(self, instance_id: str) -> FakeVM:
        vm = self.vms.get(instance_id)
        if vm is None or not vm.alive:
            raise Conflict("the VM has no running QEMU process", hint="start it first")
        return vm

    def request_shutdown(self, instance_id: str, *, via_agent: bool = False) -> None:
        vm = self._live(instance_id)
        if (via_agent or not vm.ignores_acpi) and vm.state == PowerState.RUNNING:
            vm.state = PowerState.SHUTDOWN

    def wait_shutdown(
        self, instance_id: str, timeout: float, *, cancel: CancelToken | None = None
    ) -> bool:
        check(cancel)
        vm = self.vms.get(instance_id)
        if vm is not None and vm.alive and vm.state != PowerState.SHUTDOWN:
            self._hung(vm, timeout, cancel)
        return self.power_state(instance_id) in (
            PowerState.SHUTDOWN,
            PowerState.GONE,
            PowerState.ABSENT,
        )

    def force_stop(self, instance_id: str) -> None:
        vm = self.vms.get(instance_id)
        if vm is not None:
            vm.alive = False

    def cleanup(self, instance_id: str) -> None:
        vm = self.vms.get(instance_id)
        if vm is not None and vm.alive:
            raise Conflict("QEMU still runs; stop it before cleaning up")
        self.vms.pop(instance_id, None)

    def pause(self, instance_id: str) -> None:
        self._live(instance_id).state = PowerState.PAUSED

    def resume(self, instance_id: str) -> None:
        vm = self._live(instance_id)
        if vm.awaiting_state:
            raise Conflict("the VM waits for its memory state (restore_state)")
        vm.state = PowerState.RUNNING

    def wait_agent(
        self, instance_id: str, timeout: float, *, cancel: CancelToken | None = None
    ) -> None:
        check(cancel)
        if self._hung(self._live(instance_id), timeout, cancel):
            raise Timeout(f"the guest agent did not answer within {timeout:.0f} s")

    def _agent(self, instance_id: str, command: str) -> FakeVM:
        """A VM whose agent answers: running, not frozen."""
        vm = self._live(instance_id)
        if vm.state != PowerState.RUNNING:
            raise GuestError("the guest agent did not answer (the VM is not running)")
        if vm.frozen:
            raise GuestError(f"guest agent refused {command}: the agent is in frozen state")
        return vm

    def guest_fs(self, instance_id: str) -> FakeGuestFS:
        """The guest's files (also a test hook: put files a guest program would make)."""
        return self.guest_files.setdefault(instance_id, FakeGuestFS())

    def exec(
        self,
        instance_id: str,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        timeout: float,
        cancel: CancelToken | None = None,
    ) -> ExecResult:
        check(cancel)
        vm = self._agent(instance_id, "guest-exec")
        vm.commands.append(argv)
        if self._hung(vm, timeout, cancel):
            raise Timeout(f"{argv[0]} did not finish within {timeout:.0f} s in the guest")
        if argv[:4] == ["sh", "-c", run_as.LOOKUP_SCRIPT, run_as.LOOKUP_NAME]:
            entry = vm.users.get(argv[4]) if len(argv) == 5 else None
            return ExecResult(0, f"{entry}\n".encode()) if entry else ExecResult(2)
        wrapped = run_as.split_run_as(argv)
        if wrapped is not None:
            account, _term, program = wrapped
            return _as_account(account, program) or self.exec(
                instance_id, program or [account.shell], stdin=stdin, timeout=timeout
            )
        if argv[:1] == ["cat"] and len(argv) == 2 and argv[1].startswith("/sys/block/vd"):
            return _fake_block_size(vm, argv[1])
        if argv[:1] == ["cat"] and len(argv) == 2 and argv[1].startswith("/"):
            data = self.guest_fs(instance_id).read(argv[1])
            if data is not None:
                return ExecResult(0, data)
        return _fake_guest(vm.config, argv, stdin)

    def open_terminal(
        self, instance_id: str, argv: list[str], *, rows: int, cols: int
    ) -> GuestTerminal:
        vm = self._agent(instance_id, "guest-exec")
        vm.commands.append(argv)

        def run(words: list[str]) -> ExecResult:
            return self.exec(instance_id, words, timeout=60)

        def closed() -> None:
            vm.terminals.discard(id(term))

        term = FakeTerminal(argv, run, closed)
        vm.terminals.add(id(term))
        return term

    def guest_info(self, instance_id: str) -> GuestInfo:
        vm = self._live(instance_id)
        return GuestInfo(agent_version="fake", os_name="fake OS", hostname=vm.config.name)

    def copy_in(
        self,
        instance_id: str,
        src: Path,
        dest: str,
        *,
        progress: CopyProgress | None = None,
        mode: int | None = None,
        owner: GuestOwner | None = None,
    ) -> int:
        self._agent(instance_id, "guest-file-open")
        return self.guest_fs(instance_id).copy_in(src, dest, progress, mode, owner)

    def copy_out(
        self,
        instance_id: str,
        src: str,
        dest: Path,
        *,
        progress: CopyProgress | None = None,
        limits: CopyLimits | None = None,
    ) -> int:
        self._agent(instance_id, "guest-file-open")
        return self.guest_fs(instance_id).copy_out(src, dest, progress, limits)

    def copy_tree_in(
        self,
        instance_id: str,
        src: Path,
        dest: str,
        *,
        progress: CopyProgress | None = None,
        owner: GuestOwner | None = None,
    ) -> TreeCopy:
        self._agent(instance_id, "guest-file-open")
        return self.guest_fs(instance_id).copy_tree_in(src, dest, progress, owner)

    def copy_tree_out(
        self,
        instance_id: str,
        src: str,
        dest: Path,
        *,
        progress: CopyProgress | None = None,
        limits: CopyLimits | None = None,
    ) -> TreeCopy:
        self._agent(instance_id, "guest-exec")
        return self.guest_fs(instance_id).copy_tree_out(src, dest, progress, limits)

    # storage ----------------------------------------------------------------
    def attach_disk(self, instance_id: str, disk: ExtraDisk) -> None:
        vm = self._live(instance_id)
        if disk.node in vm.disks:
            raise CloudletError(f"QEMU refused blockdev-add: Duplicate nodes with {disk.node}")
        used = {d.slot for d, _ in vm.disks.values()} | {n.slot for n in vm.nics.values()}
        if disk.slot is not None and disk.slot in used:
            raise CloudletError(f"QEMU refused device_add: slot hp{disk.slot} is occupied")
        vm.disks[disk.node] = (disk, _file_size(disk.path))

    def detach_disk(self, instance_id: str, disk: ExtraDisk, timeout: float = 30.0) -> None:
        self._live(instance_id).disks.pop(disk.node, None)

    def attached_disks(self, instance_id: str) -> list[str]:
        return sorted(self._live(instance_id).disks)

    def resize_disk(self, instance_id: str, node: str, size: int) -> None:
        vm = self._live(instance_id)
        if node not in vm.disks:
            raise CloudletError(f"QEMU refused block_resize: Cannot find device={node}")
        disk, old = vm.disks[node]
        if size < old:
            raise CloudletError("QEMU refused block_resize: shrinking is not supported")
        vm.disks[node] = (disk, size)
        if disk.path.exists():
            disk.path.write_text(json.dumps({"size": size}))

    def snapshot_disk(self, instance_id: str, new_top: Path) -> None:
        vm = self._live(instance_id)
        if new_top.exists():
            raise CloudletError(f"QEMU refused blockdev-snapshot-sync: {new_top} exists")
        old = vm.chain[0]
        new_top.write_text(json.dumps({"size": _file_size(old), "backing": str(old)}))
        vm.chain.insert(0, new_top)

    def unsnapshot_disk(self, instance_id: str, top: Path) -> None:
        vm = self._live(instance_id)
        if not vm.chain or vm.chain[0] != top or len(vm.chain) < 2:
            raise Conflict(f"the running VM's active disk layer is not {top}")
        vm.chain.pop(0)

    def stream_disk(self, instance_id: str, top: Path, base: Path | None) -> None:
        vm = self._live(instance_id)
        if top not in vm.chain or (base is not None and base not in vm.chain):
            raise Conflict(
                f"the running VM has no disk layer {top if top not in vm.chain else base}"
            )
        start = vm.chain.index(top)
        end = vm.chain.index(base) if base is not None else len(vm.chain)
        dropped, vm.chain[start + 1 : end] = vm.chain[start + 1 : end], []
        if top.exists():  # the data of the dropped layers moves into top, under its own
            data = json.loads(top.read_text())
            merged: dict[str, str] = {}
            for layer in reversed(dropped):
                if layer.exists():
                    merged.update(json.loads(layer.read_text()).get("data", {}))
            data["data"] = {**merged, **data.get("data", {})}
            data["backing"] = str(base) if base is not None else None
            top.write_text(json.dumps(data))

    def disk_chain(self, instance_id: str) -> list[Path]:
        return list(self._live(instance_id).chain)

    def freeze_filesystems(self, instance_id: str) -> int:
        self._live(instance_id).frozen = True
        return 1

    def thaw_filesystems(self, instance_id: str) -> int:
        vm = self._live(instance_id)
        count, vm.frozen = (1 if vm.frozen else 0), False
        return count

    # network ---------------------------------------------------------------
    def attach_nic(self, instance_id: str, nic: TapNic) -> None:
        vm = self._live(instance_id)
        if nic.node in vm.nics:
            raise CloudletError(f"QEMU refused netdev_add: Duplicate ID '{nic.node}'")
        used = {d.slot for d, _ in vm.disks.values()} | {n.slot for n in vm.nics.values()}
        if nic.slot is not None and nic.slot in used:
            raise CloudletError(f"QEMU refused device_add: slot hp{nic.slot} is occupied")
        vm.nics[nic.node] = nic

    def detach_nic(self, instance_id: str, nic: TapNic, timeout: float = 30.0) -> None:
        self._live(instance_id).nics.pop(nic.node, None)

    def attached_nics(self, instance_id: str) -> list[str]:
        return sorted(self._live(instance_id).nics)

    def add_host_forward(self, instance_id: str, forward: HostForward) -> None:
        vm = self._live(instance_id)
        if vm.config.network_mode != "nat":
            raise Conflict("the VM has no user-mode NAT NIC", hint="forward on a bridged NIC")
        key = (forward.proto, forward.host_port)
        if key in vm.forwards:
            raise CloudletError("QEMU refused hostfwd_add: could not set up host forwarding rule")
        vm.forwards.add(key)

    def remove_host_forward(self, instance_id: str, forward: HostForward) -> None:
        self._live(instance_id).forwards.discard((forward.proto, forward.host_port))

    # backups ----------------------------------------------------------------
    # A bitmap lives in the disk's JSON (the root's active layer, or the volume's file):
    # "bitmaps": name -> the content it started from, and whether it is inconsistent.
    # Like QEMU's, it survives a restart and is left behind on the old layer by a snapshot.
    def _layer(self, instance_id: str, node: str | None = None) -> tuple[Path, dict[str, Any]]:
        vm = self._live(instance_id)
        if node is None:
            top = vm.chain[0]
        elif node in vm.disks:
            top = vm.disks[node][0].path
        else:
            raise Conflict(f"the running VM has no disk node {node}")
        return top, json.loads(top.read_text())

    def disk_bitmaps(self, instance_id: str, node: str | None = None) -> list[DirtyBitmap]:
        top, data = self._layer(instance_id, node)
        content = _content(top)
        return [
            DirtyBitmap(
                name=name,
                recording=True,
                inconsistent=bool(b.get("inconsistent")),
                count=sum(len(v) for k, v in content.items() if b["base"].get(k) != v),
            )
            for name, b in sorted(data.get("bitmaps", {}).items())
        ]

    def backup_disks(
        self,
        instance_id: str,
        copies: Sequence[DiskCopy],
        *,
        speed: int = 0,
        started: Callable[[], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> None:
        check(cancel)  # the fake copies at once: a cancel can only come before it
        # Check everything first: a transaction either does all of it or nothing.
        layers = [self._layer(instance_id, c.node) for c in copies]
        for copy, (_, data) in zip(copies, layers, strict=True):
            bitmaps = data.get("bitmaps", {})
            if copy.new_bitmap in bitmaps:
                raise CloudletError(
                    f"QEMU refused transaction: bitmap {copy.new_bitmap!r} already exists"
                )
            if copy.since is not None and (
                copy.since not in bitmaps or bitmaps[copy.since].get("inconsistent")
            ):
                raise CloudletError(f"QEMU refused transaction: no usable bitmap {copy.since!r}")
            if not copy.target.exists():
                raise CloudletError(f"QEMU refused blockdev-add: {copy.target} does not exist")
        for copy, (top, data) in zip(copies, layers, strict=True):
            bitmaps = data.setdefault("bitmaps", {})
            content = _content(top)
            if copy.since is not None:
                base = bitmaps[copy.since]["base"]
                copied = {k: v for k, v in content.items() if base.get(k) != v}
            else:
                copied = content
            size = _file_size(copy.target)
            copy.target.write_text(json.dumps({"size": size, "data": copied}))
            if copy.new_bitmap is not None:
                bitmaps[copy.new_bitmap] = {"base": content}
            top.write_text(json.dumps(data))
        if started is not None:
            started()

    def remove_bitmap(self, instance_id: str, name: str, node: str | None = None) -> None:
        top, data = self._layer(instance_id, node)
        if name not in data.get("bitmaps", {}):
            raise CloudletError(f"QEMU refused block-dirty-bitmap-remove: no bitmap {name!r}")
        del data["bitmaps"][name]
        top.write_text(json.dumps(data))

    def spoil_bitmaps(self, instance_id: str, node: str | None = None) -> None:
        """Test hook: what QEMU killed while recording leaves, inconsistent bitmaps."""
        top, data = self._layer(instance_id, node)
        for bitmap in data.get("bitmaps", {}).values():
            bitmap["inconsistent"] = True
        top.write_text(json.dumps(data))

    # memory state ------------------------------------------------------------
    def save_state(self, instance_id: str, target: Path) -> None:
        vm = self._live(instance_id)
        if vm.state != PowerState.PAUSED:
            raise Conflict("the VM must be paused while its memory state is saved")
        state = {"ram": vm.ram, "memory_mib": vm.config.memory_mib, "disk": str(vm.chain[-1])}
        target.write_text(json.dumps(state))

    def restore_state(self, instance_id: str, source: Path) -> None:
        vm = self._live(instance_id)
        if not vm.awaiting_state:
            raise Conflict("the VM was not started to receive a memory state")
        try:
            state = json.loads(source.read_text())
        except (OSError, ValueError) as exc:
            raise CloudletError(f"QEMU could not load the memory state: {exc}") from None
        if state.get("memory_mib") != vm.config.memory_mib:
            raise CloudletError("QEMU could not load the memory state: RAM size differs")
        vm.ram, vm.awaiting_state = dict(state["ram"]), False


def _chain(disk: Path) -> list[Path]:
    """The root disk's layers, top first, as QEMU would open them (fake files name their
    backing layer; anything else is a single layer)."""
    chain = [disk]
    while len(chain) < 100:
        try:
            below = json.loads(chain[-1].read_text()).get("backing")
        except (OSError, ValueError, AttributeError):
            break
        if not below:
            break
        chain.append(Path(below))
    return chain


def _content(path: Path) -> dict[str, str]:
    """What the guest reads through a fake layer chain (see tests.fakes.FakeDisks)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    below = _content(Path(data["backing"])) if data.get("backing") else {}
    return {**below, **data.get("data", {})}


def _fake_block_size(vm: FakeVM, path: str) -> ExecResult:
    """``cat /sys/block/vdX/size``: vda is the root disk, then the volumes by slot."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    disks = sorted(vm.disks.values(), key=lambda d: (d[0].slot is None, d[0].slot or 0))
    sizes = [_file_size(vm.config.disk), *(size for _, size in disks)]
    name = path.removeprefix("/sys/block/").removesuffix("/size")
    index = letters.index(name[2]) if len(name) == 3 and name[2] in letters else 99
    if index >= len(sizes):
        return ExecResult(
            1, stderr=f"cat: can't open '{path}': No such file or directory\n".encode()
        )
    return ExecResult(0, f"{sizes[index] // 512}\n".encode())


def _as_account(account: run_as.GuestAccount, argv: list[str]) -> ExecResult | None:
    """What a fake guest program answers about the user it runs as (else None)."""
    environment = {"HOME": account.home, "USER": account.name, "LOGNAME": account.name}
    if argv == ["id", "-un"]:
        return ExecResult(0, f"{account.name}\n".encode())
    if argv == ["id", "-u"]:
        return ExecResult(0, f"{account.uid}\n".encode())
    if len(argv) == 2 and argv[0] == "printenv" and argv[1] in environment:
        return ExecResult(0, f"{environment[argv[1]]}\n".encode())
    return None


def _fake_guest(config: LaunchConfig, argv: list[str], stdin: bytes | None) -> ExecResult:
    program, args = argv[0], argv[1:]
    if program == "nproc":
        return ExecResult(0, f"{config.cpus}\n".encode())
    if program == "true":
        return ExecResult(0)
    if program == "false":
        return ExecResult(1)
    if program == "echo":
        return ExecResult(0, (" ".join(args) + "\n").encode())
    if program == "cat" and args == ["/proc/meminfo"]:
        return ExecResult(0, f"MemTotal: {config.memory_mib * 1024 - 40_000} kB\n".encode())
    if program == "cat" and not args:
        return ExecResult(0, stdin or b"")
    if program == "hostname":
        return ExecResult(0, f"{config.name}\n".encode())
    if program == "sh" and args[:1] == ["-c"]:
        words = shlex.split(args[1])
        if words[:1] == ["exit"]:
            return ExecResult(int(words[1]))
    return ExecResult(127, stderr=f"sh: {program}: not found\n".encode())
