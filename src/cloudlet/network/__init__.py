"""Host-level plumbing of virtual networks: bridges, TAPs, dnsmasq and nftables.

Each module runs its commands through cloudlet.host.run and keeps what it builds
(dnsmasq configuration, the nftables ruleset) in pure functions unit tests check.
Nothing here decides policy: the engine (engine/network.py and its services) does.
"""

from __future__ import annotations

import os

from cloudlet.errors import NeedsRoot

# Names cloudlet gives the links it makes; `network gc` removes leftovers by them.
BRIDGE_PREFIX = "clb-"
TAP_PREFIX = "clt-"


def require_root(what: str = "virtual networks") -> None:
    if os.geteuid() != 0:
        raise NeedsRoot(
            f"{what} need root (bridges, TAP devices and nftables)",
            hint="run cloudlet as root, or use the default user-mode NAT",
        )
