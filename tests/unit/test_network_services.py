"""The network services on their own: built from an EngineContext, with the facade off.

VMs are made through the Engine (creation is not networking), then each service is
built on a fresh context over the same settings, dependencies and database while
every method of the Engine class fails the test; the host plumbing (ip, dnsmasq,
nft) is the recorder of test_network.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudlet.engine import network_host, network_rows
from cloudlet.engine.firewall import Firewall
from cloudlet.engine.lifecycle import Lifecycle
from cloudlet.engine.network import NetworkService
from cloudlet.engine.networks import Networks
from cloudlet.engine.nics import Nics
from cloudlet.engine.port_forwards import PortForwards
from cloudlet.errors import Conflict, NotFound
from cloudlet.spec.network import NicSpec, parse_rule
from tests.unit.test_network import FakeHost
from tests.unit.test_storage_services import fake, make_ctx


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    fake_host = FakeHost()
    fake_host.install(monkeypatch)
    return fake_host


def test_networks_on_the_context(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, host: FakeHost
) -> None:
    ctx = make_ctx(short_tmp / "home", monkeypatch)
    nets = Networks(ctx)
    with pytest.raises(NotFound, match="no network named 'backend'"):
        network_rows.check_networks(ctx, (NicSpec(network="backend"),))
    view = nets.network_create("backend", "10.80.1.0/24")
    assert (view.bridge, view.gateway, view.dnsmasq_running) == ("clb-backend", "10.80.1.1", True)
    with pytest.raises(Conflict, match="overlaps network backend"):
        nets.network_create("other", "10.80.1.128/25")
    nets.network_create("dmz", "10.80.3.0/24", mode="routed", route_to=("backend",))
    assert [n.name for n in nets.networks()] == ["backend", "dmz"]
    assert nets.network("backend").route_to == ["dmz"]  # routed from dmz
    assert host.links == {"clb-backend", "clb-dmz"} and len(host.dnsmasq) == 2
    assert host.ruleset == network_host.plan(ctx).ruleset
    with pytest.raises(Conflict, match="network dmz routes to backend"):
        nets.network_delete("backend")
    assert "deleted" in nets.network_delete("dmz").message
    nets.network_delete("backend")
    assert host.links == set() and host.dnsmasq == {} and host.ruleset is None
    with pytest.raises(NotFound):
        nets.network("backend")


def test_nics_on_the_context(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, host: FakeHost
) -> None:
    ctx = make_ctx(short_tmp / "home", monkeypatch, running=("web1",), stopped=("db1",))
    Networks(ctx).network_create("lab", "10.80.2.0/24", mode="isolated")
    nics = Nics(ctx)
    web, db = ctx.row("web1").id, ctx.row("db1").id
    added = nics.nic_add("web1", "lab").message
    assert "with 10.80.2.10" in added and "hot-plugged now" in added
    again = nics.nic_add("web1", "lab")
    assert again.message == "web1 already has a NIC on lab" and not again.changed
    assert fake(ctx).attached_nics(web) == ["tn1"]
    slot = fake(ctx).vms[web].nics["tn1"].slot
    assert slot is not None and network_rows.used_slots(ctx, web) == {slot}
    assert "at its next start" in nics.nic_add("db1", "lab").message
    assert [n.node for n in network_rows.boot_nics(ctx, db)] == ["tn1"]
    listed = nics.nics("web1")
    assert [(n.network, n.ip) for n in listed] == [
        ("nat", "10.0.2.15"),
        ("lab", "10.80.2.10"),
    ]
    assert listed[1].tap in host.links and listed[1].dns == "web1.lab"
    assert "db1.lab" in (ctx.paths.home / "networks/lab/hosts").read_text()
    with pytest.raises(Conflict, match="has VMs attached: db1, web1"):
        Networks(ctx).network_delete("lab")
    nics.nic_remove("web1", "lab")
    nics.nic_remove("db1", "lab")
    assert fake(ctx).attached_nics(web) == [] and listed[1].tap not in host.links
    assert [n.network for n in nics.nics("web1")] == ["nat"]
    assert network_rows.boot_nics(ctx, db) == ()
    with pytest.raises(NotFound, match="web1 has no NIC on lab"):
        nics.nic_remove("web1", "lab")
    Lifecycle(ctx).pause("web1")
    with pytest.raises(Conflict, match="cannot hot-plug into web1: it is paused"):
        nics.nic_add("web1", "lab")
    with pytest.raises(Conflict, match="cannot unplug from web1: it is paused"):
        nics.nic_remove("web1", "lab")


def test_port_forwards_on_the_context(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, host: FakeHost
) -> None:
    ctx = make_ctx(short_tmp / "home", monkeypatch, running=("web1", "db1"))
    Networks(ctx).network_create("backend", "10.80.1.0/24")
    Nics(ctx).nic_add("web1", "backend")
    ports = PortForwards(ctx)
    web = ctx.row("web1").id
    assert "127.0.0.1:8080" in ports.port_add("web1", "8080:80/tcp").message
    assert ("tcp", 8080) in fake(ctx).vms[web].forwards
    assert "DNAT to backend" in ports.port_add("web1", "9090:80", network="backend").message
    assert host.ruleset is not None and "dport 9090 dnat ip to 10.80.1.10:80" in host.ruleset
    with pytest.raises(Conflict, match="already forwarded to web1"):
        ports.port_add("db1", "8080:80")
    with pytest.raises(NotFound, match="db1 has no NIC on backend"):
        ports.port_add("db1", "7070:80", network="backend")
    assert [p.host_port for p in ports.ports("web1")] == [8080, 9090]
    ports.port_remove("web1", "8080/tcp")
    ports.port_remove("web1", "9090")
    assert fake(ctx).vms[web].forwards == set() and "9090" not in host.ruleset
    assert ports.ports("web1") == []
    with pytest.raises(NotFound, match="no port forward 9090/tcp"):
        ports.port_remove("web1", "9090")


def test_firewall_on_the_context(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, host: FakeHost
) -> None:
    ctx = make_ctx(short_tmp / "home", monkeypatch, running=("web1",))
    Networks(ctx).network_create("backend", "10.80.1.0/24")
    Nics(ctx).nic_add("web1", "backend")
    fw = Firewall(ctx)
    assert (
        "no rules" not in fw.group_create("web", [parse_rule("80/tcp"), parse_rule("443")]).message
    )
    with pytest.raises(Conflict, match="already exists"):
        fw.group_create("web", [])
    with pytest.raises(NotFound, match="no firewall group named 'nope'"):
        fw.firewall_apply("web1", "nope")
    assert "applied" in fw.firewall_apply("web1", "web").message
    fw.firewall_allow("web1", parse_rule("5432/tcp", "10.80.3.0/24"))
    listed = fw.firewall_list("web1")
    assert listed.enforced_on == ("backend",) and listed.groups == ("web",)
    assert [(r.port, r.origin) for r in listed.rules] == [
        (5432, "own"),
        (80, "group web"),
        (443, "group web"),
    ]
    rules = ["80/tcp from anywhere", "443/tcp from anywhere"]
    assert [g.to_dict() for g in fw.groups()] == [
        {"name": "web", "rules": rules, "used_by": ["web1"]}
    ]
    assert host.ruleset is not None and "tcp dport 443 accept" in host.ruleset
    with pytest.raises(Conflict, match="applied to web1"):
        fw.group_delete("web")
    fw.firewall_apply("web1", "web", apply=False)
    assert "dport 443" not in host.ruleset
    assert "deleted" in fw.group_delete("web").message and fw.groups() == []


def test_the_facade_forwards_on_the_context(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, host: FakeHost
) -> None:
    ctx = make_ctx(short_tmp / "home", monkeypatch, running=("web1",))
    service = NetworkService(ctx)
    service.network_create("backend", "10.80.1.0/24")
    service.nic_add("web1", "backend")
    host.ruleset = None
    service.sync_locked()
    assert host.ruleset == service.plan().ruleset and "10.80.1.10 : jump" in host.ruleset
    assert [n.network for n in service.nics("web1")] == ["nat", "backend"]
    assert service.gc() == []
