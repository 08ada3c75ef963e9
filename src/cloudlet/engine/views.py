"""What the engine hands to frontends: plain data, ready to render or serialise."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from cloudlet.next_steps import NextStep


@dataclass(frozen=True)
class InstanceView:
    id: str
    name: str
    state: str
    type: str
    cpus: int
    memory: int
    disk_size: int
    image: str
    arch: str
    location: str
    accel: str | None
    ssh_port: int | None
    pid: int | None
    created_at: datetime
    last_error: str | None
    network: dict[str, Any]
    paths: dict[str, str]
    kind: str = "system"
    # network name -> the guest's address there ("nat": user-mode, then each NIC)
    addresses: dict[str, str] = field(default_factory=dict)
    # an SSH server a user can log in to on ssh_port (a tiny VM has a forward but no SSH)
    ssh_access: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat() + "Z"
        return data


@dataclass(frozen=True)
class HostView:
    accel: str
    accel_reason: str
    qemu_version: str
    driver: str
    host_cpus: int
    host_memory: int
    cpu_limit: int
    memory_limit: int
    cpus_used: int
    memory_used: int
    instances: int
    running: int
    home: str
    arches: dict[str, str]
    qemu_user: str = ""
    accel_note: str = ""  # said while VMs run under TCG (a create or start says it once a boot)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ActionResult:
    """An instance after an action, and whether the action changed anything."""

    instance: InstanceView
    changed: bool
    message: str
    next_steps: tuple[NextStep, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance": self.instance.to_dict(),
            "changed": self.changed,
            "message": self.message,
            "next_steps": [s.to_dict() for s in self.next_steps],
        }


@dataclass(frozen=True)
class Cleanup:
    """One thing a clean-up (start-up recovery, network gc) found a crash left, and what
    it did about it: ``what`` ("operation", "process VM", "staging", "NIC record",
    "bridge", "TAP", "dnsmasq", "nftables"), ``name`` (which one), ``action`` ("rolled
    back", "finished", "settled", "removed", "made"); ``message`` says it in words."""

    what: str
    name: str
    action: str
    message: str

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Done:
    """What a change that has no view of its own did (a delete, a detach, a revert).

    ``message`` is one line in words for a person, naming no command of any frontend;
    ``kind`` and ``name`` say what was acted on, so a client need not parse it."""

    kind: str  # "vm", "image", "volume", "snapshot", "network", "nic", "port", ...
    name: str
    action: str  # what happened to it: "deleted", "attached", "reverted", ...
    message: str
    changed: bool = True
    next_steps: tuple[NextStep, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["next_steps"] = [s.to_dict() for s in self.next_steps]
        return data
