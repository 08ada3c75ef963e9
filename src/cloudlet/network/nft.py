"""cloudlet's nftables rules: one ``inet cloudlet`` and one ``bridge cloudlet`` table.

``ruleset()`` is a pure function of the networks and NICs; ``apply()`` loads it with
``nft -f`` in one transaction that replaces both tables (never a shell, never rules
added one by one). Every value in the text was validated before (ipaddress objects,
ints, names matching the link-name rules), so nothing can inject a statement.

- inet forward: replies pass; then the isolation drops (networks are isolated from
  each other unless routed; only ``nat`` networks reach beyond the host, masqueraded),
  and only then port forwards (DNAT) pass: a forward's DNAT must not carry a VM of an
  isolated network into another network through its gateway. Then each VM's own
  inbound rules, matched by its fixed address (bridged traffic between VMs on one
  bridge passes here too: br_netfilter). Default: drop.
- inet input: from a bridge, only DHCP, DNS and ping reach the host.
- IPv6 is off on cloudlet's networks (like the addresses, the policy is IPv4 only):
  no IPv6 to or from a bridge in the inet chains, and no IPv6 frame from a guest.
- bridge prerouting: a NIC may only send IPv4 and ARP, with its own MAC and address (no
  spoofing, no VLAN tags), and no guest may answer DHCP or advertise itself as a router.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from cloudlet.host.run import run, which_sbin
from cloudlet.network import TAP_PREFIX
from cloudlet.spec.network import FirewallRule, PortForward

TABLE = "cloudlet"
_HINT = "install nftables"
_IFNAME = re.compile(r"^[a-z0-9-]{1,15}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class NetPlan:
    name: str
    bridge: str
    subnet: str
    mode: str  # nat, isolated, routed
    route_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class NicPlan:
    vm: str
    network: str
    tap: str
    mac: str
    ip: str
    rules: tuple[FirewallRule, ...] = ()
    forwards: tuple[PortForward, ...] = field(default=())


def _name(value: str) -> str:
    if not _IFNAME.match(value):
        raise ValueError(f"not a link name: {value!r}")
    return f'"{value}"'


def _set(values: list[str]) -> str:
    return "{ " + ", ".join(values) + " }"


def _chain(tap: str) -> str:
    _name(tap)
    return "vm_" + tap.replace("-", "_")


def _rule_text(rule: FirewallRule) -> str:
    source = f"ip saddr {ipaddress.IPv4Network(rule.source)} " if rule.source else ""
    return f"{source}{rule.proto} dport {int(rule.port)} accept"


def routed_pairs(nets: list[NetPlan]) -> set[tuple[str, str]]:
    """Bridge pairs allowed to talk (both directions), from each network's route_to."""
    bridges = {n.name: n.bridge for n in nets}
    pairs: set[tuple[str, str]] = set()
    for net in nets:
        for other in net.route_to:
            if other in bridges:
                pairs.add((net.bridge, bridges[other]))
                pairs.add((bridges[other], net.bridge))
    return pairs


def ruleset(nets: list[NetPlan], nics: list[NicPlan]) -> str:
    """The whole nft script: drop both tables (if any) and write them anew."""
    lines = [
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table bridge {TABLE}",
        f"delete table bridge {TABLE}",
    ]
    if not nets:
        return "\n".join(lines) + "\n"
    nets = sorted(nets, key=lambda n: n.name)
    bridges = _set([_name(n.bridge) for n in nets])
    inet: list[str] = [f"table inet {TABLE} {{"]

    # ---- input: what VMs may ask the host itself
    inet += [
        "  chain input {",
        "    type filter hook input priority 0; policy accept;",
        f"    iifname != {bridges} accept",
        "    meta nfproto ipv6 drop",
        "    ct state established,related accept",
        "    udp dport { 53, 67 } accept",
        "    tcp dport 53 accept",
        "    icmp type echo-request accept",
        "    drop",
        "  }",
    ]

    # ---- forward: network policy first, then each VM's inbound rules
    fwd = [
        "  chain forward {",
        "    type filter hook forward priority 0; policy accept;",
        f"    meta nfproto ipv6 iifname {bridges} drop",
        f"    meta nfproto ipv6 oifname {bridges} drop",
        "    ct state established,related accept",
        "    ct state invalid drop",
    ]
    # Isolation first: nothing below (a DNAT accept above all) may open a way around it.
    pairs = routed_pairs(nets)
    for a in nets:
        for b in nets:
            if a.name != b.name and (a.bridge, b.bridge) not in pairs:
                fwd.append(f"    iifname {_name(a.bridge)} oifname {_name(b.bridge)} drop")
    for net in nets:
        if net.mode != "nat":  # isolated and routed networks have no way beyond the host
            fwd.append(f"    iifname {_name(net.bridge)} oifname != {bridges} drop")
    fwd.append("    ct status dnat accept")
    fwd.append(f"    iifname != {bridges} oifname {bridges} drop")
    by_vm = sorted(nics, key=lambda n: n.tap)
    if by_vm:
        verdicts = [f"{ipaddress.IPv4Address(n.ip)} : jump {_chain(n.tap)}" for n in by_vm]
        fwd.append(f"    oifname {bridges} ip daddr vmap {_set(verdicts)}")
    fwd.append("  }")
    inet += fwd
    for nic in by_vm:
        inet.append(f"  chain {_chain(nic.tap)} {{")
        inet.append("    icmp type echo-request accept")
        inet += [f"    {_rule_text(rule)}" for rule in nic.rules]
        inet.append("    drop")
        inet.append("  }")

    # ---- NAT: port forwards in, masquerade out of nat networks
    dnat: list[str] = []
    for nic in by_vm:
        for fwd_rule in nic.forwards:
            dnat.append(
                f"    ip daddr != 127.0.0.0/8 fib daddr type local {fwd_rule.proto} dport "
                f"{int(fwd_rule.host_port)} dnat ip to "
                f"{ipaddress.IPv4Address(nic.ip)}:{int(fwd_rule.guest_port)}"
            )
    inet += ["  chain prerouting {", "    type nat hook prerouting priority dstnat; policy accept;"]
    inet += [*dnat, "  }"]
    inet += ["  chain output {", "    type nat hook output priority -100; policy accept;"]
    inet += [*dnat, "  }"]
    inet += [
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
    ]
    for net in nets:
        if net.mode == "nat":
            inet.append(
                f"    ip saddr {ipaddress.IPv4Network(net.subnet)} oifname != {bridges} masquerade"
            )
    inet += ["  }", "}"]

    # ---- bridge: what any guest may send at all, then anti-spoofing on each TAP
    taps = f'"{TAP_PREFIX}*"'
    br = [
        f"table bridge {TABLE} {{",
        "  chain prerouting {",
        "    type filter hook prerouting priority 0; policy accept;",
        f"    iifname {taps} udp sport 67 drop",  # a guest's DHCP offer or ack
        f"    iifname {taps} udp sport 547 drop",  # a guest's DHCPv6 advertise or reply
        f"    iifname {taps} icmpv6 type nd-router-advert drop",
        # IPv4 and ARP only: no IPv6 (around the IPv4 rules), no VLAN tags (around all)
        f"    iifname {taps} ether type != {{ ip, arp }} drop",
    ]
    for nic in by_vm:
        if not _MAC.match(nic.mac):
            raise ValueError(f"not a MAC address: {nic.mac!r}")
        tap = _name(nic.tap)
        ip = ipaddress.IPv4Address(nic.ip)
        br += [
            f"    iifname {tap} ether saddr != {nic.mac} drop",
            f"    iifname {tap} ether type ip ip saddr != {{ 0.0.0.0, {ip} }} drop",
            f"    iifname {tap} ether type arp arp saddr ip != {{ 0.0.0.0, {ip} }} drop",
            f"    iifname {tap} ether type arp arp saddr ether != {nic.mac} drop",
        ]
    br += ["  }", "}"]
    return "\n".join(lines + inet + br) + "\n"


def nft() -> str:
    return which_sbin("nft", hint=_HINT)


def apply(text: str, path: Path) -> None:
    """Load a ruleset written by ruleset() (one atomic transaction)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    run([nft(), "-f", str(path)], hint=_HINT, timeout=30)


def remove() -> bool:
    """Drop cloudlet's tables; True if there were any."""
    removed = False
    for family in ("inet", "bridge"):
        if run([nft(), "list", "table", family, TABLE], check=False).returncode == 0:
            run([nft(), "delete", "table", family, TABLE], hint=_HINT)
            removed = True
    return removed


def tables_present() -> list[str]:
    return [
        family
        for family in ("inet", "bridge")
        if run([nft(), "list", "table", family, TABLE], check=False).returncode == 0
    ]
