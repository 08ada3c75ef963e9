"""Virtual networks: create, list, show, delete, and the clean-up after a crash.

What cloudlet makes is recorded first (``networks`` and ``nics`` rows, dnsmasq pid and
start time) and removed when its network or VM goes; ``gc`` removes what a crash left
behind. Every change holds ``NETWORK_LOCK``.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from sqlalchemy import select

from cloudlet.engine import network_host as host
from cloudlet.engine import network_records as records
from cloudlet.engine.network_rows import NetworkView, NetworkVmView
from cloudlet.engine.views import Cleanup, Done
from cloudlet.errors import Conflict, InvalidInput, NotFound
from cloudlet.next_steps import Step, step
from cloudlet.spec.instance import InstanceSpec
from cloudlet.spec.network import NetworkDef, validate_network_name
from cloudlet.store.models import InstanceRow, NetworkRow, NicRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext


class Networks:
    """Network create/list/delete/gc on the engine's shared context."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def network_create(
        self, name: str, subnet: str, *, mode: str = "nat", route_to: tuple[str, ...] = ()
    ) -> NetworkView:
        from cloudlet.network import require_root

        validate_network_name(name)
        try:
            net = NetworkDef(name=name, subnet=subnet, mode=mode, route_to=route_to)  # type: ignore[arg-type]
        except ValueError as exc:
            message = str(exc).splitlines()[-1].strip() if str(exc) else "invalid"
            raise InvalidInput(
                f"invalid network {name}: {message}",
                hint="give an IPv4 subnet such as 10.80.1.0/24 and one mode: nat, isolated "
                "or routed to other networks",
            ) from None
        require_root()
        with records.network_lock(self.ctx):
            existing = records.network_rows(self.ctx)
            if any(r.name == name for r in existing):
                raise Conflict(f"a network named {name!r} already exists", hint="pick another")
            for row in existing:
                other = NetworkDef.model_validate_json(row.spec_json)
                if other.network.overlaps(net.network):
                    raise Conflict(
                        f"subnet {net.subnet} overlaps network {other.name} ({other.subnet})",
                        hint="pick another subnet",
                    )
            names = {r.name for r in existing}
            for target in route_to:
                if target not in names:
                    raise NotFound(
                        f"no network named {target!r} to route to", hint="create it first"
                    )
            with self.ctx.db.session() as s:
                s.add(NetworkRow(name=name, spec_json=net.model_dump_json(), bridge=net.bridge))
            try:
                host.bring_up(self.ctx, net)
                host.sync(self.ctx)
            except BaseException:
                with self.ctx.db.session() as s:
                    made = s.get(NetworkRow, name)
                if made is not None:
                    host.tear_down(self.ctx, made)
                    self._delete_row(name)
                host.sync(self.ctx)
                raise
        return self.network(name)

    def _delete_row(self, name: str) -> None:
        with self.ctx.db.session() as s:
            fresh = s.get(NetworkRow, name)
            if fresh is not None:
                s.delete(fresh)

    def _view(self, row: NetworkRow) -> NetworkView:
        from cloudlet.network import dnsmasq

        net = NetworkDef.model_validate_json(row.spec_json)
        with self.ctx.db.session() as s:
            vms = s.execute(
                select(InstanceRow.name, NicRow.ip, NicRow.mac, NicRow.tap)
                .join(InstanceRow, InstanceRow.id == NicRow.instance_id)
                .where(NicRow.network == row.name)
                .order_by(NicRow.ip)
            ).all()
        return NetworkView(
            name=net.name,
            subnet=net.subnet,
            mode=net.mode,
            route_to=list(net.route_to) + self._routed_from(net.name),
            bridge=row.bridge,
            gateway=str(net.gateway),
            dnsmasq_pid=row.dnsmasq_pid,
            dnsmasq_running=dnsmasq.is_running(row.dnsmasq_pid, row.dnsmasq_start),
            vms=[
                NetworkVmView(str(n), str(i), str(m), str(t), f"{n}.{net.name}")
                for n, i, m, t in vms
            ],
        )

    def _routed_from(self, name: str) -> list[str]:
        found = []
        for row in records.network_rows(self.ctx):
            if name in NetworkDef.model_validate_json(row.spec_json).route_to:
                found.append(row.name)
        return found

    def networks(self) -> list[NetworkView]:
        return [self._view(r) for r in records.network_rows(self.ctx)]

    def network(self, name: str) -> NetworkView:
        records.network_def(self.ctx, name)
        with self.ctx.db.session() as s:
            row = s.get(NetworkRow, name)
        assert row is not None
        return self._view(row)

    def network_delete(self, name: str) -> Done:
        from cloudlet.network import require_root

        records.network_def(self.ctx, name)
        require_root()
        with records.network_lock(self.ctx):
            with self.ctx.db.session() as s:
                users = s.execute(
                    select(InstanceRow.name)
                    .join(NicRow, NicRow.instance_id == InstanceRow.id)
                    .where(NicRow.network == name)
                ).all()
                row = s.get(NetworkRow, name)
            if users:
                vms = ", ".join(sorted(str(u[0]) for u in users))
                raise Conflict(
                    f"network {name} has VMs attached: {vms}",
                    hint="remove their NICs on it, or delete them",
                    next_steps=[step(Step.NIC_REMOVE, network=name)],
                )
            routed = self._routed_from(name)
            if routed:
                raise Conflict(
                    f"network {', '.join(routed)} routes to {name}",
                    hint="delete those networks first",
                )
            assert row is not None
            host.tear_down(self.ctx, row)
            self._delete_row(name)
            host.sync(self.ctx)
        message = f"network {name} deleted (bridge, dnsmasq and rules removed)"
        return Done("network", name, "deleted", message)

    def gc(self) -> list[Cleanup]:
        """Remove what a crash left: links with cloudlet's prefixes nobody records, stray
        dnsmasq processes, NIC records of deleted VMs; then rewrite the rules. One item
        for each thing removed (or NIC record made)."""
        from cloudlet.network import BRIDGE_PREFIX, TAP_PREFIX, links, nft, require_root

        require_root()
        removed: list[Cleanup] = []
        with records.network_lock(self.ctx):
            with self.ctx.db.session() as s:
                vm_ids = set(s.scalars(select(InstanceRow.id)).all())
                for nic in s.scalars(select(NicRow)).all():
                    if nic.instance_id not in vm_ids:
                        s.delete(nic)
                        removed.append(
                            Cleanup(
                                "NIC record",
                                nic.tap,
                                "removed",
                                f"record of NIC {nic.tap} (its VM is gone)",
                            )
                        )
            removed += self._settle_nics()
            with self.ctx.db.session() as s:
                taps = set(s.scalars(select(NicRow.tap)).all())
            rows = records.network_rows(self.ctx)
            bridges = {r.bridge for r in rows}
            for link in links.link_names():
                stray_bridge = link.startswith(BRIDGE_PREFIX) and link not in bridges
                stray_tap = link.startswith(TAP_PREFIX) and link not in taps
                if (stray_bridge or stray_tap) and links.delete(link):
                    what = "bridge" if stray_bridge else "TAP"
                    removed.append(Cleanup(what, link, "removed", f"{what} {link}"))
            removed += self._stop_stray_dnsmasq({r.name for r in rows})
            self._restart_dead_dnsmasq(rows)
            if not rows:
                if nft.tables_present():
                    nft.remove()
                    tables = "inet/bridge cloudlet"
                    removed.append(
                        Cleanup("nftables", tables, "removed", f"nftables tables {tables}")
                    )
            else:
                host.sync(self.ctx)
        return removed

    def _stop_stray_dnsmasq(self, known: set[str]) -> list[Cleanup]:
        """dnsmasq of networks that are no longer recorded, found by their pid files."""
        from cloudlet.host import processes
        from cloudlet.network import dnsmasq

        removed: list[Cleanup] = []
        base = self.ctx.paths.home / "networks"
        for pid_file in sorted(base.glob("*/dnsmasq.pid")) if base.exists() else []:
            name = pid_file.parent.name
            if name in known:
                continue
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                pid = 0
            conf = str(pid_file.parent / "dnsmasq.conf")
            if pid and dnsmasq.is_dnsmasq(pid) and any(conf in a for a in processes.cmdline(pid)):
                dnsmasq.stop(pid, processes.start_time(pid))
                said = f"dnsmasq {pid} of deleted network {name}"
                removed.append(Cleanup("dnsmasq", str(pid), "removed", said))
            shutil.rmtree(pid_file.parent, ignore_errors=True)
        return removed

    def _restart_dead_dnsmasq(self, rows: list[NetworkRow]) -> None:
        """Recorded networks in use whose dnsmasq died: restart it."""
        from cloudlet.network import dnsmasq

        for row in rows:
            if not dnsmasq.is_running(row.dnsmasq_pid, row.dnsmasq_start):
                with self.ctx.db.session() as s:
                    used = s.scalar(select(NicRow.id).where(NicRow.network == row.name))
                if used is not None:
                    host.bring_up(self.ctx, NetworkDef.model_validate_json(row.spec_json))

    def _settle_nics(self) -> list[Cleanup]:
        """A nic add/remove killed half way: make the NIC records match the VM's spec."""
        settled: list[Cleanup] = []
        with self.ctx.db.session() as s:
            vms = s.scalars(select(InstanceRow)).all()
        for vm in vms:
            wanted = {
                n.network for n in InstanceSpec.model_validate_json(vm.spec_json).network.nics
            }
            rows = records.nic_rows(self.ctx, vm.id)
            for row in rows:
                if row.network not in wanted:
                    with self.ctx.db.session() as s:
                        existing = s.get(NicRow, row.id)
                        if existing is not None:
                            s.delete(existing)
                    said = f"record of NIC {row.tap} ({vm.name} has no NIC on {row.network})"
                    settled.append(Cleanup("NIC record", row.tap, "removed", said))
            missing = wanted - {r.network for r in rows}
            for network in sorted(missing):
                with self.ctx.db.session() as s:
                    known = s.get(NetworkRow, network) is not None
                if known:
                    row = records.add_nic_row(self.ctx, vm.id, network, slot=None)
                    said = f"missing record of {vm.name}'s NIC on {network}: made {row.ip}"
                    settled.append(Cleanup("NIC record", row.tap, "made", said))
        return settled
