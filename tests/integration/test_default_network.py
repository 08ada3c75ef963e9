"""The default user-mode NAT (passt) inside a network namespace the test made.

The namespace is the whole world: a veth pair with a default route stands for the
outside (passt needs a route; nothing can leave), a server on its 127.0.0.1 for the
host's loopback services. The guest's network is not restricted here, so it really
tries: outbound to the "outside" works, the host's loopback does not, and a port
forward (added while the VM runs, applied at its next start) reaches the guest.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudlet.host import processes
from tests.integration.netns import Netns, netns, wait_for

pytestmark = pytest.mark.integration
__all__ = ["netns"]  # the fixture

OPEN = {"CLOUDLET_FORCE_RESTRICT_NETWORK": "0"}  # safe: the namespace has no way out
OUTSIDE = "10.98.0.1"
NAMED = "10.98.0.7"  # what the namespace's resolver says probe.test is
HTTPD = "mkdir -p /tmp/www && echo hello > /tmp/www/index.html && httpd -p 80 -h /tmp/www"
PROBE = (
    "import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), 5); "
    "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); "
    "print(b''.join(iter(lambda: s.recv(4096), b'')).decode())"
)


@pytest.fixture
def world(netns: Netns, tmp_path: Path) -> Iterator[Netns]:
    """An 'outside' link (a veth pair, both ends here) with a default route, and two web
    servers: one on the loopback (what no guest may reach), one on the outside address."""
    ns = netns
    ns.sh("ip", "link", "add", "out0", "type", "veth", "peer", "name", "out1")
    ns.sh("ip", "addr", "add", "10.99.0.2/24", "dev", "out0")
    ns.sh("ip", "addr", "add", f"{OUTSIDE}/32", "dev", "out0")
    ns.sh("ip", "link", "set", "out0", "up")
    ns.sh("ip", "link", "set", "out1", "up")
    ns.sh("ip", "route", "add", "default", "via", "10.99.0.1")
    servers = []
    for name, bind, port in (("secret", "127.0.0.1", 18080), ("outside", OUTSIDE, 18081)):
        root = tmp_path / name
        root.mkdir()
        (root / "index.html").write_text(f"{name}-page\n")
        argv = ["python3", "-m", "http.server", "--bind", bind, "--directory", str(root)]
        servers.append(
            subprocess.Popen(
                ["ip", "netns", "exec", ns.name, *argv, str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    # the namespace's resolver (ip netns exec shows it as /etc/resolv.conf): a dnsmasq on
    # the outside address that knows one name
    resolv = Path("/etc/netns") / ns.name / "resolv.conf"
    resolv.parent.mkdir(parents=True)
    resolv.write_text(f"nameserver {OUTSIDE}\n")
    servers.append(
        subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns.name,
                "dnsmasq",
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--bind-interfaces",
                f"--listen-address={OUTSIDE}",
                f"--address=/probe.test/{NAMED}",
                f"--pid-file={tmp_path / 'dns.pid'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    try:
        # the loopback server is there for the host itself: the probe below is fair
        wait_for(
            lambda: "secret-page" in ns.sh("python3", "-c", PROBE, "18080", check=False).stdout
        )
        yield ns
    finally:
        for server in servers:
            processes.kill_and_wait(server.pid)
        resolv.unlink()
        resolv.parent.rmdir()


def fetch(ns: Netns, vm: str, url: str) -> str:
    return ns.exec(vm, f"timeout 10 wget -q -O - {url} 2>&1 || echo FAILED", check=False)


def test_default_network_reaches_out_but_not_the_host_loopback(world: Netns) -> None:
    ns = world
    ns.run("create", "vm1", "--type", "gp.micro", **OPEN)
    record = json.loads(next((ns.home / "run").glob("*/runtime.json")).read_text())
    helper = (record["net_helper_pid"], record["net_helper_start"])
    assert processes.cmdline(helper[0])[0].endswith("passt")
    assert "--no-map-gw" in processes.cmdline(helper[0])

    # outbound works (to the namespace's outside address) ...
    wait_for(lambda: "outside-page" in fetch(ns, "vm1", f"http://{OUTSIDE}:18081/"), 60, "out")
    # ... and so does DNS through slirp's 10.0.2.3 (passt forwards it to the host's
    # resolver; the one DHCP names directly is here a local address, which passt's UDP
    # does not answer from: outside a test it is another machine)
    # (UDP: under load one query may be lost, so ask until an answer comes)
    answers: list[str] = []

    def lookup() -> bool:
        answers.append(ns.exec("vm1", "nslookup probe.test 10.0.2.3", check=False))
        return f"Address: {NAMED}" in answers[-1]

    try:
        wait_for(lookup, 60, "the DNS answer")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last lookup said: {answers[-1]!r}") from exc
    # ... the gateway is not the host's loopback, nor is any other way to it
    for url in ("http://10.0.2.2:18080/", "http://10.99.0.2:18080/", "http://10.99.0.1:18080/"):
        got = fetch(ns, "vm1", url)
        assert "secret-page" not in got and "FAILED" in got, (url, got)

    # a forward added while it runs applies at the next start, then reaches the guest
    said = ns.run("port", "add", "vm1", "18090:80/tcp", **OPEN)
    assert "next start" in said.stdout + said.stderr
    ns.run("stop", "vm1", "--force", **OPEN)
    assert not processes.is_alive(*helper)  # passt goes with its VM
    ns.run("start", "vm1", **OPEN)
    ns.exec("vm1", HTTPD)
    page = wait_for(lambda: ns.sh("python3", "-c", PROBE, "18090", check=False).stdout, 60)
    assert "hello" in page
    again = json.loads(next((ns.home / "run").glob("*/runtime.json")).read_text())
    ns.run("delete", "--force", "vm1", **OPEN)
    assert not processes.is_alive(again["net_helper_pid"], again["net_helper_start"])
