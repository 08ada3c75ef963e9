"""Proprietary OS licences: the seats this host may use, and how many are taken."""

from __future__ import annotations

from sqlalchemy import select

from cloudlet.engine import launch, licensing, locks
from cloudlet.engine.context import EngineContext
from cloudlet.spec import names
from cloudlet.store.models import LicenceRow


class Licences:
    """Register seats and list them with their use."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def license_add(self, name: str, seats: int) -> dict[str, object]:
        """Register (or change) the seats of a proprietary licence."""
        names.licence_name(name)
        licensing.validate_seats(seats)
        ctx = self.ctx
        with (
            locks.hold(ctx.paths.locks, locks.HOST_KEY, what="host capacity"),
            ctx.db.session() as s,
        ):
            row = s.get(LicenceRow, name)
            if row is None:
                s.add(LicenceRow(name=name, seats=seats))
            else:
                row.seats = seats
        return {"name": name, "seats": seats, "in_use": launch.seats_in_use(ctx, name)}

    def licences(self) -> list[dict[str, object]]:
        with self.ctx.db.session() as s:
            rows = s.scalars(select(LicenceRow).order_by(LicenceRow.name)).all()
        return [
            {"name": r.name, "seats": r.seats, "in_use": launch.seats_in_use(self.ctx, r.name)}
            for r in rows
        ]
