"""A Linux bridge per virtual network, with the gateway address on it."""

from __future__ import annotations

import ipaddress

from cloudlet.host.run import run
from cloudlet.network import links


def ensure(name: str, gateway: ipaddress.IPv4Interface) -> bool:
    """Create the bridge if it is missing and give it the gateway address; True if made."""
    made = False
    if not links.exists(name):
        run([links.ip(), "link", "add", "name", name, "type", "bridge"])
        made = True
    links.disable_ipv6(name)
    run([links.ip(), "addr", "replace", str(gateway), "dev", name])
    run([links.ip(), "link", "set", "dev", name, "up"])
    links.enable_forwarding()
    return made


def delete(name: str) -> bool:
    return links.delete(name)
