"""Proprietary OS licences: the seats this host may use, and how many are taken."""

from __future__ import annotations

from sqlalchemy import select

from cloudlet.engine import launch, licensing, locks
from cloudlet.engine.context import EngineContext
from cloudlet.engine.image_views import LicenceView
from cloudlet.spec import names
from cloudlet.store.models import LicenceRow


class Licences:
    """Register seats and list them with their use."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def license_add(self, name: str, seats: int) -> LicenceView:
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
        return LicenceView(name, seats, launch.seats_in_use(ctx, name))

    def licences(self) -> list[LicenceView]:
        with self.ctx.db.session() as s:
            rows = s.scalars(select(LicenceRow).order_by(LicenceRow.name)).all()
        return [LicenceView(r.name, r.seats, launch.seats_in_use(self.ctx, r.name)) for r in rows]
