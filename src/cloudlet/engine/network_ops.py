"""Network use cases: virtual networks, NICs, port forwards and firewalls.

A virtual network is a bridge (``clb-NAME``) with the gateway address, a dnsmasq
serving fixed leases and DNS names ``VM.NETWORK``, and its part of cloudlet's
nftables tables. Each NIC on it is a TAP (``clt-...``) QEMU opens by name. What
cloudlet makes is recorded first (``networks`` and ``nics`` rows, dnsmasq pid and
start time) and removed when its network or VM goes; ``network gc`` removes what a
crash left behind. The nftables tables are always rewritten whole from the records
(``sync``), so they can never drift from what the database says.

User-mode NAT (QEMU's slirp) stays the default NIC and needs no root.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from cloudlet.driver.base import HOTPLUG_SLOTS, HostForward, TapNic
from cloudlet.engine import locks, vm_state
from cloudlet.engine.ports import PORTS_KEY
from cloudlet.errors import Conflict, InvalidInput, NotFound
from cloudlet.spec.instance import FirewallSpec, InstanceSpec, NetworkSpec
from cloudlet.spec.names import group_name, name_path, vm_name
from cloudlet.spec.network import (
    USER_MODE,
    FirewallGroup,
    FirewallRule,
    NetworkDef,
    NicSpec,
    PortForward,
    bridge_name,
    first_host,
    mac_address,
    parse_port_key,
    tap_name,
    validate_network_name,
)
from cloudlet.spec.states import VMState
from cloudlet.store.models import FirewallGroupRow, InstanceRow, NetworkRow, NicRow

if TYPE_CHECKING:
    from cloudlet.engine.context import EngineContext

NETWORK_LOCK = ".network"
DETACH_TIMEOUT = 60.0
_ONLINE = {VMState.RUNNING, VMState.PAUSED}
_OFFLINE = {VMState.STOPPED, VMState.CRASHED, VMState.ERROR}
DEFAULT_POLICY = "inbound: denied except replies and ping; outbound: per network policy"


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
    vms: list[dict[str, str]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- hooks the Engine calls
def split_networks(names: tuple[str, ...]) -> tuple[str, tuple[NicSpec, ...]]:
    """``--network`` values -> (user-mode mode, NICs on virtual networks).

    ``nat`` is user-mode NAT (the default when nothing is given), ``none`` no NIC;
    any other name is a virtual network. Only virtual networks: no user-mode NIC.
    """
    if not names:
        return "nat", ()
    virtual = tuple(n for n in names if n not in USER_MODE)
    if "nat" in names and "none" in names:
        raise InvalidInput("--network nat and none contradict", hint="give one of them")
    if len(set(virtual)) != len(virtual):
        raise InvalidInput("a network is given twice", hint="one NIC per network")
    for name in virtual:
        validate_network_name(name)
    mode = "nat" if "nat" in names or (not virtual and "none" not in names) else "none"
    return mode, tuple(NicSpec(network=n) for n in virtual)


def check_networks(ctx: EngineContext, nics: tuple[NicSpec, ...]) -> None:
    """Before a create: the networks exist and this process may use them."""
    if not nics:
        return
    from cloudlet.network import require_root

    with ctx.db.session() as s:
        for nic in nics:
            if s.get(NetworkRow, nic.network) is None:
                raise NotFound(
                    f"no network named {nic.network!r}", hint="run 'cloudlet network list'"
                )
    require_root()


def allocate(ctx: EngineContext, instance_id: str, nics: tuple[NicSpec, ...]) -> None:
    """Record a NIC row (fixed MAC, address, TAP name) per virtual network of a new VM."""
    if not nics:
        return
    with locks.hold(ctx.paths.locks, NETWORK_LOCK, what="networks"):
        for nic in nics:
            _add_nic_row(ctx, instance_id, nic.network, slot=None)
    NetworkOps(ctx).refresh_dns({n.network for n in nics})


def boot_nics(ctx: EngineContext, instance_id: str) -> tuple[TapNic, ...]:
    return tuple(_tap_nic(r) for r in _nic_rows(ctx, instance_id))


def host_forwards(spec: InstanceSpec) -> tuple[HostForward, ...]:
    return tuple(
        HostForward(f.proto, f.host_port, f.guest_port)
        for f in spec.network.ports
        if f.network == "nat"
    )


def used_slots(ctx: EngineContext, instance_id: str) -> set[int]:
    """Hot-plug ports NICs of this VM sit on (volumes take the others)."""
    return {r.slot for r in _nic_rows(ctx, instance_id) if r.slot is not None}


def ensure_for_boot(ctx: EngineContext, instance_id: str) -> None:
    """Before QEMU starts: its networks are up (after a host reboot too) and TAPs exist."""
    NetworkOps(ctx).ensure_for_boot(instance_id)


def forget(ctx: EngineContext, instance_id: str) -> None:
    """The VM is gone: its TAPs, NIC rows, leases and rules go too."""
    NetworkOps(ctx).forget(instance_id)


# ---------------------------------------------------------------- helpers
def _nic_rows(ctx: EngineContext, instance_id: str) -> list[NicRow]:
    with ctx.db.session() as s:
        return list(
            s.scalars(
                select(NicRow).where(NicRow.instance_id == instance_id).order_by(NicRow.index)
            ).all()
        )


def _tap_nic(row: NicRow) -> TapNic:
    return TapNic(node=f"tn{row.index}", tap=row.tap, mac=row.mac, slot=row.slot)


def _add_nic_row(ctx: EngineContext, instance_id: str, network: str, slot: int | None) -> NicRow:
    """The next free address of the network and the next NIC index of the VM."""
    with ctx.db.session() as s:
        net_row = s.get(NetworkRow, network)
        if net_row is None:
            raise NotFound(f"no network named {network!r}", hint="run 'cloudlet network list'")
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


class NetworkOps:
    """Networks, NICs, port forwards and firewalls, on the engine's shared context."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    @contextmanager
    def _network_lock(self) -> Iterator[None]:
        with locks.hold(self.ctx.paths.locks, NETWORK_LOCK, what="networks"):
            yield

    def _dir(self, name: str) -> Path:
        return name_path(self.ctx.paths.home / "networks", name)

    def _network(self, name: str) -> NetworkDef:
        validate_network_name(name)
        with self.ctx.db.session() as s:
            row = s.get(NetworkRow, name)
        if row is None:
            raise NotFound(f"no network named {name!r}", hint="run 'cloudlet network list'")
        return NetworkDef.model_validate_json(row.spec_json)

    def _networks(self) -> list[NetworkRow]:
        with self.ctx.db.session() as s:
            return list(s.scalars(select(NetworkRow).order_by(NetworkRow.name)).all())

    def _vm(self, name: str) -> InstanceRow:
        return vm_state.reconcile_locked(self.ctx, self.ctx.row(name))

    def _save_spec(self, instance_id: str, spec: InstanceSpec) -> None:
        with self.ctx.db.session() as s:
            row = s.get(InstanceRow, instance_id)
            assert row is not None
            row.spec_json = spec.model_dump_json()

    # ------------------------------------------------------------ host plumbing
    def _leases(self, network: str) -> list[Any]:
        from cloudlet.network.dnsmasq import Lease

        with self.ctx.db.session() as s:
            rows = s.execute(
                select(NicRow.mac, NicRow.ip, InstanceRow.name)
                .join(InstanceRow, InstanceRow.id == NicRow.instance_id)
                .where(NicRow.network == network)
                .order_by(NicRow.ip)
            ).all()
        return [Lease(mac=str(m), ip=str(i), hostname=str(n)) for m, i, n in rows]

    def refresh_dns(self, networks: set[str]) -> None:
        """Rewrite the leases and names of these networks and tell their dnsmasq."""
        from cloudlet.network import dnsmasq

        for name in sorted(networks):
            with self.ctx.db.session() as s:
                row = s.get(NetworkRow, name)
            if row is None:
                continue
            net = NetworkDef.model_validate_json(row.spec_json)
            dnsmasq.write_files(net, self._dir(name), self._leases(name))
            dnsmasq.reload(row.dnsmasq_pid, row.dnsmasq_start)

    def _bring_up(self, net: NetworkDef) -> None:
        """Bridge with the gateway address, dnsmasq running (idempotent)."""
        from cloudlet.network import bridge, dnsmasq

        gateway = ipaddress.IPv4Interface(f"{net.gateway}/{net.network.prefixlen}")
        bridge.ensure(net.bridge, gateway)
        directory = self._dir(net.name)
        dnsmasq.write_files(net, directory, self._leases(net.name))
        with self.ctx.db.session() as s:
            row = s.get(NetworkRow, net.name)
            assert row is not None
            if dnsmasq.is_running(row.dnsmasq_pid, row.dnsmasq_start):
                return
        pid, started = dnsmasq.start(directory)
        with self.ctx.db.session() as s:
            row = s.get(NetworkRow, net.name)
            assert row is not None
            row.dnsmasq_pid, row.dnsmasq_start = pid, started

    def _tear_down(self, row: NetworkRow) -> None:
        from cloudlet.network import bridge, dnsmasq

        dnsmasq.stop(row.dnsmasq_pid, row.dnsmasq_start)
        bridge.delete(row.bridge)
        shutil.rmtree(self._dir(row.name), ignore_errors=True)

    def plan(self) -> str:
        """The nftables ruleset the records ask for."""
        from cloudlet.network import nft

        nets = []
        for row in self._networks():
            net = NetworkDef.model_validate_json(row.spec_json)
            nets.append(nft.NetPlan(net.name, net.bridge, net.subnet, net.mode, net.route_to))
        groups = self._groups()
        nics = []
        with self.ctx.db.session() as s:
            pairs = s.execute(
                select(NicRow, InstanceRow).join(InstanceRow, InstanceRow.id == NicRow.instance_id)
            ).all()
        for nic, vm in pairs:
            spec = InstanceSpec.model_validate_json(vm.spec_json)
            rules = self.effective_rules(spec.firewall, groups)
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
        return nft.ruleset(nets, nics)

    def sync(self) -> None:
        """Rewrite cloudlet's nftables tables from the records (one transaction)."""
        from cloudlet.network import nft

        if not self._networks():
            if self.ctx.paths.home.joinpath("networks").exists():
                nft.remove()
            return
        nft.apply(self.plan(), self.ctx.paths.home / "networks" / "cloudlet.nft")

    def sync_locked(self) -> None:
        with self._network_lock():
            self.sync()

    # ------------------------------------------------------------ networks
    def ensure_for_boot(self, instance_id: str) -> None:
        """Before QEMU starts: its networks are up (after a host reboot too) and TAPs exist."""
        rows = _nic_rows(self.ctx, instance_id)
        if not rows:
            return
        from cloudlet.network import require_root, tap

        require_root()
        with self._network_lock():
            for name in sorted({r.network for r in rows}):
                self._bring_up(self._network(name))
            for row in rows:
                tap.ensure(row.tap, bridge_name(row.network))
            self.sync()

    def forget(self, instance_id: str) -> None:
        """The VM is gone: its TAPs, NIC rows, leases and rules go too."""
        rows = _nic_rows(self.ctx, instance_id)
        if not rows:
            return
        from cloudlet.network import tap

        with self._network_lock():
            for row in rows:
                tap.delete(row.tap)
            with self.ctx.db.session() as s:
                for row in rows:
                    existing = s.get(NicRow, row.id)
                    if existing is not None:
                        s.delete(existing)
            self.refresh_dns({r.network for r in rows})
            self.sync()

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
                hint="give --subnet such as 10.80.1.0/24 and one of --nat, --isolated, --route-to",
            ) from None
        require_root()
        with self._network_lock():
            existing = self._networks()
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
                self._bring_up(net)
                self.sync()
            except BaseException:
                with self.ctx.db.session() as s:
                    made = s.get(NetworkRow, name)
                if made is not None:
                    self._tear_down(made)
                    with self.ctx.db.session() as s:
                        fresh = s.get(NetworkRow, name)
                        if fresh is not None:
                            s.delete(fresh)
                self.sync()
                raise
        return self.network(name)

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
                {
                    "name": str(n),
                    "ip": str(i),
                    "mac": str(m),
                    "tap": str(t),
                    "dns": f"{n}.{net.name}",
                }
                for n, i, m, t in vms
            ],
        )

    def _routed_from(self, name: str) -> list[str]:
        found = []
        for row in self._networks():
            if name in NetworkDef.model_validate_json(row.spec_json).route_to:
                found.append(row.name)
        return found

    def networks(self) -> list[NetworkView]:
        return [self._view(r) for r in self._networks()]

    def network(self, name: str) -> NetworkView:
        self._network(name)
        with self.ctx.db.session() as s:
            row = s.get(NetworkRow, name)
        assert row is not None
        return self._view(row)

    def network_delete(self, name: str) -> str:
        from cloudlet.network import require_root

        self._network(name)
        require_root()
        with self._network_lock():
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
                    hint=f"remove their NICs ('cloudlet nic remove VM {name}') or delete them",
                )
            routed = self._routed_from(name)
            if routed:
                raise Conflict(
                    f"network {', '.join(routed)} routes to {name}",
                    hint="delete those networks first",
                )
            assert row is not None
            self._tear_down(row)
            with self.ctx.db.session() as s:
                fresh = s.get(NetworkRow, name)
                if fresh is not None:
                    s.delete(fresh)
            self.sync()
        return f"network {name} deleted (bridge, dnsmasq and rules removed)"

    def gc(self) -> list[str]:
        """Remove what a crash left: links with cloudlet's prefixes nobody records, stray
        dnsmasq processes, NIC records of deleted VMs; then rewrite the rules."""
        from cloudlet.host import processes
        from cloudlet.network import BRIDGE_PREFIX, TAP_PREFIX, dnsmasq, links, nft, require_root

        require_root()
        removed: list[str] = []
        with self._network_lock():
            with self.ctx.db.session() as s:
                vm_ids = set(s.scalars(select(InstanceRow.id)).all())
                for nic in s.scalars(select(NicRow)).all():
                    if nic.instance_id not in vm_ids:
                        s.delete(nic)
                        removed.append(f"record of NIC {nic.tap} (its VM is gone)")
            removed += self._settle_nics()
            with self.ctx.db.session() as s:
                taps = set(s.scalars(select(NicRow.tap)).all())
            rows = self._networks()
            bridges = {r.bridge for r in rows}
            for link in links.link_names():
                stray_bridge = link.startswith(BRIDGE_PREFIX) and link not in bridges
                stray_tap = link.startswith(TAP_PREFIX) and link not in taps
                if (stray_bridge or stray_tap) and links.delete(link):
                    removed.append(f"{'bridge' if stray_bridge else 'TAP'} {link}")
            # dnsmasq of networks that are no longer recorded, found by their pid files
            known = {r.name for r in rows}
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
                if (
                    pid
                    and dnsmasq.is_dnsmasq(pid)
                    and any(conf in a for a in processes.cmdline(pid))
                ):
                    dnsmasq.stop(pid, processes.start_time(pid))
                    removed.append(f"dnsmasq {pid} of deleted network {name}")
                shutil.rmtree(pid_file.parent, ignore_errors=True)
            for row in rows:  # recorded networks whose dnsmasq died: restart it
                if not dnsmasq.is_running(row.dnsmasq_pid, row.dnsmasq_start):
                    with self.ctx.db.session() as s:
                        used = s.scalar(select(NicRow.id).where(NicRow.network == row.name))
                    if used is not None:
                        self._bring_up(NetworkDef.model_validate_json(row.spec_json))
            if not rows:
                if nft.tables_present():
                    nft.remove()
                    removed.append("nftables tables inet/bridge cloudlet")
            else:
                self.sync()
        return removed

    def _settle_nics(self) -> list[str]:
        """A nic add/remove killed half way: make the NIC records match the VM's spec."""
        settled: list[str] = []
        with self.ctx.db.session() as s:
            vms = s.scalars(select(InstanceRow)).all()
        for vm in vms:
            wanted = {
                n.network for n in InstanceSpec.model_validate_json(vm.spec_json).network.nics
            }
            rows = _nic_rows(self.ctx, vm.id)
            for row in rows:
                if row.network not in wanted:
                    with self.ctx.db.session() as s:
                        existing = s.get(NicRow, row.id)
                        if existing is not None:
                            s.delete(existing)
                    settled.append(
                        f"record of NIC {row.tap} ({vm.name} has no NIC on {row.network})"
                    )
            missing = wanted - {r.network for r in rows}
            for network in sorted(missing):
                with self.ctx.db.session() as s:
                    known = s.get(NetworkRow, network) is not None
                if known:
                    row = _add_nic_row(self.ctx, vm.id, network, slot=None)
                    settled.append(f"missing record of {vm.name}'s NIC on {network}: made {row.ip}")
        return settled

    # ------------------------------------------------------------ NICs
    def nic_add(self, vm: str, network: str) -> str:
        from cloudlet.engine import storage_rows
        from cloudlet.network import require_root, tap

        vm_name(vm)
        self._network(network)
        require_root()
        with self.ctx.lock(vm):
            row = self._vm(vm)
            self.ctx.require_state(row, _ONLINE | _OFFLINE, f"add a NIC to {vm}")
            if row.state == VMState.PAUSED:
                raise Conflict(f"cannot hot-plug into {vm}: it is paused", hint="resume it first")
            spec = InstanceSpec.model_validate_json(row.spec_json)
            if any(n.network == network for n in spec.network.nics):
                return f"{vm} already has a NIC on {network}"
            live = row.state == VMState.RUNNING
            slot = None
            if live:
                used = {d.slot for d in storage_rows.boot_disks(self.ctx, row.id)}
                used |= used_slots(self.ctx, row.id)
                free = [s for s in range(HOTPLUG_SLOTS) if s not in used]
                if not free:
                    raise Conflict(
                        f"{vm} has no free hot-plug port ({HOTPLUG_SLOTS}, shared with volumes)",
                        hint="add the NIC while the VM is stopped, or detach a volume",
                    )
                slot = free[0]
            with self.ctx.operation(row, "nic-add") as op_id, self._network_lock():
                nic = _add_nic_row(self.ctx, row.id, network, slot)
                try:
                    new = spec.network.model_copy(
                        update={"nics": (*spec.network.nics, NicSpec(network=network))}
                    )
                    self._save_spec(row.id, spec.model_copy(update={"network": new}))
                    self.refresh_dns({network})
                    if live:
                        self._bring_up(self._network(network))
                        tap.ensure(nic.tap, bridge_name(network))
                        self.sync()
                        self.ctx.driver.attach_nic(row.id, _tap_nic(nic))
                    else:
                        self.sync()
                except BaseException:
                    self._drop_nic(row.id, nic, spec)
                    raise
                self.ctx.event(vm, "nic-added", f"NIC on {network} ({nic.ip})", op_id)
        when = "hot-plugged now" if live else "at its next start"
        return f"{vm}: NIC on {network} with {nic.ip} ({nic.mac}, {when})"

    def _drop_nic(self, instance_id: str, nic: NicRow, spec: InstanceSpec) -> None:
        from cloudlet.network import tap

        tap.delete(nic.tap)
        with self.ctx.db.session() as s:
            existing = s.get(NicRow, nic.id)
            if existing is not None:
                s.delete(existing)
        self._save_spec(instance_id, spec)
        self.refresh_dns({nic.network})
        self.sync()

    def nic_remove(self, vm: str, network: str) -> str:
        from cloudlet.network import require_root

        vm_name(vm)
        validate_network_name(network)
        require_root()
        with self.ctx.lock(vm):
            row = self._vm(vm)
            self.ctx.require_state(row, _ONLINE | _OFFLINE, f"remove a NIC from {vm}")
            if row.state == VMState.PAUSED:
                raise Conflict(f"cannot unplug from {vm}: it is paused", hint="resume it first")
            nic = next((n for n in _nic_rows(self.ctx, row.id) if n.network == network), None)
            if nic is None:
                raise NotFound(f"{vm} has no NIC on {network}", hint=f"see 'cloudlet show {vm}'")
            spec = InstanceSpec.model_validate_json(row.spec_json)
            with self.ctx.operation(row, "nic-remove") as op_id, self._network_lock():
                if row.state == VMState.RUNNING:
                    self.ctx.driver.detach_nic(row.id, _tap_nic(nic), DETACH_TIMEOUT)
                new = spec.network.model_copy(
                    update={
                        "nics": tuple(n for n in spec.network.nics if n.network != network),
                        "ports": tuple(p for p in spec.network.ports if p.network != network),
                    }
                )
                self._drop_nic(row.id, nic, spec.model_copy(update={"network": new}))
                self.ctx.event(vm, "nic-removed", f"NIC on {network} removed", op_id)
        return f"{vm}: NIC on {network} removed"

    def nics(self, vm: str) -> list[dict[str, Any]]:
        row = self.ctx.row(vm)
        spec = InstanceSpec.model_validate_json(row.spec_json)
        result: list[dict[str, Any]] = []
        if spec.network.mode == "nat":
            result.append(
                {"network": "nat", "ip": "10.0.2.15", "mac": "", "tap": "", "kind": "user-mode NAT"}
            )
        for nic in _nic_rows(self.ctx, row.id):
            result.append(
                {
                    "network": nic.network,
                    "ip": nic.ip,
                    "mac": nic.mac,
                    "tap": nic.tap,
                    "kind": "bridge",
                    "dns": f"{vm}.{nic.network}",
                }
            )
        return result

    # ------------------------------------------------------------ port forwards
    def port_add(self, vm: str, text: str, network: str | None = None) -> str:
        from cloudlet.spec.network import parse_port_forward

        if network is not None and network not in USER_MODE:
            validate_network_name(network)
        # The host ports lock spans the check that a port is free and the spec that takes
        # it: two VMs cannot both be given one host port.
        with self.ctx.lock(vm), locks.hold(self.ctx.paths.locks, PORTS_KEY, what="host ports"):
            row = self._vm(vm)
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
                        hint="give --network NAME of one of its networks",
                    )
            elif not any(n.network == target for n in spec.network.nics):
                raise NotFound(f"{vm} has no NIC on {target}", hint=f"see 'cloudlet nic list {vm}'")
            self._check_host_port_free(forward, row.ssh_port)
            new = spec.network.model_copy(update={"ports": (*spec.network.ports, forward)})
            changed = spec.model_copy(update={"network": new})
            live = row.state in _ONLINE
            # passt (the default user-mode NAT) binds forwards only when the VM starts
            live = live and (target != "nat" or self.ctx.driver.live_host_forwards(row.id))
            with self.ctx.operation(row, "port-add") as op_id:
                self._save_spec(row.id, changed)
                try:
                    if target == "nat":
                        if live:
                            self.ctx.driver.add_host_forward(
                                row.id,
                                HostForward(forward.proto, forward.host_port, forward.guest_port),
                            )
                    else:
                        with self._network_lock():
                            self.sync()
                except BaseException:
                    self._save_spec(row.id, spec)
                    raise
                self.ctx.event(vm, "port-added", forward.describe(), op_id)
        if target == "nat":
            how = "now" if live else "at its next start"
            where = f"127.0.0.1:{forward.host_port} (user-mode NAT, {how})"
        else:
            where = f"port {forward.host_port} of this host's addresses (DNAT to {target})"
        return f"{vm}: {forward.proto} {where} -> guest port {forward.guest_port}"

    def _check_host_port_free(self, forward: PortForward, own_ssh: int | None) -> None:
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

    def ports(self, vm: str) -> list[dict[str, Any]]:
        spec = InstanceSpec.model_validate_json(self.ctx.row(vm).spec_json)
        return [p.model_dump() for p in spec.network.ports]

    def port_remove(self, vm: str, key: str) -> str:
        port, proto = parse_port_key(key)
        with self.ctx.lock(vm):
            row = self._vm(vm)
            spec = InstanceSpec.model_validate_json(row.spec_json)
            match = [p for p in spec.network.ports if (p.host_port, p.proto) == (port, proto)]
            if not match:
                raise NotFound(
                    f"{vm} has no port forward {port}/{proto}",
                    hint=f"see 'cloudlet port list {vm}'",
                )
            forward = match[0]
            new = spec.network.model_copy(
                update={"ports": tuple(p for p in spec.network.ports if p != forward)}
            )
            kept = ""
            with self.ctx.operation(row, "port-remove") as op_id:
                self._save_spec(row.id, spec.model_copy(update={"network": new}))
                if forward.network == "nat":
                    online = row.state in _ONLINE
                    if online and not self.ctx.driver.live_host_forwards(row.id):
                        kept = " (the running VM keeps it until its next start)"
                    elif online:
                        self.ctx.driver.remove_host_forward(
                            row.id,
                            HostForward(forward.proto, forward.host_port, forward.guest_port),
                        )
                else:
                    with self._network_lock():
                        self.sync()
                self.ctx.event(vm, "port-removed", forward.describe(), op_id)
        return f"{vm}: port forward {port}/{proto} removed{kept}"

    # ------------------------------------------------------------ firewall
    def _groups(self) -> dict[str, FirewallGroup]:
        with self.ctx.db.session() as s:
            rows = s.scalars(select(FirewallGroupRow)).all()
        return {
            r.name: FirewallGroup(
                name=r.name,
                rules=tuple(FirewallRule.model_validate(x) for x in json.loads(r.rules_json)),
            )
            for r in rows
        }

    @staticmethod
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

    def _change_firewall(self, vm: str, kind: str, change: Any) -> InstanceSpec:
        with self.ctx.lock(vm):
            row = self._vm(vm)
            spec = InstanceSpec.model_validate_json(row.spec_json)
            new = spec.model_copy(update={"firewall": change(spec.firewall)})
            if new == spec:
                return spec
            with self.ctx.operation(row, kind):
                self._save_spec(row.id, new)
                if _nic_rows(self.ctx, row.id):
                    with self._network_lock():
                        self.sync()
        return new

    def firewall_allow(self, vm: str, rule: FirewallRule) -> str:
        def change(fw: FirewallSpec) -> FirewallSpec:
            if rule in fw.own_rules():
                return fw
            return fw.model_copy(update={"rules": (*fw.rules, rule)})

        self._change_firewall(vm, "firewall", change)
        return f"{vm}: allowed {rule.describe()}"

    def firewall_remove(self, vm: str, rule: FirewallRule) -> str:
        spec = InstanceSpec.model_validate_json(self.ctx.row(vm).spec_json)
        if rule not in spec.firewall.own_rules():
            raise NotFound(
                f"{vm} has no rule {rule.describe()}", hint=f"see 'cloudlet firewall list {vm}'"
            )

        def change(fw: FirewallSpec) -> FirewallSpec:
            ports = tuple(p for p in fw.inbound_ports if FirewallRule(port=p) != rule)
            rules = tuple(r for r in fw.rules if r != rule)
            return fw.model_copy(update={"inbound_ports": ports, "rules": rules})

        self._change_firewall(vm, "firewall", change)
        return f"{vm}: removed {rule.describe()}"

    def group_create(self, name: str, rules: list[FirewallRule]) -> str:
        group_name(name)  # a one-line error, not the model's ValidationError
        group = FirewallGroup(name=name, rules=tuple(rules))
        with self._network_lock(), self.ctx.db.session() as s:
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
        return f"firewall group {name}: " + (", ".join(r.describe() for r in rules) or "no rules")

    def groups(self) -> list[dict[str, Any]]:
        users: dict[str, list[str]] = {}
        with self.ctx.db.session() as s:
            rows = s.scalars(select(InstanceRow)).all()
        for row in rows:
            for g in InstanceSpec.model_validate_json(row.spec_json).firewall.groups:
                users.setdefault(g, []).append(row.name)
        return [
            {
                "name": g.name,
                "rules": [r.describe() for r in g.rules],
                "used_by": sorted(users.get(g.name, [])),
            }
            for g in sorted(self._groups().values(), key=lambda g: g.name)
        ]

    def group_delete(self, name: str) -> str:
        group_name(name)
        users = next((g["used_by"] for g in self.groups() if g["name"] == name), None)
        if users is None:
            raise NotFound(
                f"no firewall group named {name!r}", hint="run 'cloudlet firewall group list'"
            )
        if users:
            raise Conflict(
                f"firewall group {name} is applied to {', '.join(users)}",
                hint="unapply it first ('cloudlet firewall unapply VM GROUP')",
            )
        with self._network_lock(), self.ctx.db.session() as s:
            row = s.get(FirewallGroupRow, name)
            if row is not None:
                s.delete(row)
        return f"firewall group {name} deleted"

    def firewall_apply(self, vm: str, group: str, *, apply: bool = True) -> str:
        vm_name(vm)
        group_name(group)
        if apply and group not in self._groups():
            raise NotFound(
                f"no firewall group named {group!r}",
                hint="create it with 'cloudlet firewall group create'",
            )

        def change(fw: FirewallSpec) -> FirewallSpec:
            groups = tuple(g for g in fw.groups if g != group)
            return fw.model_copy(update={"groups": (*groups, group) if apply else groups})

        self._change_firewall(vm, "firewall", change)
        return f"{vm}: firewall group {group} {'applied' if apply else 'removed'}"

    def firewall_list(self, vm: str) -> dict[str, Any]:
        row = self.ctx.row(vm)
        spec = InstanceSpec.model_validate_json(row.spec_json)
        rules = self.effective_rules(spec.firewall, self._groups())
        return {
            "vm": vm,
            "default": DEFAULT_POLICY,
            "enforced_on": [n.network for n in spec.network.nics],
            "groups": list(spec.firewall.groups),
            "rules": [
                {"port": r.port, "proto": r.proto, "source": r.source or "any", "from": origin}
                for r, origin in rules
            ],
            "forwards": [p.describe() for p in spec.network.ports],
        }


def network_spec(mode: str, restrict: bool, nics: tuple[NicSpec, ...]) -> NetworkSpec:
    return NetworkSpec(mode=mode, restrict=restrict, nics=nics)  # type: ignore[arg-type]
