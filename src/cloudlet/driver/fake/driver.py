"""FakeDriver: behaves like the QEMU driver without any process, for engine unit tests.

Its guest understands a handful of commands (nproc, echo, true, false,
``sh -c 'exit N'``, ``cat /proc/meminfo``) so the shared contract tests can run
the same assertions against it and against real QEMU.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field

from cloudlet.driver.base import (
    Driver,
    ExecResult,
    GuestInfo,
    LaunchConfig,
    PowerState,
    RuntimeInfo,
)
from cloudlet.errors import CloudletError, Conflict, GuestError


@dataclass
class FakeVM:
    config: LaunchConfig
    state: PowerState = PowerState.RUNNING
    alive: bool = True
    ignores_acpi: bool = False
    pid: int = 0
    started_at: float = field(default_factory=time.time)
    commands: list[list[str]] = field(default_factory=list)


class FakeDriver(Driver):
    """VMs are dict entries; "processes" are flags."""

    name = "fake"

    def __init__(self) -> None:
        self.vms: dict[str, FakeVM] = {}
        self.fail_next_start: str | None = None
        self._next_pid = 10_000

    # test hooks -----------------------------------------------------------
    def crash(self, instance_id: str) -> None:
        """Simulate QEMU killed behind our back."""
        self.vms[instance_id].alive = False

    def ignore_acpi(self, instance_id: str) -> None:
        self.vms[instance_id].ignores_acpi = True

    # Driver ---------------------------------------------------------------
    def start(self, config: LaunchConfig) -> RuntimeInfo:
        if self.fail_next_start:
            message, self.fail_next_start = self.fail_next_start, None
            raise CloudletError(message)
        existing = self.vms.get(config.instance_id)
        if existing is not None and existing.alive:
            raise Conflict("a fake QEMU already runs for this VM")
        self._next_pid += 1
        self.vms[config.instance_id] = FakeVM(config=config, pid=self._next_pid)
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

    def wait_shutdown(self, instance_id: str, timeout: float) -> bool:
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
        self._live(instance_id).state = PowerState.RUNNING

    def wait_agent(self, instance_id: str, timeout: float) -> None:
        self._live(instance_id)

    def exec(
        self, instance_id: str, argv: list[str], *, stdin: bytes | None = None, timeout: float
    ) -> ExecResult:
        vm = self._live(instance_id)
        if vm.state != PowerState.RUNNING:
            raise GuestError("the guest agent did not answer (the VM is not running)")
        vm.commands.append(argv)
        return _fake_guest(vm.config, argv, stdin)

    def guest_info(self, instance_id: str) -> GuestInfo:
        vm = self._live(instance_id)
        return GuestInfo(agent_version="fake", os_name="fake OS", hostname=vm.config.name)


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
