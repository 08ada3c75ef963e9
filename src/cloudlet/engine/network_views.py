"""What the NIC, port forward and firewall services hand to frontends, as plain data.

Each view's ``to_dict`` keeps the keys ``-o json`` has always printed, so a typed
result changes nothing a script reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudlet.network.nft import NetPlan, NicPlan


@dataclass(frozen=True)
class NicView:
    """A VM's NIC: user-mode NAT (no MAC or TAP of its own) or one on a virtual network."""

    network: str
    ip: str
    mac: str
    tap: str
    kind: str  # "user-mode NAT" or "bridge"
    dns: str | None = None  # VM.NETWORK on a virtual network

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.dns is None:
            del data["dns"]
        return data


@dataclass(frozen=True)
class PortView:
    host_port: int
    guest_port: int
    proto: str
    network: str  # "nat" (user-mode) or the NIC's network

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FirewallGroupView:
    name: str
    rules: tuple[str, ...]  # each rule in words: "22/tcp from any"
    used_by: tuple[str, ...]  # the VMs it is applied to

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rules": list(self.rules), "used_by": list(self.used_by)}


@dataclass(frozen=True)
class FirewallRuleView:
    port: int
    proto: str
    source: str  # an address or subnet, or "any"
    origin: str  # "own" or the group it comes from

    def to_dict(self) -> dict[str, Any]:
        return {"port": self.port, "proto": self.proto, "source": self.source, "from": self.origin}


@dataclass(frozen=True)
class FirewallView:
    """A VM's effective inbound rules, the default policy and where they are enforced."""

    vm: str
    default: str
    enforced_on: tuple[str, ...]  # the networks of its NICs (none: rules are recorded only)
    groups: tuple[str, ...]
    rules: tuple[FirewallRuleView, ...]
    forwards: tuple[str, ...]  # its port forwards in words, allowed in too

    def to_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "default": self.default,
            "enforced_on": list(self.enforced_on),
            "groups": list(self.groups),
            "rules": [r.to_dict() for r in self.rules],
            "forwards": list(self.forwards),
        }


@dataclass(frozen=True)
class NetworkPlan:
    """What the host's packet filter must hold: the networks and each NIC's rules, and
    ``ruleset``, the nftables text they make (what ``sync`` loads)."""

    networks: tuple[NetPlan, ...]
    nics: tuple[NicPlan, ...]
    ruleset: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "networks": [{**asdict(n), "route_to": list(n.route_to)} for n in self.networks],
            "nics": [
                {
                    "vm": n.vm,
                    "network": n.network,
                    "tap": n.tap,
                    "mac": n.mac,
                    "ip": n.ip,
                    "rules": [r.describe() for r in n.rules],
                    "forwards": [f.describe() for f in n.forwards],
                }
                for n in self.nics
            ],
            "ruleset": self.ruleset,
        }
