"""Per-VM inbound firewall: own allow rules and named groups of rules.

Inbound is denied except replies and ping; each allow rule of a VM (its own and
those of its groups) opens a port on its NICs on virtual networks. A change is saved
in the VM's spec and the nftables tables rewritten under ``NETWORK_LOCK``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import select

from cloudlet.engine import network_host as host
from cloudlet.engine import network_records as records
from cloudlet.engine.network_views import FirewallGroupView, FirewallRuleView, FirewallView
from cloudlet.engine.views import Done
from cloudlet.errors import Conflict, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.spec.instance import FirewallSpec, InstanceSpec
from cloudlet.spec.names import group_name, vm_name
from cloudlet.spec.network import FirewallGroup, FirewallRule
from cloudlet.store.models import FirewallGroupRow, InstanceRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext

DEFAULT_POLICY = "inbound: denied except replies and ping; outbound: per network policy"


class Firewall:
    """Firewall rules and groups on the engine's shared context."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def _change_firewall(
        self, vm: str, kind: str, change: Callable[[FirewallSpec], FirewallSpec]
    ) -> bool:
        """Apply ``change`` to the VM's firewall; whether it changed anything."""
        with self.ctx.lock(vm):
            row = records.vm_row(self.ctx, vm)
            spec = InstanceSpec.model_validate_json(row.spec_json)
            new = spec.model_copy(update={"firewall": change(spec.firewall)})
            if new == spec:
                return False
            with self.ctx.operation(row, kind):
                records.save_spec(self.ctx, row.id, new)
                if records.nic_rows(self.ctx, row.id):
                    with records.network_lock(self.ctx):
                        host.sync(self.ctx)
        return True

    def firewall_allow(self, vm: str, rule: FirewallRule) -> Done:
        def change(fw: FirewallSpec) -> FirewallSpec:
            if rule in fw.own_rules():
                return fw
            return fw.model_copy(update={"rules": (*fw.rules, rule)})

        changed = self._change_firewall(vm, "firewall", change)
        message = f"{vm}: allowed {rule.describe()}"
        return Done("firewall-rule", rule.describe(), "allowed", message, changed=changed)

    def firewall_remove(self, vm: str, rule: FirewallRule) -> Done:
        spec = InstanceSpec.model_validate_json(self.ctx.row(vm).spec_json)
        if rule not in spec.firewall.own_rules():
            raise NotFound(
                f"{vm} has no rule {rule.describe()}",
                hint="list its rules",
                next_steps=[step(Step.FIREWALL_LIST, vm=vm)],
            )

        def change(fw: FirewallSpec) -> FirewallSpec:
            ports = tuple(p for p in fw.inbound_ports if FirewallRule(port=p) != rule)
            rules = tuple(r for r in fw.rules if r != rule)
            return fw.model_copy(update={"inbound_ports": ports, "rules": rules})

        changed = self._change_firewall(vm, "firewall", change)
        message = f"{vm}: removed {rule.describe()}"
        return Done("firewall-rule", rule.describe(), "removed", message, changed=changed)

    def group_create(self, name: str, rules: list[FirewallRule]) -> Done:
        group_name(name)  # a one-line error, not the model's ValidationError
        group = FirewallGroup(name=name, rules=tuple(rules))
        with records.network_lock(self.ctx), self.ctx.db.session() as s:
            if s.get(FirewallGroupRow, name) is not None:
                raise Conflict(
                    f"a firewall group named {name!r} already exists",
                    hint="pick another name or delete it first",
                )
            s.add(
                FirewallGroupRow(
                    name=name, rules_json=json.dumps([r.model_dump() for r in group.rules])
                )
            )
        described = ", ".join(r.describe() for r in rules) or "no rules"
        return Done("firewall-group", name, "created", f"firewall group {name}: {described}")

    def groups(self) -> list[FirewallGroupView]:
        users: dict[str, list[str]] = {}
        with self.ctx.db.session() as s:
            rows = s.scalars(select(InstanceRow)).all()
        for row in rows:
            for g in InstanceSpec.model_validate_json(row.spec_json).firewall.groups:
                users.setdefault(g, []).append(row.name)
        return [
            FirewallGroupView(
                g.name,
                tuple(r.describe() for r in g.rules),
                tuple(sorted(users.get(g.name, []))),
            )
            for g in sorted(records.firewall_groups(self.ctx).values(), key=lambda g: g.name)
        ]

    def group_delete(self, name: str) -> Done:
        group_name(name)
        users = next((g.used_by for g in self.groups() if g.name == name), None)
        if users is None:
            raise NotFound(
                f"no firewall group named {name!r}",
                hint="list the firewall groups",
                next_steps=[step(Step.FIREWALL_GROUP_LIST)],
            )
        if users:
            raise Conflict(
                f"firewall group {name} is applied to {', '.join(users)}",
                hint="take it off those VMs first",
                next_steps=[step(Step.FIREWALL_UNAPPLY, vm=vm, group=name) for vm in users],
            )
        with records.network_lock(self.ctx), self.ctx.db.session() as s:
            row = s.get(FirewallGroupRow, name)
            if row is not None:
                s.delete(row)
        return Done("firewall-group", name, "deleted", f"firewall group {name} deleted")

    def firewall_apply(self, vm: str, group: str, *, apply: bool = True) -> Done:
        vm_name(vm)
        group_name(group)
        if apply and group not in records.firewall_groups(self.ctx):
            raise NotFound(
                f"no firewall group named {group!r}",
                hint="create it first",
                next_steps=[step(Step.FIREWALL_GROUP_CREATE, group=group)],
            )

        def change(fw: FirewallSpec) -> FirewallSpec:
            groups = tuple(g for g in fw.groups if g != group)
            return fw.model_copy(update={"groups": (*groups, group) if apply else groups})

        changed = self._change_firewall(vm, "firewall", change)
        action = "applied" if apply else "removed"
        message = f"{vm}: firewall group {group} {action}"
        return Done("firewall-group", group, action, message, changed=changed)

    def firewall_list(self, vm: str) -> FirewallView:
        row = self.ctx.row(vm)
        spec = InstanceSpec.model_validate_json(row.spec_json)
        rules = records.effective_rules(spec.firewall, records.firewall_groups(self.ctx))
        return FirewallView(
            vm=vm,
            default=DEFAULT_POLICY,
            enforced_on=tuple(n.network for n in spec.network.nics),
            groups=tuple(spec.firewall.groups),
            rules=tuple(
                FirewallRuleView(r.port, r.proto, r.source or "any", origin) for r, origin in rules
            ),
            forwards=tuple(p.describe() for p in spec.network.ports),
        )
