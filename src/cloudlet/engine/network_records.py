"""The network records every network service reads: networks, NICs, firewall groups.

A virtual network is a ``networks`` row; each NIC on it a ``nics`` row with its fixed
MAC, address and TAP name; each firewall group a ``firewall_groups`` row. These
helpers take only the shared context, so every network module can use them without
importing another service. ``NETWORK_LOCK`` guards all of them and the host plumbing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from cloudlet.driver.base import TapNic
from cloudlet.engine import locks, vm_state
from cloudlet.errors import Conflict, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.spec.instance import FirewallSpec, InstanceSpec
from cloudlet.spec.names import name_path
from cloudlet.spec.network import (
    FirewallGroup,
    FirewallRule,
    NetworkDef,
    first_host,
    mac_address,
    tap_name,
    validate_network_name,
)
from cloudlet.spec.states import VMState
from cloudlet.store.models import FirewallGroupRow, InstanceRow, NetworkRow, NicRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext

NETWORK_LOCK = ".network"
DETACH_TIMEOUT = 60.0
ONLINE = {VMState.RUNNING, VMState.PAUSED}
OFFLINE = {VMState.STOPPED, VMState.CRASHED, VMState.ERROR}


@contextmanager
def network_lock(ctx: EngineContext) -> Iterator[None]:
    with locks.hold(ctx.paths.locks, NETWORK_LOCK, what="networks"):
        yield


def network_dir(ctx: EngineContext, name: str) -> Path:
    return name_path(ctx.paths.home / "networks", name)


def no_network(name: str) -> NotFound:
    """The error for a network name nobody has."""
    return NotFound(
        f"no network named {name!r}",
        hint="list the networks",
        next_steps=[step(Step.NETWORK_LIST)],
    )


def network_def(ctx: EngineContext, name: str) -> NetworkDef:
    """The recorded network ``name``, or a one-line NotFound."""
    validate_network_name(name)
    with ctx.db.session() as s:
        row = s.get(NetworkRow, name)
    if row is None:
        raise no_network(name)
    return NetworkDef.model_validate_json(row.spec_json)


def network_rows(ctx: EngineContext) -> list[NetworkRow]:
    with ctx.db.session() as s:
        return list(s.scalars(select(NetworkRow).order_by(NetworkRow.name)).all())


def vm_row(ctx: EngineContext, name: str) -> InstanceRow:
    """The VM's row with its state checked (the caller holds the VM's lock)."""
    return vm_state.reconcile_locked(ctx, ctx.row(name))


def save_spec(ctx: EngineContext, instance_id: str, spec: InstanceSpec) -> None:
    with ctx.db.session() as s:
        row = s.get(InstanceRow, instance_id)
        assert row is not None
        row.spec_json = spec.model_dump_json()


def nic_rows(ctx: EngineContext, instance_id: str) -> list[NicRow]:
    with ctx.db.session() as s:
        return list(
            s.scalars(
                select(NicRow).where(NicRow.instance_id == instance_id).order_by(NicRow.index)
            ).all()
        )


def tap_nic(row: NicRow) -> TapNic:
    return TapNic(node=f"tn{row.index}", tap=row.tap, mac=row.mac, slot=row.slot)


def add_nic_row(ctx: EngineContext, instance_id: str, network: str, slot: int | None) -> NicRow:
    """The next free address of the network and the next NIC index of the VM."""
    with ctx.db.session() as s:
        net_row = s.get(NetworkRow, network)
        if net_row is None:
            raise no_network(network)
        net = NetworkDef.model_validate_json(net_row.spec_json)
        taken = set(s.scalars(select(NicRow.ip).where(NicRow.network == network)).all())
        indexes = set(s.scalars(select(NicRow.index).where(NicRow.instance_id == instance_id)))
        start = first_host(net.subnet)
        ip = next(
            (str(a) for a in net.network.hosts() if a >= start and str(a) not in taken),
            None,
        )
        if ip is None:
            raise Conflict(f"network {network} has no free address", hint="use a larger subnet")
        index = next(i for i in range(1, 100) if i not in indexes)  # 0 is the user-mode NIC
        row = NicRow(
            instance_id=instance_id,
            network=network,
            index=index,
            mac=mac_address(instance_id, index),
            ip=ip,
            tap=tap_name(instance_id, index),
            slot=slot,
        )
        s.add(row)
        s.flush()
        s.expunge(row)
    return row


def firewall_groups(ctx: EngineContext) -> dict[str, FirewallGroup]:
    with ctx.db.session() as s:
        rows = s.scalars(select(FirewallGroupRow)).all()
    return {
        r.name: FirewallGroup(
            name=r.name,
            rules=tuple(FirewallRule.model_validate(x) for x in json.loads(r.rules_json)),
        )
        for r in rows
    }


def effective_rules(
    fw: FirewallSpec, groups: dict[str, FirewallGroup]
) -> list[tuple[FirewallRule, str]]:
    """Every allow rule of a VM with where it comes from (own, or group NAME)."""
    rules = [(r, "own") for r in fw.own_rules()]
    for name in fw.groups:
        group = groups.get(name)
        if group is not None:
            rules += [(r, f"group {name}") for r in group.rules]
    seen: set[FirewallRule] = set()
    unique = []
    for rule, origin in rules:
        if rule not in seen:
            seen.add(rule)
            unique.append((rule, origin))
    return unique
