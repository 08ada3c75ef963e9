"""Virtual networks: the pure builders (nftables, dnsmasq), the specs, and the use cases
on the fake driver with the host plumbing (ip, dnsmasq, nft) replaced by a recorder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cloudlet.driver.fake.driver import FakeDriver
from cloudlet.engine.engine import Engine
from cloudlet.engine.network_rows import split_networks
from cloudlet.errors import Conflict, InvalidInput, MissingDependency, NeedsRoot, NotFound
from cloudlet.network import bridge, dnsmasq, links, nft, tap
from cloudlet.spec.document import VMBody
from cloudlet.spec.instance import FirewallSpec
from cloudlet.spec.network import (
    FirewallRule,
    NetworkDef,
    PortForward,
    parse_port_forward,
    parse_rule,
    validate_network_name,
)
from cloudlet.spec.units import GIB
from tests.fakes import make_fake_engine

# ---------------------------------------------------------------- nftables builder
NETS = [
    nft.NetPlan("backend", "clb-backend", "10.80.1.0/24", "nat"),
    nft.NetPlan("lab", "clb-lab", "10.80.2.0/24", "isolated"),
    nft.NetPlan("dmz", "clb-dmz", "10.80.3.0/24", "routed", ("backend",)),
]
WEB = nft.NicPlan(
    "web1", "backend", "clt-abcdef121", "52:54:00:aa:bb:cc", "10.80.1.10",
    (FirewallRule(port=22, source="10.80.3.0/24"), FirewallRule(port=80)),
    (PortForward(host_port=8080, guest_port=80, network="backend"),),
)  # fmt: skip


def test_ruleset_isolates_routes_and_masquerades() -> None:
    text = nft.ruleset(NETS, [WEB])
    # both tables are replaced in one transaction
    assert text.startswith("table inet cloudlet\ndelete table inet cloudlet\n")
    # routed pair: no drop between backend and dmz, either way
    assert 'iifname "clb-dmz" oifname "clb-backend" drop' not in text
    assert 'iifname "clb-backend" oifname "clb-dmz" drop' not in text
    # isolated: dropped towards every other network and beyond the host
    for other in ("clb-backend", "clb-dmz"):
        assert f'iifname "clb-lab" oifname "{other}" drop' in text
        assert f'iifname "{other}" oifname "clb-lab" drop' in text
    assert 'iifname "clb-lab" oifname != {' in text
    assert 'iifname "clb-dmz" oifname != {' in text  # routed: no way out either
    assert 'iifname "clb-backend" oifname != {' not in text  # nat: goes out
    assert text.count("masquerade") == 1 and "ip saddr 10.80.1.0/24 oifname" in text


def test_ruleset_per_vm_chain_forwards_and_anti_spoofing() -> None:
    text = nft.ruleset(NETS, [WEB])
    assert "ip daddr vmap { 10.80.1.10 : jump vm_clt_abcdef121 }" in text
    chain = text.split("chain vm_clt_abcdef121 {")[1].split("}")[0]
    assert [line.strip() for line in chain.strip().splitlines()] == [
        "icmp type echo-request accept",
        "ip saddr 10.80.3.0/24 tcp dport 22 accept",
        "tcp dport 80 accept",
        "drop",
    ]
    dnat = "fib daddr type local tcp dport 8080 dnat ip to 10.80.1.10:80"
    assert text.count(dnat) == 2  # from outside (prerouting) and from the host (output)
    assert 'iifname "clt-abcdef121" ether saddr != 52:54:00:aa:bb:cc drop' in text
    assert "ip saddr != { 0.0.0.0, 10.80.1.10 } drop" in text


def test_ruleset_without_networks_only_drops_the_tables() -> None:
    assert nft.ruleset([], []).splitlines() == [
        "table inet cloudlet",
        "delete table inet cloudlet",
        "table bridge cloudlet",
        "delete table bridge cloudlet",
    ]


def test_ruleset_refuses_names_that_could_inject() -> None:
    bad = nft.NicPlan("x", "backend", 'clt-a" accept', "52:54:00:aa:bb:cc", "10.80.1.10")
    with pytest.raises(ValueError):
        nft.ruleset(NETS, [bad])
    with pytest.raises(ValueError):
        nft.ruleset(NETS, [nft.NicPlan("x", "backend", "clt-a", "52:54 drop", "10.80.1.10")])


def _chain(text: str, table: str, chain: str) -> list[str]:
    body = text.split(f"table {table} cloudlet {{")[1].split(f"  chain {chain} {{\n")[1]
    return [line.strip() for line in body.split("\n  }\n")[0].splitlines()]


def test_ruleset_isolation_drops_come_before_any_dnat_accept() -> None:
    fwd = _chain(nft.ruleset(NETS, [WEB]), "inet", "forward")
    dnat = fwd.index("ct status dnat accept")
    isolation = [i for i, line in enumerate(fwd) if line.startswith('iifname "clb-')]
    # lab -> backend, lab -> dmz, backend -> lab, dmz -> lab, lab and dmz -> outside
    assert len(isolation) == 6
    assert max(isolation) < dnat, fwd
    # what comes from outside reaches a bridge only as a port forward
    assert fwd[dnat + 1].startswith("iifname != {") and fwd[dnat + 1].endswith("drop")
    assert not [
        line for line in fwd[:dnat] if line.endswith("accept") and "established" not in line
    ]


def test_ruleset_covers_ipv6() -> None:
    text = nft.ruleset(NETS, [WEB])
    bridges = '{ "clb-backend", "clb-dmz", "clb-lab" }'
    fwd = _chain(text, "inet", "forward")
    assert fwd[1:3] == [
        f"meta nfproto ipv6 iifname {bridges} drop",
        f"meta nfproto ipv6 oifname {bridges} drop",
    ]
    inp = _chain(text, "inet", "input")
    assert inp[1:3] == [f"iifname != {bridges} accept", "meta nfproto ipv6 drop"]
    br = _chain(text, "bridge", "prerouting")
    # every guest frame that is not IPv4 or ARP (IPv6, VLAN-tagged) goes before the
    # per-TAP rules, which only know IPv4
    allow = br.index('iifname "clt-*" ether type != { ip, arp } drop')
    assert allow < min(i for i, line in enumerate(br) if "clt-abcdef121" in line)


def test_ruleset_guests_cannot_serve_dhcp_advertise_routes_or_spoof_arp() -> None:
    br = _chain(nft.ruleset(NETS, [WEB]), "bridge", "prerouting")
    assert br[1:4] == [
        'iifname "clt-*" udp sport 67 drop',
        'iifname "clt-*" udp sport 547 drop',
        'iifname "clt-*" icmpv6 type nd-router-advert drop',
    ]
    assert 'iifname "clt-abcdef121" ether type arp arp saddr ether != 52:54:00:aa:bb:cc drop' in br
    # the guards hold with no VM at all (a TAP made before its rules)
    assert 'iifname "clt-*" udp sport 67 drop' in nft.ruleset(NETS, [])


def _fake_proc(
    tmp: Path, mp: pytest.MonkeyPatch, *, module_loads: bool
) -> tuple[Path, list[list[str]]]:
    proc = tmp / "proc"
    (proc / "ipv4").mkdir(parents=True)
    (proc / "ipv4/ip_forward").write_text("0\n")
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **_: object) -> None:
        calls.append([Path(argv[0]).name, *argv[1:]])
        if module_loads:
            (proc / "bridge").mkdir()
            for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
                (proc / "bridge" / name).write_text("0\n")

    mp.setattr(links, "_PROC", proc)
    mp.setattr(links, "run", fake_run)
    mp.setattr(links, "which_sbin", lambda program, hint: f"/sbin/{program}")
    return proc, calls


def test_br_netfilter_is_loaded_when_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, calls = _fake_proc(tmp_path, monkeypatch, module_loads=True)
    links.enable_forwarding()
    assert calls == [["modprobe", "br_netfilter"]]
    assert (proc / "ipv4/ip_forward").read_text() == "1\n"
    assert (proc / "bridge/bridge-nf-call-iptables").read_text() == "1\n"
    assert (proc / "bridge/bridge-nf-call-ip6tables").read_text() == "1\n"
    links.enable_forwarding()  # loaded now: no second modprobe
    assert len(calls) == 1


def test_br_netfilter_that_cannot_load_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_proc(tmp_path, monkeypatch, module_loads=False)
    with pytest.raises(MissingDependency) as caught:
        links.enable_forwarding()
    assert "br_netfilter" in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.exit_code == 10 and "modprobe br_netfilter" in str(caught.value.hint)


# ---------------------------------------------------------------- dnsmasq builder
def test_dnsmasq_config_and_hosts(tmp_path: Path) -> None:
    net = NetworkDef(name="backend", subnet="10.80.1.0/24")
    conf = dnsmasq.config_text(net, tmp_path)
    assert "user=nobody\ninterface=clb-backend\nbind-interfaces\n" in conf
    assert "dhcp-range=10.80.1.10,static,255.255.255.0,1h" in conf
    assert "dhcp-option=option:router,10.80.1.1" in conf and "no-resolv" in conf
    assert f"pid-file={tmp_path / 'dnsmasq.pid'}" in conf
    lab = dnsmasq.config_text(
        NetworkDef(name="lab", subnet="10.80.2.0/24", mode="isolated"), tmp_path
    )
    assert "dhcp-option=option:router\n" in lab  # no default route out of an isolated subnet
    leases = [dnsmasq.Lease("52:54:00:aa:bb:cc", "10.80.1.10", "web1")]
    assert dnsmasq.dhcp_hosts_text(leases) == "52:54:00:aa:bb:cc,10.80.1.10,web1\n"
    assert "10.80.1.10\tweb1.backend web1" in dnsmasq.hosts_text(net, leases)


# ---------------------------------------------------------------- specs
def test_specs_parse_and_validate() -> None:
    assert parse_port_forward("8080:80/tcp") == PortForward(host_port=8080, guest_port=80)
    assert parse_port_forward("53/udp", "lab").model_dump() == {
        "host_port": 53, "guest_port": 53, "proto": "udp", "network": "lab"
    }  # fmt: skip
    for bad in ("80:", "x:80", "8080:80/icmp", "70000:80"):
        with pytest.raises(InvalidInput):
            parse_port_forward(bad)
    assert parse_rule("22/tcp", "10.80.3.7/24").source == "10.80.3.0/24"
    with pytest.raises(InvalidInput):
        parse_rule("22", "not-a-net")
    with pytest.raises(InvalidInput):
        validate_network_name("muchtoolongname")
    with pytest.raises(InvalidInput):
        validate_network_name("nat")
    with pytest.raises(ValueError):
        NetworkDef(name="x", subnet="10.80.1.0/8")
    with pytest.raises(ValueError):
        NetworkDef(name="x", subnet="10.80.1.0/24", mode="nat", route_to=("y",))
    assert split_networks(()) == ("nat", ())
    mode, nics = split_networks(("backend", "dmz"))
    assert mode == "none" and [n.network for n in nics] == ["backend", "dmz"]
    assert split_networks(("nat", "backend"))[0] == "nat"
    with pytest.raises(InvalidInput):
        split_networks(("backend", "backend"))


# ---------------------------------------------------------------- use cases, fake host
@dataclass
class FakeHost:
    links: set[str] = field(default_factory=set)
    dnsmasq: dict[int, str] = field(default_factory=dict)  # pid -> directory
    ruleset: str | None = None
    reloads: int = 0
    next_pid: int = 500

    def install(self, mp: pytest.MonkeyPatch) -> None:
        mp.setattr("os.geteuid", lambda: 0)
        mp.setattr(bridge, "ensure", lambda name, gw: self._add(name))
        mp.setattr(bridge, "delete", self._delete)
        mp.setattr(tap, "ensure", lambda name, br: self._add(name))
        mp.setattr(tap, "delete", self._delete)
        mp.setattr(links, "link_names", lambda: sorted(self.links))
        mp.setattr(links, "delete", self._delete)
        mp.setattr(dnsmasq, "start", self._start)
        mp.setattr(dnsmasq, "stop", lambda pid, st: self.dnsmasq.pop(pid or 0, None) is not None)
        mp.setattr(dnsmasq, "is_running", lambda pid, st: pid in self.dnsmasq)
        mp.setattr(dnsmasq, "reload", lambda pid, st: self._reload())
        mp.setattr(nft, "apply", lambda text, path: setattr(self, "ruleset", text))
        mp.setattr(nft, "tables_present", lambda: ["inet"] if self.ruleset else [])
        mp.setattr(nft, "remove", lambda: setattr(self, "ruleset", None) is None)

    def _add(self, name: str) -> bool:
        made = name not in self.links
        self.links.add(name)
        return made

    def _delete(self, name: str) -> bool:
        if name in self.links:
            self.links.discard(name)
            return True
        return False

    def _start(self, directory: Path) -> tuple[int, int]:
        self.next_pid += 1
        self.dnsmasq[self.next_pid] = directory.name
        return self.next_pid, 1

    def _reload(self) -> None:
        self.reloads += 1


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    fake_host = FakeHost()
    fake_host.install(monkeypatch)
    return fake_host


@pytest.fixture
def engine(short_tmp: Path, host: FakeHost) -> Engine:
    return make_fake_engine(short_tmp / "home", cpus=8, memory=16 * GIB)


def fake(engine: Engine) -> FakeDriver:
    assert isinstance(engine.driver, FakeDriver)
    return engine.driver


def test_create_vms_on_networks_and_delete_everything(engine: Engine, host: FakeHost) -> None:
    ops = engine.networks
    ops.network_create("backend", "10.80.1.0/24")
    ops.network_create("dmz", "10.80.3.0/24", mode="routed", route_to=("backend",))
    with pytest.raises(Conflict):
        ops.network_create("other", "10.80.1.128/25")  # overlaps backend
    assert host.links == {"clb-backend", "clb-dmz"} and len(host.dnsmasq) == 2
    engine.create("web1", VMBody(network="none", networks=["backend", "dmz"]))
    engine.create("db1", VMBody(networks=["backend"]))
    web, db = engine.show("web1"), engine.show("db1")
    config = fake(engine).vms[web.id].config
    assert config.network_mode == "none" and [n.node for n in config.tap_nics] == ["tn1", "tn2"]
    assert fake(engine).vms[db.id].config.network_mode == "nat"
    shown = {v.name: v.ip for v in ops.network("backend").vms}
    assert shown == {"web1": "10.80.1.10", "db1": "10.80.1.11"}
    assert (engine.paths.home / "networks/backend/dhcp-hosts").read_text().count("\n") == 2
    assert (
        "10.80.1.11\tdb1.backend db1" in (engine.paths.home / "networks/backend/hosts").read_text()
    )
    assert host.ruleset is not None and "10.80.1.10 : jump" in host.ruleset
    with pytest.raises(Conflict, match="db1, web1"):
        ops.network_delete("backend")
    engine.delete("web1", force=True)
    engine.delete("db1", force=True)
    with pytest.raises(Conflict, match="network dmz routes to backend"):
        ops.network_delete("backend")
    ops.network_delete("dmz")
    ops.network_delete("backend")
    assert host.links == set() and host.dnsmasq == {} and host.ruleset is None
    assert ops.networks() == []


def test_stopped_vm_comes_back_with_its_network(engine: Engine, host: FakeHost) -> None:
    ops = engine.networks
    ops.network_create("backend", "10.80.1.0/24")
    engine.create("web1", VMBody(network="none", networks=["backend"]))
    engine.stop("web1", force=True)
    host.links.clear()  # the host rebooted: bridges, TAPs and dnsmasq are gone
    host.dnsmasq.clear()
    host.ruleset = None
    engine.start("web1")
    tap_name = ops.nics("web1")[0].tap
    assert host.links == {"clb-backend", tap_name} and len(host.dnsmasq) == 1
    assert host.ruleset is not None


def test_hot_plug_nic_shares_slots_with_volumes(engine: Engine, host: FakeHost) -> None:
    ops = engine.networks
    storage = engine.storage
    ops.network_create("lab", "10.80.2.0/24", mode="isolated")
    engine.create("web1", VMBody())
    iid = engine.show("web1").id
    for i in range(3):
        storage.volume_create(f"d{i}", GIB)
        storage.volume_attach(f"d{i}", "web1")
    assert "hot-plugged now" in ops.nic_add("web1", "lab").message
    assert fake(engine).attached_nics(iid) == ["tn1"]
    nic = fake(engine).vms[iid].nics["tn1"]
    assert nic.slot == 3
    storage.volume_create("d3", GIB)
    with pytest.raises(Conflict, match="no free volume slot"):
        storage.volume_attach("d3", "web1")
    assert "already" in ops.nic_add("web1", "lab").message
    ops.nic_remove("web1", "lab")
    assert fake(engine).attached_nics(iid) == [] and ops.nics("web1")[0].network == "nat"
    assert nic.tap not in host.links
    with pytest.raises(NotFound):
        ops.nic_remove("web1", "lab")


def test_port_forwards_nat_live_and_bridged(engine: Engine, host: FakeHost) -> None:
    ops = engine.networks
    ops.network_create("backend", "10.80.1.0/24")
    engine.create("web1", VMBody(networks=["backend"]))
    iid = engine.show("web1").id
    assert "127.0.0.1:8080" in ops.port_add("web1", "8080:80/tcp").message
    assert ("tcp", 8080) in fake(engine).vms[iid].forwards
    ops.port_add("web1", "9090:80", network="backend")
    assert host.ruleset is not None and "dport 9090 dnat ip to 10.80.1.10:80" in host.ruleset
    engine.create("db1", VMBody())
    with pytest.raises(Conflict, match="already forwarded to web1"):
        ops.port_add("db1", "8080:80")
    with pytest.raises(NotFound):
        ops.port_add("db1", "7070:80", network="backend")
    assert [p.host_port for p in ops.ports("web1")] == [8080, 9090]
    ops.port_remove("web1", "8080/tcp")
    ops.port_remove("web1", "9090")
    assert fake(engine).vms[iid].forwards == set() and "9090" not in host.ruleset
    engine.stop("web1", force=True)
    ops.port_add("web1", "8081:81")  # recorded, in the argv at the next start
    engine.start("web1")
    assert [f.host_port for f in fake(engine).vms[iid].config.host_forwards] == [8081]


def test_firewall_rules_groups_and_list(engine: Engine, host: FakeHost) -> None:
    ops = engine.networks
    ops.network_create("backend", "10.80.1.0/24")
    engine.create(
        "web1",
        VMBody(network="none", networks=["backend"], firewall=FirewallSpec(inbound_ports=(22,))),
    )
    ops.firewall_allow("web1", parse_rule("5432/tcp", "10.80.3.0/24"))
    ops.group_create("web", [parse_rule("80/tcp"), parse_rule("443")])
    with pytest.raises(NotFound):
        ops.firewall_apply("web1", "nope")
    ops.firewall_apply("web1", "web")
    listed = ops.firewall_list("web1")
    assert [(r.port, r.source, r.origin) for r in listed.rules] == [
        (22, "any", "own"), (5432, "10.80.3.0/24", "own"),
        (80, "any", "group web"), (443, "any", "group web"),
    ]  # fmt: skip
    assert host.ruleset is not None
    assert "ip saddr 10.80.3.0/24 tcp dport 5432 accept" in host.ruleset
    assert "tcp dport 443 accept" in host.ruleset
    with pytest.raises(Conflict, match="applied to web1"):
        ops.group_delete("web")
    ops.firewall_apply("web1", "web", apply=False)
    ops.firewall_remove("web1", parse_rule("22/tcp"))
    assert "dport 443" not in host.ruleset and "dport 22 " not in host.ruleset
    ops.group_delete("web")
    assert engine.spec("web1").firewall.inbound_ports == ()


def test_views_carry_the_addresses_nic_list_shows(engine: Engine, host: FakeHost) -> None:
    ops = engine.networks
    ops.network_create("backend", "10.80.1.0/24")
    ops.network_create("dmz", "10.80.3.0/24")
    engine.create("web1", VMBody(network="none", networks=["backend", "dmz"], state="stopped"))
    engine.create("db1", VMBody(networks=["backend"]))
    engine.create("off", VMBody(network="none", state="stopped"))
    views = {vm.name: vm.addresses for vm in engine.instances()}
    assert views == {
        "web1": {"backend": "10.80.1.10", "dmz": "10.80.3.10"},  # stopped: still recorded
        "db1": {"nat": "10.0.2.15", "backend": "10.80.1.11"},
        "off": {},
    }
    for name, addresses in views.items():
        assert {n.network: n.ip for n in ops.nics(name)} == addresses
        assert engine.show(name).to_dict()["addresses"] == addresses
    ops.nic_add("db1", "dmz")
    assert engine.show("db1").addresses["dmz"] == "10.80.3.11"


def test_gc_removes_leftovers(engine: Engine, host: FakeHost) -> None:
    ops = engine.networks
    ops.network_create("backend", "10.80.1.0/24")
    host.links |= {"clb-old", "clt-deadbeef1", "eth0"}
    removed = ops.gc()
    assert sorted((r.what, r.name, r.action, str(r)) for r in removed) == [
        ("TAP", "clt-deadbeef1", "removed", "TAP clt-deadbeef1"),
        ("bridge", "clb-old", "removed", "bridge clb-old"),
    ]
    assert host.links == {"clb-backend", "eth0"}
    # a nic add killed half way: the record exists, the spec never got the NIC
    engine.create("web1", VMBody())
    from cloudlet.engine.network_records import add_nic_row

    stray = add_nic_row(engine.ctx, engine.show("web1").id, "backend", slot=None)
    host.links.add(stray.tap)
    removed = ops.gc()
    assert (removed[0].what, removed[0].name) == ("NIC record", stray.tap)
    assert removed[0].message.startswith(f"record of NIC {stray.tap}")
    assert [r.message for r in removed[1:]] == [f"TAP {stray.tap}"]
    engine.delete("web1", force=True)
    ops.network_delete("backend")
    host.ruleset = "left over"
    assert [str(r) for r in ops.gc()] == ["nftables tables inet/bridge cloudlet"]


def test_bridged_networks_need_root(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(NeedsRoot, match="need root") as info:
        engine.networks.network_create("backend", "10.80.1.0/24")
    assert "\n" not in info.value.one_line()
    engine.create("plain", VMBody())  # user-mode NAT needs no root


def test_spec_files_carry_networks_and_apply_enforces_firewall(
    engine: Engine, host: FakeHost
) -> None:
    from cloudlet.engine import apply as apply_mod
    from cloudlet.spec.document import document_for, parse_documents

    engine.networks.network_create("backend", "10.80.1.0/24")
    text = (
        "apiVersion: cloudlet/v1\nkind: VM\nmetadata:\n  name: web1\nspec:\n"
        "  network: none\n  networks: [backend]\n"
    )
    apply_mod.apply(engine, parse_documents(text, "lab.yaml"))
    spec = engine.spec("web1")
    assert spec.network.mode == "none" and [n.network for n in spec.network.nics] == ["backend"]
    doc = document_for(spec, state="running")
    assert doc.spec.networks == ["backend"] and doc.spec.network == "none"
    opened = text + "  firewall: {inbound_ports: [443]}\n"
    apply_mod.apply(engine, parse_documents(opened, "lab.yaml"))
    assert host.ruleset is not None and "tcp dport 443 accept" in host.ruleset


def test_a_clone_gets_its_own_addresses_not_the_forwards(engine: Engine, host: FakeHost) -> None:
    ops = engine.networks
    ops.network_create("backend", "10.80.1.0/24")
    engine.create("web1", VMBody(network="none", networks=["backend"]))
    ops.port_add("web1", "8080:80")
    engine.stop("web1", force=True)
    engine.storage.clone("web1", "web2")
    assert {v.name: v.ip for v in ops.network("backend").vms} == {
        "web1": "10.80.1.10", "web2": "10.80.1.11"
    }  # fmt: skip
    assert ops.ports("web2") == []
    engine.delete("web2")
    assert [v.name for v in ops.network("backend").vms] == ["web1"]
