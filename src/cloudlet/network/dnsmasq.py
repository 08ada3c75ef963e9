"""One dnsmasq per virtual network: fixed DHCP leases per MAC and DNS names NAME.NETWORK.

Its files live in the network's directory: ``dnsmasq.conf`` (fixed for the network's
life), ``dhcp-hosts`` and ``hosts`` (rewritten when NICs come and go, then SIGHUP),
``dnsmasq.pid``. It listens on the bridge only and never asks an upstream server.
"""

from __future__ import annotations

import signal
import stat
from dataclasses import dataclass
from pathlib import Path

from cloudlet.errors import CloudletError
from cloudlet.host import processes
from cloudlet.host.run import run, which_sbin
from cloudlet.spec.network import NetworkDef, first_host

_HINT = "install dnsmasq-base"


@dataclass(frozen=True)
class Lease:
    """A fixed lease: this MAC always gets this address and name."""

    mac: str
    ip: str
    hostname: str


def run_user(directory: Path) -> str:
    """dnsmasq drops root for ``nobody`` once it listens, then re-reads its hosts files
    on SIGHUP as nobody: possible only when every directory above them lets others in.
    A private state directory (mode 0700) keeps it root."""
    for path in (directory, *directory.parents):
        try:
            if not path.stat().st_mode & stat.S_IXOTH:
                return "root"
        except FileNotFoundError:
            continue
    return "nobody"


def config_text(net: NetworkDef, directory: Path, user: str = "nobody") -> str:
    """dnsmasq.conf for a network (every value was validated by NetworkDef)."""
    network = net.network
    lines = [
        f"# cloudlet network {net.name} ({net.mode})",
        f"user={'root' if user == 'root' else 'nobody'}",
        f"interface={net.bridge}",
        "bind-interfaces",
        "except-interface=lo",
        "no-resolv",
        "no-hosts",
        "no-poll",
        f"domain={net.name}",
        f"local=/{net.name}/",
        f"addn-hosts={directory / 'hosts'}",
        f"dhcp-hostsfile={directory / 'dhcp-hosts'}",
        f"dhcp-range={first_host(net.subnet)},static,{network.netmask},1h",
        "dhcp-authoritative",
        "leasefile-ro",
        f"dhcp-option=option:dns-server,{net.gateway}",
        f"pid-file={directory / 'dnsmasq.pid'}",
        f"log-facility={directory / 'dnsmasq.log'}",
    ]
    if net.mode == "isolated":
        lines.append("dhcp-option=option:router")  # no default route: no way out
    else:
        lines.append(f"dhcp-option=option:router,{net.gateway}")
    return "\n".join(lines) + "\n"


def dhcp_hosts_text(leases: list[Lease]) -> str:
    return "".join(f"{lease.mac},{lease.ip},{lease.hostname}\n" for lease in leases)


def hosts_text(net: NetworkDef, leases: list[Lease]) -> str:
    lines = [f"{net.gateway}\tgateway.{net.name}"]
    lines += [f"{lease.ip}\t{lease.hostname}.{net.name} {lease.hostname}" for lease in leases]
    return "\n".join(lines) + "\n"


def write_files(net: NetworkDef, directory: Path, leases: list[Lease]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("dnsmasq.conf", config_text(net, directory, run_user(directory))),
        ("dhcp-hosts", dhcp_hosts_text(leases)),
        ("hosts", hosts_text(net, leases)),
    ):
        tmp = directory / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(directory / name)


def start(directory: Path) -> tuple[int, int]:
    """Start dnsmasq (it daemonizes itself); return its pid and start time."""
    pid_file = directory / "dnsmasq.pid"
    pid_file.unlink(missing_ok=True)
    dnsmasq = which_sbin("dnsmasq", hint=_HINT)
    run([dnsmasq, f"--conf-file={directory / 'dnsmasq.conf'}"], hint=_HINT, timeout=30)
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        raise CloudletError(
            f"dnsmasq did not write its pid file {pid_file}", hint="see dnsmasq.log beside it"
        ) from None
    started = processes.start_time(pid)
    if started is None:
        raise CloudletError("dnsmasq exited right after it started", hint=f"see {directory}")
    return pid, started


def is_running(pid: int | None, started: int | None) -> bool:
    return pid is not None and processes.is_alive(pid, started)


def reload(pid: int | None, started: int | None) -> None:
    """Re-read dhcp-hosts and hosts (SIGHUP)."""
    if pid is not None:
        processes.signal_pid(pid, signal.SIGHUP, started)


def stop(pid: int | None, started: int | None) -> bool:
    """Stop the dnsmasq we started (checked by pid and start time); True if it ran."""
    if pid is None or not processes.is_alive(pid, started):
        return False
    processes.signal_pid(pid, signal.SIGTERM, started)
    if not processes.wait_gone(pid, 5.0, started):
        processes.kill_and_wait(pid, started)
    return True


def is_dnsmasq(pid: int) -> bool:
    argv = processes.cmdline(pid)
    return bool(argv) and Path(argv[0]).name == "dnsmasq"
