"""Virtual networks against hostile guests, inside a network namespace the test made.

A VM on an isolated network must not reach another network's port forward through
its own gateway (the forward's DNAT would carry it across); a guest's IPv6 (a spoofed
source here) and its DHCP offers must not reach the bridge. Frames are watched on the
guest's TAP (it did send them) and on the bridge (they did not get through); the wait
ends on a marker ping the guest sent after them, so no time decides the outcome.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cloudlet.host import processes
from tests.integration.netns import Netns, netns, wait_for
from tests.integration.test_networks import HTTPD, tcp_says_hello, wait_address

pytestmark = pytest.mark.integration
__all__ = ["netns"]  # the fixture

MARKER_SIZE = 1111  # the guest pings its gateway with this payload size, again and again
# Counts, per interface, the frames from the guest's MAC: IPv6, UDP from port 67 (a DHCP
# server's). Once the TAP has shown both, the next marker ping on the TAP is the mark:
# when the bridge sees it, everything sent before it has had its verdict.
WATCH = r"""
import json, select, socket, sys
mac = bytes.fromhex(sys.argv[1].replace(":", ""))
tap, bridge = sys.argv[2:4]
socks = {}
for name in (tap, bridge):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind((name, 0))
    socks[name] = s
seen = {name: {"ipv6": 0, "dhcp_server": 0} for name in socks}
mark = None
print("ready", flush=True)
while True:
    ready, _, _ = select.select(list(socks.values()), [], [])
    done = False
    for name, s in socks.items():
        if s not in ready:
            continue
        frame = s.recv(65535)
        if frame[6:12] != mac:
            continue
        if frame[12:14] == b"\x86\xdd":
            seen[name]["ipv6"] += 1
        if frame[12:14] != b"\x08\x00":
            continue
        l4 = 14 + (frame[14] & 15) * 4
        if frame[23] == 17 and int.from_bytes(frame[l4:l4 + 2], "big") == 67:
            seen[name]["dhcp_server"] += 1
        if frame[23] == 1 and frame[l4] == 8 and len(frame) == l4 + 8 + SIZE:
            seq = int.from_bytes(frame[l4 + 6:l4 + 8], "big")
            if name == tap and mark is None and all(seen[tap].values()):
                mark = seq
            if name == bridge and mark is not None and seq >= mark:
                done = True
    if done:
        break
print(json.dumps(seen), flush=True)
""".replace("SIZE", str(MARKER_SIZE))
# A DHCPDISCOVER with the broadcast flag, from the host's side of the bridge.
DISCOVER = r"""
import socket, struct, sys
head = struct.pack("!BBBBIHH16s16s", 1, 1, 6, 0, 0x1234ABCD, 0, 0x8000, bytes(16),
                   bytes.fromhex("02aabbccddee") + bytes(10))
packet = head + bytes(192) + bytes([99, 130, 83, 99, 53, 1, 1, 255])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())
s.bind(("0.0.0.0", 68))
s.sendto(packet, ("255.255.255.255", 67))
"""
ROGUE = (
    # a DHCP server in the guest, an IPv6 address that is not its own, and the markers
    "printf 'start 10.80.2.100\\nend 10.80.2.150\\ninterface eth0\\n"
    "lease_file /tmp/udhcpd.leases\\n' > /tmp/udhcpd.conf && touch /tmp/udhcpd.leases && "
    "udhcpd /tmp/udhcpd.conf && echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad && "
    "ip -6 addr add fd00::66/64 dev eth0 && "
    "(ping6 -c 600 -I fd00::66 ff02::1 >/dev/null 2>&1 &) && "
    f"(ping -c 600 -s {MARKER_SIZE} 10.80.2.1 >/dev/null 2>&1 &)"
)


def tap_of(ns: Netns, bridge: str) -> str:
    out = ns.sh("ip", "-j", "link", "show", "master", bridge).stdout
    taps = [str(link["ifname"]) for link in json.loads(out)]
    assert len(taps) == 1, taps
    return taps[0]


def mac_of(ns: Netns, vm: str) -> str:
    return ns.exec(vm, "cat /sys/class/net/eth0/address").strip()


def test_isolated_vm_reaches_no_forward_and_guests_send_no_ipv6_or_dhcp(netns: Netns) -> None:
    ns = netns
    ns.run("network", "create", "backend", "--subnet", "10.80.1.0/24", "--nat")
    ns.run("network", "create", "lab", "--subnet", "10.80.2.0/24", "--isolated")
    ns.run("create", "srv", "--network", "backend", "--type", "gp.micro")
    ns.run("create", "cli", "--network", "lab", "--type", "gp.micro")
    ns.run("firewall", "allow", "srv", "--port", "80/tcp")
    ns.run("port", "add", "srv", "8080:80/tcp")
    wait_address(ns, "srv", "eth0", "10.80.1.10")
    wait_address(ns, "cli", "eth0", "10.80.2.10")
    ns.exec("srv", HTTPD)

    # the forward works from the host's side ...
    probe = (
        "import socket; s = socket.create_connection(('10.80.1.1', 8080), timeout=5); "
        "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); "
        "print(b''.join(iter(lambda: s.recv(4096), b'')).decode())"
    )
    assert "hello" in ns.sh("python3", "-c", probe).stdout
    # ... but not from the isolated network, through its own gateway or backend's
    assert not tcp_says_hello(ns, "cli", "10.80.2.1", 8080)
    assert not tcp_says_hello(ns, "cli", "10.80.1.1", 8080)

    # a spoofed IPv6 source and a DHCP offer leave the guest but never reach the bridge
    tap = tap_of(ns, "clb-lab")
    watcher = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, "-c", WATCH, mac_of(ns, "cli"),
         tap, "clb-lab"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().strip() == "ready"
        ns.exec("cli", ROGUE)
        # ask for an offer until the watcher has its verdict (udhcpd may still be starting)
        wait_for(
            lambda: ns.sh("python3", "-c", DISCOVER, "clb-lab") and watcher.poll() is not None,
            120,
            "the watcher's verdict",
        )
        seen = json.loads(watcher.stdout.readline())
    finally:
        processes.kill_and_wait(watcher.pid)
    assert seen[tap]["ipv6"] > 0 and seen[tap]["dhcp_server"] > 0, seen  # they were sent
    assert seen["clb-lab"] == {"ipv6": 0, "dhcp_server": 0}, seen  # and went no further

    for vm in ("srv", "cli"):
        ns.run("delete", "--force", vm)
    for net in ("lab", "backend"):
        ns.run("network", "delete", net)
    wait_for(lambda: not [x for x in ns.links() if x.startswith(("clb-", "clt-"))], 30, "links")
