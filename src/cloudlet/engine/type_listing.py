"""The machine types on offer, with the share of this host each would take.

The create wizard, `types` and the coming API all show the same list: the catalog in
order, and for each type the larger of its share of the host's vCPUs and of its memory
(a type that takes half the host's memory takes half the host, whatever its vCPUs).
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudlet.spec.machine_types import CATALOG, MachineType


@dataclass(frozen=True)
class MachineTypeOffer:
    """One machine type; ``share`` (0..) of the host it would take, None if not asked."""

    name: str
    family: str
    cpus: int
    memory: int
    share: float | None = None

    def to_dict(self) -> dict[str, object]:
        """The type as described in JSON (the share is host-specific, so not in it)."""
        return {"name": self.name, "family": self.family, "cpus": self.cpus, "memory": self.memory}


def host_share(t: MachineType, host_cpus: int, host_memory: int) -> float:
    """The larger of the type's share of the host's vCPUs and of its memory."""
    return max(t.cpus / max(host_cpus, 1), t.memory / max(host_memory, 1))


def offers(host_cpus: int | None = None, host_memory: int | None = None) -> list[MachineTypeOffer]:
    """Every catalog type, with its share of a host of this size when one is given."""
    return [
        MachineTypeOffer(
            t.name,
            t.family_title,
            t.cpus,
            t.memory,
            host_share(t, host_cpus, host_memory)
            if host_cpus is not None and host_memory is not None
            else None,
        )
        for t in CATALOG.values()
    ]
