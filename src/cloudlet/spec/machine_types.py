"""The machine-type catalog: families and sizes, like a public cloud's."""

from __future__ import annotations

from dataclasses import dataclass

from cloudlet.errors import InvalidInput, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.spec.suggest import did_you_mean
from cloudlet.spec.units import GIB, MIB, format_size

MIN_MEMORY = 128 * MIB
MAX_MEMORY = 1024 * GIB
MAX_CPUS = 255

FAMILIES = {
    "gp": "general-purpose",
    "mem": "memory-optimized",
    "cpu": "compute-optimized",
}


@dataclass(frozen=True)
class MachineType:
    """A named shape: vCPUs and memory."""

    name: str
    family: str
    cpus: int
    memory: int  # bytes

    @property
    def family_title(self) -> str:
        return FAMILIES.get(self.family, self.family)

    def describe(self) -> str:
        cpus = f"{self.cpus} vCPU" + ("s" if self.cpus != 1 else "")
        return f"{cpus}, {format_size(self.memory)}"


def _t(name: str, cpus: int, mem_gib: float) -> MachineType:
    return MachineType(name, name.split(".")[0], cpus, int(mem_gib * GIB))


CATALOG: dict[str, MachineType] = {
    t.name: t
    for t in (
        # general purpose: 1 vCPU : 1-4 GiB
        _t("gp.micro", 1, 0.5),
        _t("gp.small", 1, 1),
        _t("gp.medium", 2, 4),
        _t("gp.large", 2, 8),
        _t("gp.xlarge", 4, 16),
        # memory optimized: 1 vCPU : 8 GiB
        _t("mem.small", 1, 8),
        _t("mem.medium", 2, 16),
        _t("mem.large", 4, 32),
        _t("mem.xlarge", 8, 64),
        # compute optimized: 1 vCPU : 1 GiB, more vCPUs
        _t("cpu.micro", 1, 1),
        _t("cpu.small", 2, 2),
        _t("cpu.medium", 4, 4),
        _t("cpu.large", 8, 8),
        _t("cpu.xlarge", 16, 16),
    )
}

DEFAULT_TYPE = "gp.small"
CUSTOM = "custom"


def get_type(name: str) -> MachineType:
    """Look up a catalog type, with the list of known names when it is unknown."""
    try:
        return CATALOG[name]
    except KeyError:
        guess = did_you_mean(name, CATALOG)
        raise NotFound(
            f"unknown machine type {name!r}",
            hint=guess or "use one of the machine types, or a custom shape of vCPUs and memory",
            next_steps=[] if guess else [step(Step.TYPE_LIST)],
        ) from None


def resolve_shape(type_name: str | None, cpus: int | None, memory: int | None) -> MachineType:
    """The shape a VM gets from ``--type`` and/or ``--cpus/--memory``.

    ``--cpus``/``--memory`` override the type's values; the result is named
    "custom" when it differs from every catalog entry.
    """
    if type_name == CUSTOM:
        if cpus is None or memory is None:
            raise InvalidInput(
                "a custom machine type needs both vCPUs and memory",
                hint="give both vCPUs and memory for a custom type",
            )
        shape = resolve_shape(None, cpus, memory)
        return MachineType(CUSTOM, CUSTOM, shape.cpus, shape.memory)
    base = get_type(type_name or DEFAULT_TYPE)
    final_cpus = base.cpus if cpus is None else cpus
    final_memory = base.memory if memory is None else memory
    if not 1 <= final_cpus <= MAX_CPUS:
        raise InvalidInput(
            f"invalid vCPU count {final_cpus}", hint=f"use a number from 1 to {MAX_CPUS}"
        )
    if not MIN_MEMORY <= final_memory <= MAX_MEMORY:
        raise InvalidInput(
            f"invalid memory size {format_size(final_memory)}",
            hint=f"use from {format_size(MIN_MEMORY)} to {format_size(MAX_MEMORY)}",
        )
    if final_memory % MIB:
        raise InvalidInput(
            f"invalid memory size {final_memory} bytes", hint="use a whole number of MiB"
        )
    if (final_cpus, final_memory) == (base.cpus, base.memory):
        return base
    if cpus is None and memory is None:
        return base
    for known in CATALOG.values():
        if (known.cpus, known.memory) == (final_cpus, final_memory) and type_name is None:
            return known
    return MachineType(CUSTOM, CUSTOM, final_cpus, final_memory)
