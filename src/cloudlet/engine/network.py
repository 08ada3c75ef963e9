"""One network object for frontends: networks, NICs, port forwards and firewalls together.

Each part is its own service on the shared context (networks.py, nics.py,
port_forwards.py, firewall.py; the host plumbing in network_host.py); this facade
only forwards, so the CLI, the API and the engine's other use cases reach all of
networking through ``engine.networks``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloudlet.engine import network_host as host
from cloudlet.engine import network_records as records
from cloudlet.engine.firewall import Firewall
from cloudlet.engine.network_rows import NetworkView
from cloudlet.engine.network_views import (
    FirewallGroupView,
    FirewallView,
    NetworkPlan,
    NicView,
    PortView,
)
from cloudlet.engine.networks import Networks
from cloudlet.engine.nics import Nics
from cloudlet.engine.port_forwards import PortForwards
from cloudlet.engine.views import Cleanup, Done
from cloudlet.spec.instance import FirewallSpec
from cloudlet.spec.network import FirewallGroup, FirewallRule

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext


class NetworkService:
    """Networks, NICs, port forwards and firewalls, on the engine's shared context."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self.net_ops = Networks(ctx)
        self.nic_ops = Nics(ctx)
        self.port_ops = PortForwards(ctx)
        self.firewall_ops = Firewall(ctx)

    # ------------------------------------------------------------ host plumbing
    def refresh_dns(self, networks: set[str]) -> None:
        host.refresh_dns(self.ctx, networks)

    def plan(self) -> NetworkPlan:
        return host.plan(self.ctx)

    def sync(self) -> None:
        host.sync(self.ctx)

    def sync_locked(self) -> None:
        host.sync_locked(self.ctx)

    # ------------------------------------------------------------ networks
    def network_create(
        self, name: str, subnet: str, *, mode: str = "nat", route_to: tuple[str, ...] = ()
    ) -> NetworkView:
        return self.net_ops.network_create(name, subnet, mode=mode, route_to=route_to)

    def networks(self) -> list[NetworkView]:
        return self.net_ops.networks()

    def network(self, name: str) -> NetworkView:
        return self.net_ops.network(name)

    def network_delete(self, name: str) -> Done:
        return self.net_ops.network_delete(name)

    def gc(self) -> list[Cleanup]:
        return self.net_ops.gc()

    # ------------------------------------------------------------ NICs
    def nic_add(self, vm: str, network: str) -> Done:
        return self.nic_ops.nic_add(vm, network)

    def nic_remove(self, vm: str, network: str) -> Done:
        return self.nic_ops.nic_remove(vm, network)

    def nics(self, vm: str) -> list[NicView]:
        return self.nic_ops.nics(vm)

    # ------------------------------------------------------------ port forwards
    def port_add(self, vm: str, text: str, network: str | None = None) -> Done:
        return self.port_ops.port_add(vm, text, network)

    def ports(self, vm: str) -> list[PortView]:
        return self.port_ops.ports(vm)

    def port_remove(self, vm: str, key: str) -> Done:
        return self.port_ops.port_remove(vm, key)

    # ------------------------------------------------------------ firewall
    @staticmethod
    def effective_rules(
        fw: FirewallSpec, groups: dict[str, FirewallGroup]
    ) -> list[tuple[FirewallRule, str]]:
        return records.effective_rules(fw, groups)

    def firewall_allow(self, vm: str, rule: FirewallRule) -> Done:
        return self.firewall_ops.firewall_allow(vm, rule)

    def firewall_remove(self, vm: str, rule: FirewallRule) -> Done:
        return self.firewall_ops.firewall_remove(vm, rule)

    def group_create(self, name: str, rules: list[FirewallRule]) -> Done:
        return self.firewall_ops.group_create(name, rules)

    def groups(self) -> list[FirewallGroupView]:
        return self.firewall_ops.groups()

    def group_delete(self, name: str) -> Done:
        return self.firewall_ops.group_delete(name)

    def firewall_apply(self, vm: str, group: str, *, apply: bool = True) -> Done:
        return self.firewall_ops.firewall_apply(vm, group, apply=apply)

    def firewall_list(self, vm: str) -> FirewallView:
        return self.firewall_ops.firewall_list(vm)
