"""Host ports for new VMs' SSH forwards, handed out once even to racing processes.

A port the kernel calls free may already belong to a stopped VM (its forward is only
bound while it runs), or to a VM another thread or process (a second CLI, the server)
is creating right now whose row is not written yet. Both are skipped: the first by the
database, the second by a short-lived reservation file in the host's state directory,
made under the host ports lock so two processes never both take one port.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy import select

from cloudlet.engine import locks
from cloudlet.errors import Busy
from cloudlet.host.resources import free_loopback_port
from cloudlet.spec.instance import InstanceSpec
from cloudlet.store.database import Database
from cloudlet.store.models import InstanceRow

# Held by port_add from the check that a host port is free to the spec that takes it.
PORTS_KEY = ".ports"
# Long enough for a create to write its row; short enough not to leak ports forever.
RESERVATION_SECONDS = 600.0
_ATTEMPTS = 64


def ssh_port(db: Database, lock_dir: Path) -> int:
    """A free loopback port no VM records (as its SSH forward or a TCP port forward)
    and no call of any process on this host was just given (their reservation files
    live below ``lock_dir``, the host's lock directory)."""
    with db.session() as s:
        rows = s.execute(select(InstanceRow.ssh_port, InstanceRow.spec_json)).all()
    recorded = {r.ssh_port for r in rows if r.ssh_port is not None}
    for row in rows:
        forwards = InstanceSpec.model_validate_json(row.spec_json).network.ports
        recorded.update(f.host_port for f in forwards if f.proto == "tcp")
    reservations = lock_dir / "ports"
    with locks.hold(lock_dir, PORTS_KEY, what="host ports"):
        reservations.mkdir(mode=0o700, exist_ok=True)
        taken = _live_reservations(reservations)
        for _ in range(_ATTEMPTS):
            port = free_loopback_port()
            if port not in recorded and port not in taken:
                fd = os.open(reservations / str(port), os.O_WRONLY | os.O_CREAT, 0o600)
                os.close(fd)
                return port
    raise Busy(
        "found no free loopback port for the SSH forward",
        hint="try again; if it keeps failing, free some local ports",
    )


def _live_reservations(directory: Path) -> set[int]:
    """The ports reserved less than RESERVATION_SECONDS ago; older files are removed."""
    live: set[int] = set()
    now = time.time()
    for entry in directory.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            age = now - entry.stat().st_mtime
        except FileNotFoundError:
            continue
        if 0 <= age < RESERVATION_SECONDS:
            live.add(int(entry.name))
        else:
            entry.unlink(missing_ok=True)
    return live
