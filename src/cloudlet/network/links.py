"""Links (bridges and TAPs) through `ip`, and the sysctls a bridged network needs."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from cloudlet.errors import MissingDependency
from cloudlet.host.run import run, which_sbin

_HINT = "install iproute2"
_PROC = Path("/proc/sys/net")


def ip() -> str:
    return which_sbin("ip", hint=_HINT)


def link_names() -> list[str]:
    """Every link in this network namespace."""
    out = run([ip(), "-j", "link", "show"], hint=_HINT).stdout
    return [str(link["ifname"]) for link in json.loads(out or b"[]")]


def exists(name: str) -> bool:
    return run([ip(), "link", "show", "dev", name], check=False).returncode == 0


def delete(name: str) -> bool:
    """Remove a link; False when there was none."""
    if not exists(name):
        return False
    run([ip(), "link", "del", "dev", name], hint=_HINT)
    return True


def enable_forwarding() -> None:
    """IPv4 routing on, and bridged traffic through nftables' inet hooks (br_netfilter),
    so per-VM rules see traffic between VMs on one bridge. Without br_netfilter those
    rules would silently not apply: load it, or refuse in one line."""
    _set_sysctl(_PROC / "ipv4/ip_forward")
    if not (_PROC / "bridge").is_dir():
        modprobe = which_sbin("modprobe", hint="install kmod")
        run([modprobe, "br_netfilter"], check=False, timeout=30)
    if not (_PROC / "bridge").is_dir():
        raise MissingDependency(
            "the kernel module br_netfilter cannot be loaded: "
            "firewall rules would not apply between VMs on one network",
            hint="load br_netfilter (modprobe br_netfilter) or use a kernel that has it",
        )
    for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
        _set_sysctl(_PROC / "bridge" / name)


def disable_ipv6(name: str) -> None:
    """No IPv6 on a link of a virtual network: the host gets no link-local address there
    and answers no neighbour discovery (cloudlet's networks are IPv4 only)."""
    with contextlib.suppress(FileNotFoundError):  # a kernel without IPv6
        _set_sysctl(_PROC / "ipv6/conf" / name / "disable_ipv6")


def _set_sysctl(path: Path) -> None:
    if path.read_text().strip() != "1":
        path.write_text("1\n")
