"""passt: the default user-mode network's back end, with no way to the host's loopback.

QEMU 7.2's built-in slirp maps its gateway (10.0.2.2) to the host's 127.0.0.1, so any
guest reaches every service bound there (other VMs' SSH forwards among them), and 7.2
does not expose libslirp's ``disable_host_loopback``. passt with ``--no-map-gw`` sends
traffic for the gateway to the real address instead. It talks to QEMU over one end of
a socketpair (``--fd``; Debian 12's passt cannot bind a socket path in a directory only
root may enter, since it drops to nobody first), quits when QEMU closes it
(``--one-off``), and binds the port forwards on 127.0.0.1 before dropping privileges.
The guest keeps slirp's addresses (10.0.2.15, gateway 10.0.2.2, DNS 10.0.2.3), so
nothing inside it changes. passt cannot add forwards while it runs: they take effect
when the VM next starts.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudlet.errors import MissingDependency
from cloudlet.host import processes
from cloudlet.host.run import spawn, which

HINT = "install passt, or restrict the VM's network (no outbound traffic)"
GUEST_ADDRESS = ("10.0.2.15", "24", "10.0.2.2")
DNS_ALIAS = "10.0.2.3"


@dataclass(frozen=True)
class Forward:
    proto: str  # tcp or udp
    host_port: int
    guest_port: int


@dataclass(frozen=True)
class Started:
    pid: int
    start: int
    qemu_end: socket.socket  # QEMU's end of the socketpair, to pass to it and close


def argv(binary: str, fd: int, forwards: Sequence[Forward]) -> list[str]:
    """passt's command line: foreground, one client, the gateway not mapped to the host."""
    address, prefix, gateway = GUEST_ADDRESS
    args = [
        binary, "--foreground", "--one-off", "--quiet", "--no-map-gw", "--fd", str(fd),
        "--address", address, "--netmask", prefix, "--gateway", gateway,
        "--dns-forward", DNS_ALIAS,
    ]  # fmt: skip
    for proto in ("tcp", "udp"):
        # one option per forward: an address applies to a whole list of ports
        specs = [
            f"127.0.0.1/{int(f.host_port)}:{int(f.guest_port)}"
            for f in forwards
            if f.proto == proto
        ]
        for spec in specs or ["none"]:
            args += [f"--{proto}-ports", spec]
    return args


def start(forwards: Sequence[Forward], log: Path) -> Started:
    """Start passt for one VM; the caller hands ``qemu_end`` to QEMU, then closes it."""
    binary = which("passt", hint=HINT)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with open(log, "ab") as out:
            proc = spawn(
                argv(binary, ours.fileno(), forwards),
                stdout=out.fileno(),
                stderr=out.fileno(),
                detach=True,
                pass_fds=(ours.fileno(),),
            )
    except BaseException:
        theirs.close()
        raise
    finally:
        ours.close()
    start_time = processes.start_time(proc.pid)
    if start_time is None:
        theirs.close()
        _reap(proc)
        raise_failed(log)
    return Started(proc.pid, int(start_time or 0), theirs)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        processes.kill_and_wait(proc.pid)


def raise_failed(log: Path) -> None:
    lines = [
        line.strip()
        for line in log.read_text(errors="replace").splitlines()
        if line.strip() and "syslog" not in line and "Changing to nobody" not in line
    ]
    reason = "; ".join(lines[-3:]) or "it exited"
    raise MissingDependency(
        f"the user-mode network (passt) did not start: {reason}",
        hint="the host needs a default route for outbound traffic; or restrict the VM's network",
    )


def stop(pid: int, start: int) -> None:
    """Stop a VM's passt (it quits by itself when QEMU goes; this is for the rest)."""
    if processes.is_alive(pid, start):
        processes.kill_and_wait(pid, start)
