"""Port forwards: a host port to a guest port, over user-mode NAT or a virtual network.

User-mode NAT forwards are QEMU's own (live when the driver can, else at the next
start); forwards to a virtual network are DNAT rules in cloudlet's nftables tables.
The host ports lock (``PORTS_KEY``) spans the check that a port is free and the spec
that takes it: two VMs cannot both be given one host port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from cloudlet.driver.base import HostForward
from cloudlet.engine import locks
from cloudlet.engine import network_host as host
from cloudlet.engine import network_records as records
from cloudlet.engine.network_views import PortView
from cloudlet.engine.ports import PORTS_KEY
from cloudlet.engine.views import Done
from cloudlet.errors import Conflict, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.spec.instance import InstanceSpec
from cloudlet.spec.network import USER_MODE, PortForward, parse_port_key, validate_network_name
from cloudlet.store.models import InstanceRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext


class PortForwards:
    """Port forward add/list/remove on the engine's shared context."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def port_add(self, vm: str, text: str, network: str | None = None) -> Done:
        from cloudlet.spec.network import parse_port_forward

        if network is not None and network not in USER_MODE:
            validate_network_name(network)
        with self.ctx.lock(vm), locks.hold(self.ctx.paths.locks, PORTS_KEY, what="host ports"):
            row = records.vm_row(self.ctx, vm)
            spec = InstanceSpec.model_validate_json(row.spec_json)
            target = network or (
                "nat"
                if spec.network.mode == "nat" or not spec.network.nics
                else spec.network.nics[0].network
            )
            forward = parse_port_forward(text, target)
            if target == "nat":
                if spec.network.mode != "nat":
                    raise Conflict(
                        f"{vm} has no user-mode NAT NIC",
                        hint="forward to the NIC of one of its networks",
                        next_steps=[step(Step.NIC_LIST, vm=vm)],
                    )
            elif not any(n.network == target for n in spec.network.nics):
                raise NotFound(
                    f"{vm} has no NIC on {target}",
                    hint="list its NICs",
                    next_steps=[step(Step.NIC_LIST, vm=vm)],
                )
            self._check_host_port_free(forward)
            new = spec.network.model_copy(update={"ports": (*spec.network.ports, forward)})
            changed = spec.model_copy(update={"network": new})
            live = row.state in records.ONLINE
            # passt (the default user-mode NAT) binds forwards only when the VM starts
            live = live and (target != "nat" or self.ctx.driver.live_host_forwards(row.id))
            with self.ctx.operation(row, "port-add") as op_id:
                records.save_spec(self.ctx, row.id, changed)
                try:
                    if target == "nat":
                        if live:
                            self.ctx.driver.add_host_forward(
                                row.id,
                                HostForward(forward.proto, forward.host_port, forward.guest_port),
                            )
                    else:
                        with records.network_lock(self.ctx):
                            host.sync(self.ctx)
                except BaseException:
                    records.save_spec(self.ctx, row.id, spec)
                    raise
                self.ctx.event(vm, "port-added", forward.describe(), op_id)
        if target == "nat":
            how = "now" if live else "at its next start"
            where = f"127.0.0.1:{forward.host_port} (user-mode NAT, {how})"
        else:
            where = f"port {forward.host_port} of this host's addresses (DNAT to {target})"
        message = f"{vm}: {forward.proto} {where} -> guest port {forward.guest_port}"
        return Done("port", forward.key, "added", message)

    def _check_host_port_free(self, forward: PortForward) -> None:
        with self.ctx.db.session() as s:
            rows = s.scalars(select(InstanceRow)).all()
        for other in rows:
            ports = InstanceSpec.model_validate_json(other.spec_json).network.ports
            taken = [p for p in ports if p.key == forward.key]
            if taken or (forward.proto == "tcp" and other.ssh_port == forward.host_port):
                raise Conflict(
                    f"host port {forward.key} is already forwarded to {other.name}",
                    hint="pick another host port",
                )

    def ports(self, vm: str) -> list[PortView]:
        spec = InstanceSpec.model_validate_json(self.ctx.row(vm).spec_json)
        return [PortView(p.host_port, p.guest_port, p.proto, p.network) for p in spec.network.ports]

    def port_remove(self, vm: str, key: str) -> Done:
        port, proto = parse_port_key(key)
        with self.ctx.lock(vm):
            row = records.vm_row(self.ctx, vm)
            spec = InstanceSpec.model_validate_json(row.spec_json)
            match = [p for p in spec.network.ports if (p.host_port, p.proto) == (port, proto)]
            if not match:
                raise NotFound(
                    f"{vm} has no port forward {port}/{proto}",
                    hint="list its port forwards",
                    next_steps=[step(Step.PORT_LIST, vm=vm)],
                )
            forward = match[0]
            new = spec.network.model_copy(
                update={"ports": tuple(p for p in spec.network.ports if p != forward)}
            )
            kept = ""
            with self.ctx.operation(row, "port-remove") as op_id:
                records.save_spec(self.ctx, row.id, spec.model_copy(update={"network": new}))
                if forward.network == "nat":
                    online = row.state in records.ONLINE
                    if online and not self.ctx.driver.live_host_forwards(row.id):
                        kept = " (the running VM keeps it until its next start)"
                    elif online:
                        self.ctx.driver.remove_host_forward(
                            row.id,
                            HostForward(forward.proto, forward.host_port, forward.guest_port),
                        )
                else:
                    with records.network_lock(self.ctx):
                        host.sync(self.ctx)
                self.ctx.event(vm, "port-removed", forward.describe(), op_id)
        message = f"{vm}: port forward {port}/{proto} removed{kept}"
        return Done("port", forward.key, "removed", message)
