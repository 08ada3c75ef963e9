"""A persistent TAP device per NIC, enslaved to its network's bridge.

cloudlet makes the TAP and QEMU opens it by name (``-netdev tap,ifname=...``,
``script=no``): QEMU's sandbox forbids spawning the usual helper scripts.
"""

from __future__ import annotations

from cloudlet.host.run import run
from cloudlet.network import links


def ensure(name: str, bridge: str) -> bool:
    """Create the TAP if missing and attach it to ``bridge``; True if made."""
    made = False
    if not links.exists(name):
        run([links.ip(), "tuntap", "add", "dev", name, "mode", "tap"])
        made = True
    links.disable_ipv6(name)
    run([links.ip(), "link", "set", "dev", name, "master", bridge, "up"])
    return made


def delete(name: str) -> bool:
    return links.delete(name)
