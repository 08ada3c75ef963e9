"""Host capacity accounting: VMs may not take more vCPUs or memory than the host allows."""

from __future__ import annotations

from dataclasses import dataclass

from cloudlet.errors import CapacityExceeded
from cloudlet.spec.units import format_size


@dataclass(frozen=True)
class Capacity:
    """Limits and usage: vCPUs (cores x overcommit) and memory (RAM minus a reserve)."""

    host_cpus: int
    host_memory: int
    cpu_limit: int
    memory_limit: int
    cpus_used: int
    memory_used: int

    @property
    def cpus_free(self) -> int:
        return max(0, self.cpu_limit - self.cpus_used)

    @property
    def memory_free(self) -> int:
        return max(0, self.memory_limit - self.memory_used)

    def too_big(self, cpus: int, memory: int) -> str | None:
        """Why a shape could never run here, even with every other VM stopped (None: it fits)."""
        return too_big(cpus, memory, cpu_limit=self.cpu_limit, memory_limit=self.memory_limit)

    def check(self, cpus: int, memory: int, *, name: str) -> None:
        """Raise CapacityExceeded, naming how much is left, if the request does not fit."""
        if cpus > self.cpus_free:
            raise CapacityExceeded(
                f"not enough vCPUs on this host for {name}: it needs {cpus}, "
                f"{self.cpus_free} of {self.cpu_limit} are free",
                hint="stop another VM, pick a smaller type, or raise capacity.cpu_overcommit",
            )
        if memory > self.memory_free:
            raise CapacityExceeded(
                f"not enough memory on this host for {name}: it needs {format_size(memory)}, "
                f"{format_size(self.memory_free)} of {format_size(self.memory_limit)} are free",
                hint="stop another VM, pick a smaller type, or lower capacity.memory_reserve",
            )


def too_big(cpus: int, memory: int, *, cpu_limit: int, memory_limit: int) -> str | None:
    """Why ``cpus`` and ``memory`` exceed this host's limits, or None when they fit."""
    if cpus > cpu_limit:
        return f"it needs {cpus} vCPUs and this host allows at most {cpu_limit}"
    if memory > memory_limit:
        return (
            f"it needs {format_size(memory)} of memory and this host allows at most "
            f"{format_size(memory_limit)}"
        )
    return None


def compute(
    *,
    host_cpus: int,
    host_memory: int,
    cpu_overcommit: float,
    memory_reserve: int,
    used: list[tuple[int, int]],
) -> Capacity:
    return Capacity(
        host_cpus=host_cpus,
        host_memory=host_memory,
        cpu_limit=int(host_cpus * cpu_overcommit),
        memory_limit=max(0, host_memory - memory_reserve),
        cpus_used=sum(c for c, _ in used),
        memory_used=sum(m for _, m in used),
    )
