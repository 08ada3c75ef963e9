"""The network hooks the rest of the engine calls: creation, launch, teardown, clones.

A VM's NICs on virtual networks are recorded when it is made (``allocate``), brought
up before QEMU starts (``ensure_for_boot``) and removed with it (``forget``). User-mode
NAT (QEMU's slirp) stays the default NIC and needs no root. These hooks take only the
shared context, so they import no service.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cloudlet.driver.base import HostForward, TapNic
from cloudlet.engine import network_host as host
from cloudlet.engine import network_records as records
from cloudlet.spec.instance import InstanceSpec, NetworkSpec
from cloudlet.spec.network import NicSpec, bridge_name
from cloudlet.spec.network import split_networks as split_networks
from cloudlet.store.models import NetworkRow, NicRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext


@dataclass(frozen=True)
class NetworkVmView:
    """A VM on a network: its fixed address, MAC, TAP and DNS name there."""

    name: str
    ip: str
    mac: str
    tap: str
    dns: str  # VM.NETWORK


@dataclass(frozen=True)
class NetworkView:
    name: str
    subnet: str
    mode: str
    route_to: list[str]
    bridge: str
    gateway: str
    dnsmasq_pid: int | None
    dnsmasq_running: bool
    vms: list[NetworkVmView]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_networks(ctx: EngineContext, nics: tuple[NicSpec, ...]) -> None:
    """Before a create: the networks exist and this process may use them."""
    if not nics:
        return
    from cloudlet.network import require_root

    with ctx.db.session() as s:
        for nic in nics:
            if s.get(NetworkRow, nic.network) is None:
                raise records.no_network(nic.network)
    require_root()


def allocate(ctx: EngineContext, instance_id: str, nics: tuple[NicSpec, ...]) -> None:
    """Record a NIC row (fixed MAC, address, TAP name) per virtual network of a new VM."""
    if not nics:
        return
    with records.network_lock(ctx):
        for nic in nics:
            records.add_nic_row(ctx, instance_id, nic.network, slot=None)
    host.refresh_dns(ctx, {n.network for n in nics})


def boot_nics(ctx: EngineContext, instance_id: str) -> tuple[TapNic, ...]:
    return tuple(records.tap_nic(r) for r in records.nic_rows(ctx, instance_id))


def host_forwards(spec: InstanceSpec) -> tuple[HostForward, ...]:
    return tuple(
        HostForward(f.proto, f.host_port, f.guest_port)
        for f in spec.network.ports
        if f.network == "nat"
    )


def used_slots(ctx: EngineContext, instance_id: str) -> set[int]:
    """Hot-plug ports NICs of this VM sit on (volumes take the others)."""
    return {r.slot for r in records.nic_rows(ctx, instance_id) if r.slot is not None}


def ensure_for_boot(ctx: EngineContext, instance_id: str) -> None:
    """Before QEMU starts: its networks are up (after a host reboot too) and TAPs exist."""
    rows = records.nic_rows(ctx, instance_id)
    if not rows:
        return
    from cloudlet.network import require_root, tap

    require_root()
    with records.network_lock(ctx):
        for name in sorted({r.network for r in rows}):
            host.bring_up(ctx, records.network_def(ctx, name))
        for row in rows:
            tap.ensure(row.tap, bridge_name(row.network))
        host.sync(ctx)


def forget(ctx: EngineContext, instance_id: str) -> None:
    """The VM is gone: its TAPs, NIC rows, leases and rules go too."""
    rows = records.nic_rows(ctx, instance_id)
    if not rows:
        return
    from cloudlet.network import tap

    with records.network_lock(ctx):
        for row in rows:
            tap.delete(row.tap)
        with ctx.db.session() as s:
            for row in rows:
                existing = s.get(NicRow, row.id)
                if existing is not None:
                    s.delete(existing)
        host.refresh_dns(ctx, {r.network for r in rows})
        host.sync(ctx)


def network_spec(mode: str, restrict: bool, nics: tuple[NicSpec, ...]) -> NetworkSpec:
    return NetworkSpec(mode=mode, restrict=restrict, nics=nics)  # type: ignore[arg-type]
