"""Host ports for new VMs' SSH forwards, handed out once even to racing threads.

A port the kernel calls free may already belong to a stopped VM (its forward is only
bound while it runs), or to a VM another thread is creating right now whose row is not
written yet. Both are skipped: the first by the database, the second by a short-lived
reservation in this process.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

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
_lock = threading.Lock()
_handed_out: dict[int, float] = {}


def ssh_port(db: Database) -> int:
    """A free loopback port no VM records (as its SSH forward or a TCP port forward)
    and no call in this process was just given."""
    with db.session() as s:
        rows = s.execute(select(InstanceRow.ssh_port, InstanceRow.spec_json)).all()
    recorded = {r.ssh_port for r in rows if r.ssh_port is not None}
    for row in rows:
        forwards = InstanceSpec.model_validate_json(row.spec_json).network.ports
        recorded.update(f.host_port for f in forwards if f.proto == "tcp")
    with _lock:
        now = time.monotonic()
        for port, at in list(_handed_out.items()):
            if now - at > RESERVATION_SECONDS:
                del _handed_out[port]
        for _ in range(_ATTEMPTS):
            port = free_loopback_port()
            if port not in recorded and port not in _handed_out:
                _handed_out[port] = now
                return port
    raise Busy(
        "found no free loopback port for the SSH forward",
        hint="try again; if it keeps failing, free some local ports",
    )
