"""The host side of virtual networks: bridges, dnsmasq and cloudlet's nftables tables.

A network's bridge (``clb-NAME``) carries the gateway address; its dnsmasq serves
fixed leases and DNS names ``VM.NETWORK``. The nftables tables are always rewritten
whole from the records (``sync``), so they can never drift from what the database
says. Callers hold ``NETWORK_LOCK`` (``sync_locked`` takes it).
"""

from __future__ import annotations

import ipaddress
import shutil
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from cloudlet.engine import network_records as records
from cloudlet.engine.network_views import NetworkPlan
from cloudlet.spec.instance import InstanceSpec
from cloudlet.spec.network import NetworkDef
from cloudlet.store.models import InstanceRow, NetworkRow, NicRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext


def leases(ctx: EngineContext, network: str) -> list[Any]:
    from cloudlet.network.dnsmasq import Lease

    with ctx.db.session() as s:
        rows = s.execute(
            select(NicRow.mac, NicRow.ip, InstanceRow.name)
            .join(InstanceRow, InstanceRow.id == NicRow.instance_id)
            .where(NicRow.network == network)
            .order_by(NicRow.ip)
        ).all()
    return [Lease(mac=str(m), ip=str(i), hostname=str(n)) for m, i, n in rows]


def refresh_dns(ctx: EngineContext, networks: set[str]) -> None:
    """Rewrite the leases and names of these networks and tell their dnsmasq."""
    from cloudlet.network import dnsmasq

    for name in sorted(networks):
        with ctx.db.session() as s:
            row = s.get(NetworkRow, name)
        if row is None:
            continue
        net = NetworkDef.model_validate_json(row.spec_json)
        dnsmasq.write_files(net, records.network_dir(ctx, name), leases(ctx, name))
        dnsmasq.reload(row.dnsmasq_pid, row.dnsmasq_start)


def bring_up(ctx: EngineContext, net: NetworkDef) -> None:
    """Bridge with the gateway address, dnsmasq running (idempotent)."""
    from cloudlet.network import bridge, dnsmasq

    gateway = ipaddress.IPv4Interface(f"{net.gateway}/{net.network.prefixlen}")
    bridge.ensure(net.bridge, gateway)
    directory = records.network_dir(ctx, net.name)
    dnsmasq.write_files(net, directory, leases(ctx, net.name))
    with ctx.db.session() as s:
        row = s.get(NetworkRow, net.name)
        assert row is not None
        if dnsmasq.is_running(row.dnsmasq_pid, row.dnsmasq_start):
            return
    pid, started = dnsmasq.start(directory)
    with ctx.db.session() as s:
        row = s.get(NetworkRow, net.name)
        assert row is not None
        row.dnsmasq_pid, row.dnsmasq_start = pid, started


def tear_down(ctx: EngineContext, row: NetworkRow) -> None:
    from cloudlet.network import bridge, dnsmasq

    dnsmasq.stop(row.dnsmasq_pid, row.dnsmasq_start)
    bridge.delete(row.bridge)
    shutil.rmtree(records.network_dir(ctx, row.name), ignore_errors=True)


def plan(ctx: EngineContext) -> NetworkPlan:
    """The packet filter the records ask for, with its nftables ruleset."""
    from cloudlet.network import nft

    nets = []
    for row in records.network_rows(ctx):
        net = NetworkDef.model_validate_json(row.spec_json)
        nets.append(nft.NetPlan(net.name, net.bridge, net.subnet, net.mode, net.route_to))
    groups = records.firewall_groups(ctx)
    nics = []
    with ctx.db.session() as s:
        pairs = s.execute(
            select(NicRow, InstanceRow).join(InstanceRow, InstanceRow.id == NicRow.instance_id)
        ).all()
    for nic, vm in pairs:
        spec = InstanceSpec.model_validate_json(vm.spec_json)
        rules = records.effective_rules(spec.firewall, groups)
        forwards = tuple(f for f in spec.network.ports if f.network == nic.network)
        nics.append(
            nft.NicPlan(
                vm.name,
                nic.network,
                nic.tap,
                nic.mac,
                nic.ip,
                tuple(r for r, _ in rules),
                forwards,
            )
        )
    return NetworkPlan(tuple(nets), tuple(nics), nft.ruleset(nets, nics))


def sync(ctx: EngineContext) -> None:
    """Rewrite cloudlet's nftables tables from the records (one transaction)."""
    from cloudlet.network import nft

    if not records.network_rows(ctx):
        if ctx.paths.home.joinpath("networks").exists():
            nft.remove()
        return
    nft.apply(plan(ctx).ruleset, ctx.paths.home / "networks" / "cloudlet.nft")


def sync_locked(ctx: EngineContext) -> None:
    with records.network_lock(ctx):
        sync(ctx)
