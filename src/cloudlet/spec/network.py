"""Virtual networks, NICs, port forwards and firewall rules: pure data, no I/O."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cloudlet.errors import InvalidInput
from cloudlet.spec.names import USER_MODE as USER_MODE
from cloudlet.spec.names import group_name, model_check, network_name

NetworkMode = Literal["nat", "isolated", "routed"]
Proto = Literal["tcp", "udp"]
validate_network_name = network_name


def mac_address(instance_id: str, index: int = 0) -> str:
    """A stable locally administered MAC (QEMU's 52:54:00 prefix) derived from the VM id.

    NIC ``index`` 0 is the user-mode NIC, 1 and up the NICs on virtual networks. Stored
    NIC rows and running guests hold these values: the derivation must never change.
    """
    digest = hashlib.sha256(f"{instance_id}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


class NetworkDef(BaseModel):
    """A virtual network: a bridge with DHCP/DNS and a policy for the way out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    subnet: str = Field(description="IPv4 subnet, e.g. 10.80.1.0/24")
    mode: NetworkMode = "nat"
    route_to: tuple[str, ...] = Field(default=(), description="networks routed to this one")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return model_check(validate_network_name, value)

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        net = ipaddress.IPv4Network(value, strict=True)
        if not 16 <= net.prefixlen <= 29:
            raise ValueError(f"subnet {value} must be between /16 and /29")
        if net.is_loopback or net.is_multicast or net.is_link_local:
            raise ValueError(f"subnet {value} is not usable for a virtual network")
        return str(net)

    @model_validator(mode="after")
    def _routes(self) -> NetworkDef:
        if self.mode != "routed" and self.route_to:
            raise ValueError("route_to needs mode 'routed'")
        if self.name in self.route_to:
            raise ValueError("a network cannot be routed to itself")
        return self

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.network.network_address + 1

    @property
    def bridge(self) -> str:
        return bridge_name(self.name)


def bridge_name(network: str) -> str:
    return f"clb-{network}"


def tap_name(instance_id: str, index: int) -> str:
    """clt-<8 hex of the VM id><index>: 13 characters at most."""
    return f"clt-{instance_id.replace('-', '')[:8]}{index}"


def first_host(subnet: str) -> ipaddress.IPv4Address:
    """The first address leases come from: .10 (the host part below is the gateway's)."""
    net = ipaddress.IPv4Network(subnet)
    return net.network_address + min(10, max(2, net.num_addresses // 4))


class NicSpec(BaseModel):
    """A NIC on a virtual network (user-mode NAT is NetworkSpec.mode)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    network: str


_PORT_RE = re.compile(r"^(?:(\d+):)?(\d+)(?:/(tcp|udp))?$")


class PortForward(BaseModel):
    """A host port that reaches a guest port (DNAT on bridges, hostfwd on user-mode NAT)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host_port: int = Field(ge=1, le=65535)
    guest_port: int = Field(ge=1, le=65535)
    proto: Proto = "tcp"
    network: str = Field(default="nat", description="the NIC's network; 'nat' is user-mode")

    @property
    def key(self) -> str:
        return f"{self.host_port}/{self.proto}"

    def describe(self) -> str:
        return f"{self.host_port}:{self.guest_port}/{self.proto} via {self.network}"


def parse_port_forward(text: str, network: str = "nat") -> PortForward:
    """``HOST:GUEST[/PROTO]`` or ``PORT[/PROTO]`` (the same port on both sides)."""
    match = _PORT_RE.match(text.strip())
    hint = "use HOST:GUEST/PROTO such as 8080:80/tcp"
    if match is None:
        raise InvalidInput(f"invalid port forward {text!r}", hint=hint)
    host, guest, proto = match.groups()
    try:
        return PortForward(
            host_port=int(host or guest),
            guest_port=int(guest),
            proto=proto or "tcp",  # type: ignore[arg-type]
            network=network,
        )
    except ValueError:
        raise InvalidInput(
            f"invalid port forward {text!r}: ports are 1 to 65535", hint=hint
        ) from None


def parse_port_key(text: str) -> tuple[int, str]:
    """``8080/tcp`` or ``8080`` -> (8080, "tcp")."""
    port, _, proto = text.strip().partition("/")
    if not port.isdigit() or proto not in ("", "tcp", "udp") or not 1 <= int(port) <= 65535:
        raise InvalidInput(f"invalid port {text!r}", hint="use PORT/PROTO such as 8080/tcp")
    return int(port), proto or "tcp"


class FirewallRule(BaseModel):
    """Allow inbound traffic to a port, from anywhere or from one source subnet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int = Field(ge=1, le=65535)
    proto: Proto = "tcp"
    source: str | None = Field(default=None, description="IPv4 address or subnet; None: any")

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return str(ipaddress.IPv4Network(value, strict=False))

    def describe(self) -> str:
        return f"{self.port}/{self.proto} from {self.source or 'anywhere'}"


def parse_rule(text: str, source: str | None = None) -> FirewallRule:
    port, proto = parse_port_key(text)
    try:
        return FirewallRule(port=port, proto=proto, source=source)  # type: ignore[arg-type]
    except ValueError:
        raise InvalidInput(
            f"invalid source {source!r}", hint="use an IPv4 address or subnet such as 10.80.3.0/24"
        ) from None


class FirewallGroup(BaseModel):
    """A named set of rules several VMs can share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    rules: tuple[FirewallRule, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return model_check(group_name, value)


def split_networks(names: tuple[str, ...]) -> tuple[str, tuple[NicSpec, ...]]:
    """``--network`` values -> (user-mode mode, NICs on virtual networks).

    ``nat`` is user-mode NAT (the default when nothing is given), ``none`` no NIC;
    any other name is a virtual network. Only virtual networks: no user-mode NIC.
    """
    if not names:
        return "nat", ()
    virtual = tuple(n for n in names if n not in USER_MODE)
    if "nat" in names and "none" in names:
        raise InvalidInput(
            "user-mode NAT (nat) and no network (none) contradict", hint="give one of them"
        )
    if len(set(virtual)) != len(virtual):
        raise InvalidInput("a network is given twice", hint="one NIC per network")
    for name in virtual:
        validate_network_name(name)
    mode = "nat" if "nat" in names or (not virtual and "none" not in names) else "none"
    return mode, tuple(NicSpec(network=n) for n in virtual)
