"""The events table read as a feed: what happened after a given event id, in order.

Every process writes events into the one database (the CLI, the API's operations,
recovery), so a reader that polls it sees them all. On SQLite one writer commits at a
time, so ids become visible in increasing order and "after id N" misses nothing. (On
PostgreSQL a sequence can commit out of order: a reader there must also re-read a
short window behind its last id.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from cloudlet.engine.context import EngineContext
from cloudlet.store.models import EventRow

LIFECYCLE = "lifecycle"
OPERATION = "operation"
BATCH = 500  # events read per query: a long replay goes in several


@dataclass(frozen=True)
class EventView:
    """One event: ``category`` is lifecycle or operation; ``operation`` the API
    operation it belongs to; ``requester`` a token's name or "local" for the CLI."""

    id: int
    at: datetime
    category: str
    kind: str
    instance: str | None
    message: str
    operation: str | None
    requester: str | None

    def to_dict(self) -> dict[str, Any]:
        """The event's data on the stream (its category is the SSE event type)."""
        return {
            "id": self.id,
            "at": self.at.isoformat() + "Z",
            "kind": self.kind,
            "instance": self.instance,
            "message": self.message,
            "operation": self.operation,
            "requester": self.requester,
        }


def _view(row: EventRow) -> EventView:
    return EventView(
        id=row.id,
        at=row.at,
        category=row.category,
        kind=row.kind,
        instance=row.instance_name or None,
        message=row.message,
        operation=row.api_operation,
        requester=row.requester,
    )


class EventFeed:
    """Reads events by id; the API's stream polls ``after``."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def latest_id(self) -> int:
        """The newest event's id (0 when there is none)."""
        with self.ctx.db.session() as s:
            return int(s.scalar(select(func.max(EventRow.id))) or 0)

    def after(self, last_id: int, limit: int = BATCH) -> list[EventView]:
        """The events after ``last_id``, oldest first, at most ``limit`` of them."""
        with self.ctx.db.session() as s:
            rows = s.scalars(
                select(EventRow).where(EventRow.id > last_id).order_by(EventRow.id).limit(limit)
            ).all()
            return [_view(r) for r in rows]
