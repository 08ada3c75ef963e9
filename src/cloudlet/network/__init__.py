"""Host-level plumbing of virtual networks: bridges, TAPs, dnsmasq and nftables.

Each module runs its commands through cloudlet.host.run and keeps what it builds
(dnsmasq configuration, the nftables ruleset) in pure functions unit tests check.
Nothing here decides policy: the engine (engine/network_ops.py) does.
"""

from __future__ import annotations

import os

from cloudlet.errors import CloudletError

# Names cloudlet gives the links it makes; `network gc` removes leftovers by them.
BRIDGE_PREFIX = "clb-"
TAP_PREFIX = "clt-"


class NeedsRoot(CloudletError):
    """Bridges, TAPs and nftables need root."""

    http_status = 403
    exit_code = 4
    code = "needs_root"


def require_root(what: str = "virtual networks") -> None:
    if os.geteuid() != 0:
        raise NeedsRoot(
            f"{what} need root (bridges, TAP devices and nftables)",
            hint="run cloudlet as root, or use the default user-mode NAT (--network nat)",
        )
