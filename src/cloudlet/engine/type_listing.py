"""The machine types on offer, with the share of this host each would take.

The create wizard, `types` and the coming API all show the same list: the catalog in
order, and for each type its share of the host's vCPUs and of its memory (``share`` is the
larger: a type that takes half the host's memory takes half the host, whatever its
vCPUs), and whether it fits this host's limits at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudlet.engine.capacity import Capacity
from cloudlet.spec.machine_types import CATALOG


@dataclass(frozen=True)
class MachineTypeOffer:
    """One machine type; shares (0..) of the host it would take, None if not asked;
    ``too_big`` says why it can never run on this host (None: it fits, or not asked)."""

    name: str
    family: str
    cpus: int
    memory: int
    share: float | None = None
    cpu_share: float | None = None
    memory_share: float | None = None
    too_big: str | None = None

    @property
    def fits(self) -> bool:
        return self.too_big is None

    def to_dict(self) -> dict[str, object]:
        """The type as described in JSON (the share is host-specific, so not in it)."""
        return {"name": self.name, "family": self.family, "cpus": self.cpus, "memory": self.memory}


def offers(
    host_cpus: int | None = None,
    host_memory: int | None = None,
    *,
    limits: Capacity | None = None,
) -> list[MachineTypeOffer]:
    """Every catalog type, with its shares of a host of this size when one is given, and
    whether it fits the host's ``limits`` when they are given."""
    result = []
    for t in CATALOG.values():
        cpu_share = memory_share = share = None
        if host_cpus is not None and host_memory is not None:
            cpu_share = t.cpus / max(host_cpus, 1)
            memory_share = t.memory / max(host_memory, 1)
            share = max(cpu_share, memory_share)
        too_big = None if limits is None else limits.too_big(t.cpus, t.memory)
        result.append(
            MachineTypeOffer(
                t.name, t.family_title, t.cpus, t.memory, share, cpu_share, memory_share, too_big
            )
        )
    return result
