"""Links (bridges and TAPs) through `ip`, and the sysctls a bridged network needs."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

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
    """IPv4 routing on, and bridged IPv4 through nftables' inet hooks (br_netfilter),
    so per-VM rules see traffic between VMs on one bridge."""
    for path in (_PROC / "ipv4/ip_forward", _PROC / "bridge/bridge-nf-call-iptables"):
        with contextlib.suppress(FileNotFoundError):
            if path.read_text().strip() != "1":
                path.write_text("1\n")
