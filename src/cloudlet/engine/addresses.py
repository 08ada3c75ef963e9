"""A VM's addresses as cloudlet assigned them: the user-mode NAT address and one per NIC
on a virtual network (recorded at create, so a stopped VM has them too)."""

from __future__ import annotations

from sqlalchemy import select

from cloudlet.engine.read_model import USER_MODE_ADDRESS as USER_MODE_ADDRESS
from cloudlet.store.database import Database
from cloudlet.store.models import NicRow


def of(db: Database, instance_id: str, *, user_mode: bool) -> dict[str, str]:
    """Network name -> address, user-mode NAT (``nat``) first, then the NICs in order."""
    found = {"nat": USER_MODE_ADDRESS} if user_mode else {}
    with db.session() as s:
        rows = s.scalars(
            select(NicRow).where(NicRow.instance_id == instance_id).order_by(NicRow.index)
        ).all()
        found.update((row.network, row.ip) for row in rows)
    return found
