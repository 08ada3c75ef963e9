"""Virtual networks on real QEMU, the whole stack inside a network namespace per test.

Every CLI call runs as ``ip netns exec cltest-XXXX python -m cloudlet ...``: bridges,
TAPs, dnsmasq, the nftables tables and QEMU all live in the namespace, so no guest
packet can leave it. Two VMs per test, shared by all the checks of the test.
"""

from __future__ import annotations

import sqlite3

import pytest

from cloudlet.host import processes
from tests.integration.netns import Netns, dnsmasq_pids, netns, wait_for

pytestmark = pytest.mark.integration
__all__ = ["netns"]  # the fixture

HTTPD = "mkdir -p /tmp/www && echo hello > /tmp/www/index.html && httpd -p 80 -h /tmp/www"
DHCP = "udhcpc -i {ifname} -n -q -t 10 -s /etc/udhcpc/default.script"


def tcp_says_hello(ns: Netns, vm: str, host: str, port: int) -> bool:
    """From inside ``vm``: does an HTTP request to host:port get the page?"""
    script = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port}"
    return "hello" in ns.exec(vm, script, check=False)


def address_of(ns: Netns, vm: str, ifname: str) -> str:
    return ns.exec(vm, f"ip -4 addr show {ifname}", check=False)


def wait_address(ns: Netns, vm: str, ifname: str, ip: str) -> None:
    wait_for(lambda: f"inet {ip}/" in address_of(ns, vm, ifname), 90, f"{vm} {ifname} {ip}")


def leftovers(ns: Netns) -> list[str]:
    links = [link for link in ns.links() if link.startswith(("clb-", "clt-"))]
    tables = [t for t in ns.sh("nft", "list", "tables").stdout.splitlines() if "cloudlet" in t]
    return links + tables


def test_subnet_dns_firewall_forward_hotplug_and_cleanup(netns: Netns) -> None:
    ns = netns
    ns.run("network", "create", "backend", "--subnet", "10.80.1.0/24", "--nat")
    ns.run("network", "create", "lab", "--subnet", "10.80.2.0/24", "--isolated")
    for vm in ("web1", "db1"):
        ns.run("create", vm, "--network", "backend", "--type", "gp.micro")
    shown = ns.json("network", "show", "backend")
    assert {v["name"]: v["ip"] for v in shown["vms"]} == {"web1": "10.80.1.10", "db1": "10.80.1.11"}
    # fixed leases from dnsmasq; names NAME.NETWORK resolve and reach the other VM
    wait_address(ns, "web1", "eth0", "10.80.1.10")
    wait_address(ns, "db1", "eth0", "10.80.1.11")
    looked_up = ns.exec("web1", "nslookup db1.backend")
    assert "10.80.1.11" in looked_up, looked_up
    assert "1 packets received" in ns.exec("web1", "ping -c 1 -W 5 db1.backend")

    # firewall: inbound denied by default; a group allows 80 only; 22 from one address
    ns.exec("db1", f"{HTTPD} && httpd -p 22 -h /tmp/www")
    assert not tcp_says_hello(ns, "web1", "db1.backend", 80)
    ns.run("firewall", "group", "create", "web", "--allow", "80/tcp", "--allow", "443/tcp")
    ns.run("firewall", "apply", "db1", "web")
    assert tcp_says_hello(ns, "web1", "db1.backend", 80)
    assert not tcp_says_hello(ns, "web1", "db1.backend", 22)
    ns.run("firewall", "allow", "db1", "--port", "22/tcp", "--from", "10.80.1.10/32")
    assert tcp_says_hello(ns, "web1", "db1.backend", 22)
    rules = ns.json("firewall", "list", "db1")["rules"]
    assert [(r["port"], r["source"]) for r in rules] == [
        (22, "10.80.1.10/32"),
        (80, "any"),
        (443, "any"),
    ]

    # a port forward reaches the guest from the namespace's host side
    ns.run("port", "add", "db1", "8080:80/tcp")
    probe = (
        "import socket; s = socket.create_connection(('10.80.1.1', 8080), timeout=5); "
        "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); "
        "print(b''.join(iter(lambda: s.recv(4096), b'')).decode())"  # until the server closes
    )
    assert "hello" in ns.sh("python3", "-c", probe).stdout
    assert ns.json("port", "list", "db1") == [
        {"host_port": 8080, "guest_port": 80, "proto": "tcp", "network": "backend"}
    ]

    # a hot-plugged NIC gets its fixed lease on the isolated network
    ns.run("nic", "add", "web1", "lab")
    wait_for(lambda: "eth1" in ns.exec("web1", "ls /sys/class/net"), 30, "eth1 in web1")
    ns.exec("web1", DHCP.format(ifname="eth1"))
    wait_address(ns, "web1", "eth1", "10.80.2.10")

    # a network with VMs on it cannot go
    refused = ns.run("network", "delete", "backend", check=False)
    assert refused.returncode == 4 and "db1, web1" in refused.stderr

    # deleting everything leaves nothing: no bridge, TAP, dnsmasq or nftables table
    pids = dnsmasq_pids(ns.home)
    assert len(pids) == 2 and all(processes.is_alive(p) for p in pids)
    ns.run("nic", "remove", "web1", "lab")
    for vm in ("web1", "db1"):
        ns.run("delete", "--force", vm)
    ns.run("network", "delete", "lab")
    ns.run("network", "delete", "backend")
    assert leftovers(ns) == []
    assert not [p for p in pids if processes.is_alive(p)]
    assert ns.json("network", "list") == []


def test_isolation_routing_restart_and_gc(netns: Netns) -> None:
    ns = netns
    ns.run("network", "create", "backend", "--subnet", "10.80.1.0/24", "--nat")
    ns.run("network", "create", "lab", "--subnet", "10.80.2.0/24", "--isolated")
    ns.run("network", "create", "dmz", "--subnet", "10.80.3.0/24", "--route-to", "backend")
    ns.run("create", "srv", "--network", "backend", "--type", "gp.micro")
    ns.run("firewall", "allow", "srv", "--port", "80/tcp")
    ns.run("create", "cli", "--network", "lab", "--network", "dmz", "--type", "gp.micro")
    wait_address(ns, "srv", "eth0", "10.80.1.10")
    wait_address(ns, "cli", "eth0", "10.80.2.10")
    ns.exec("cli", DHCP.format(ifname="eth1"))  # the tiny image runs DHCP on eth0 only
    wait_address(ns, "cli", "eth1", "10.80.3.10")
    ns.exec("srv", HTTPD)

    # the isolated subnet cannot reach backend, even with a route through its gateway
    ns.exec("cli", "ip route replace 10.80.1.0/24 via 10.80.2.1 dev eth0")
    assert not tcp_says_hello(ns, "cli", "10.80.1.10", 80)
    # dmz is routed to backend: the same server answers through dmz's gateway
    ns.exec("cli", "ip route replace 10.80.1.0/24 via 10.80.3.1 dev eth1")
    assert tcp_says_hello(ns, "cli", "10.80.1.10", 80)

    # a host restart loses bridges, TAPs and dnsmasq: starting the VM brings them back
    ns.run("stop", "srv", "--force")
    backend = ns.json("network", "show", "backend")
    ns.sh("ip", "link", "del", "dev", "clb-backend")
    processes.kill_and_wait(backend["dnsmasq_pid"])
    ns.run("start", "srv")
    again = ns.json("network", "show", "backend")
    assert again["dnsmasq_running"] and again["dnsmasq_pid"] != backend["dnsmasq_pid"]
    wait_address(ns, "srv", "eth0", "10.80.1.10")
    ns.exec("srv", HTTPD)
    assert tcp_says_hello(ns, "cli", "10.80.1.10", 80)

    # after a crash: a stray TAP, and a network whose record was lost
    ns.sh("ip", "tuntap", "add", "dev", "clt-stray0", "mode", "tap")
    ns.run("network", "create", "ghost", "--subnet", "10.80.9.0/24", "--isolated")
    ghost_pid = int((ns.home / "networks" / "ghost" / "dnsmasq.pid").read_text())
    with sqlite3.connect(ns.home / "cloudlet.db") as db:
        db.execute("DELETE FROM networks WHERE name = 'ghost'")
    removed = ns.json("network", "gc")["removed"]
    assert "TAP clt-stray0" in removed and "bridge clb-ghost" in removed, removed
    assert f"dnsmasq {ghost_pid} of deleted network ghost" in removed
    assert not processes.is_alive(ghost_pid)
    assert not [x for x in ns.links() if x in ("clt-stray0", "clb-ghost")]
    assert tcp_says_hello(ns, "cli", "10.80.1.10", 80)  # what is recorded still works

    for vm in ("srv", "cli"):
        ns.run("delete", "--force", vm)
    for net in ("dmz", "lab", "backend"):
        ns.run("network", "delete", net)
    assert leftovers(ns) == []
