"""A VM's NICs on virtual networks: add (hot-plugged when it runs), remove, list.

Each NIC is a TAP (``clt-...``) on the network's bridge that QEMU opens by name. The
spec and the NIC record change together under the VM's lock and ``NETWORK_LOCK``;
whatever fails half way is undone (``gc`` settles a process killed in between).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloudlet.driver.base import HOTPLUG_SLOTS
from cloudlet.engine import network_host as host
from cloudlet.engine import network_records as records
from cloudlet.engine import storage_rows
from cloudlet.engine.network_rows import used_slots
from cloudlet.engine.network_views import NicView
from cloudlet.engine.views import Done
from cloudlet.errors import Conflict, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.spec.instance import InstanceSpec
from cloudlet.spec.names import vm_name
from cloudlet.spec.network import NicSpec, bridge_name, validate_network_name
from cloudlet.spec.states import VMState
from cloudlet.store.models import InstanceRow, NicRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext


class Nics:
    """NIC add/remove/list on the engine's shared context."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def nic_add(self, vm: str, network: str) -> Done:
        from cloudlet.network import require_root, tap

        vm_name(vm)
        records.network_def(self.ctx, network)
        require_root()
        with self.ctx.lock(vm):
            row = self._changeable(vm, f"add a NIC to {vm}", f"hot-plug into {vm}")
            spec = InstanceSpec.model_validate_json(row.spec_json)
            if any(n.network == network for n in spec.network.nics):
                message = f"{vm} already has a NIC on {network}"
                return Done("nic", network, "added", message, changed=False)
            live = row.state == VMState.RUNNING
            slot = self._free_slot(vm, row.id) if live else None
            with self.ctx.operation(row, "nic-add") as op_id, records.network_lock(self.ctx):
                nic = records.add_nic_row(self.ctx, row.id, network, slot)
                try:
                    new = spec.network.model_copy(
                        update={"nics": (*spec.network.nics, NicSpec(network=network))}
                    )
                    records.save_spec(self.ctx, row.id, spec.model_copy(update={"network": new}))
                    host.refresh_dns(self.ctx, {network})
                    if live:
                        host.bring_up(self.ctx, records.network_def(self.ctx, network))
                        tap.ensure(nic.tap, bridge_name(network))
                        host.sync(self.ctx)
                        self.ctx.driver.attach_nic(row.id, records.tap_nic(nic))
                    else:
                        host.sync(self.ctx)
                except BaseException:
                    self._drop_nic(row.id, nic, spec)
                    raise
                self.ctx.event(vm, "nic-added", f"NIC on {network} ({nic.ip})", op_id)
        when = "hot-plugged now" if live else "at its next start"
        message = f"{vm}: NIC on {network} with {nic.ip} ({nic.mac}, {when})"
        return Done("nic", network, "added", message)

    def _changeable(self, vm: str, what: str, plug: str) -> InstanceRow:
        """The VM's row if its NICs may change now: not paused (QEMU cannot plug then)."""
        row = records.vm_row(self.ctx, vm)
        self.ctx.require_state(row, records.ONLINE | records.OFFLINE, what)
        if row.state == VMState.PAUSED:
            raise Conflict(
                f"cannot {plug}: it is paused",
                hint="resume it first",
                next_steps=[step(Step.VM_RESUME, vm=vm)],
            )
        return row

    def _free_slot(self, vm: str, instance_id: str) -> int:
        """The first hot-plug port neither a volume nor a NIC of the VM sits on."""
        used = {d.slot for d in storage_rows.boot_disks(self.ctx, instance_id)}
        used |= used_slots(self.ctx, instance_id)
        free = [s for s in range(HOTPLUG_SLOTS) if s not in used]
        if not free:
            raise Conflict(
                f"{vm} has no free hot-plug port ({HOTPLUG_SLOTS}, shared with volumes)",
                hint="add the NIC while the VM is stopped, or detach a volume",
            )
        return free[0]

    def _drop_nic(self, instance_id: str, nic: NicRow, spec: InstanceSpec) -> None:
        from cloudlet.network import tap

        tap.delete(nic.tap)
        with self.ctx.db.session() as s:
            existing = s.get(NicRow, nic.id)
            if existing is not None:
                s.delete(existing)
        records.save_spec(self.ctx, instance_id, spec)
        host.refresh_dns(self.ctx, {nic.network})
        host.sync(self.ctx)

    def nic_remove(self, vm: str, network: str) -> Done:
        from cloudlet.network import require_root

        vm_name(vm)
        validate_network_name(network)
        require_root()
        with self.ctx.lock(vm):
            row = self._changeable(vm, f"remove a NIC from {vm}", f"unplug from {vm}")
            nic = next(
                (n for n in records.nic_rows(self.ctx, row.id) if n.network == network), None
            )
            if nic is None:
                raise NotFound(
                    f"{vm} has no NIC on {network}",
                    hint="list its NICs",
                    next_steps=[step(Step.NIC_LIST, vm=vm)],
                )
            spec = InstanceSpec.model_validate_json(row.spec_json)
            with self.ctx.operation(row, "nic-remove") as op_id, records.network_lock(self.ctx):
                if row.state == VMState.RUNNING:
                    self.ctx.driver.detach_nic(row.id, records.tap_nic(nic), records.DETACH_TIMEOUT)
                new = spec.network.model_copy(
                    update={
                        "nics": tuple(n for n in spec.network.nics if n.network != network),
                        "ports": tuple(p for p in spec.network.ports if p.network != network),
                    }
                )
                self._drop_nic(row.id, nic, spec.model_copy(update={"network": new}))
                self.ctx.event(vm, "nic-removed", f"NIC on {network} removed", op_id)
        return Done("nic", network, "removed", f"{vm}: NIC on {network} removed")

    def nics(self, vm: str) -> list[NicView]:
        row = self.ctx.row(vm)
        spec = InstanceSpec.model_validate_json(row.spec_json)
        result: list[NicView] = []
        if spec.network.mode == "nat":
            result.append(NicView("nat", "10.0.2.15", "", "", "user-mode NAT"))
        for nic in records.nic_rows(self.ctx, row.id):
            result.append(
                NicView(nic.network, nic.ip, nic.mac, nic.tap, "bridge", f"{vm}.{nic.network}")
            )
        return result
