"""The API's operations as rows: long work a client follows by id, across restarts.

The server records an operation before its work starts, updates its progress while
it runs and its result or error when it ends. A row stays readable after the server
stops; one still "running" whose server process is gone reads "interrupted" (the
engine's own recovery settles the VM it touched).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from cloudlet.engine.context import EngineContext
from cloudlet.engine.requester import LOCAL
from cloudlet.errors import CloudletError, InvalidInput, NotFound
from cloudlet.host import processes
from cloudlet.progress import ProgressEvent
from cloudlet.store.models import ApiOperationRow, EventRow, utcnow

RUNNING = "running"
SUCCESS = "success"
FAILURE = "failure"
CANCELLED = "cancelled"
INTERRUPTED = "interrupted"
FINAL = (SUCCESS, FAILURE, CANCELLED, INTERRUPTED)


@dataclass(frozen=True)
class OperationView:
    """One operation as a client reads it (``error``: code, message and hint)."""

    id: str
    kind: str
    status: str
    progress: dict[str, Any] | None
    resources: dict[str, list[str]]
    may_cancel: bool
    error: dict[str, Any] | None
    result: Any
    created_at: datetime
    updated_at: datetime

    @property
    def finished(self) -> bool:
        return self.status in FINAL

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat() + "Z"
        data["updated_at"] = self.updated_at.isoformat() + "Z"
        return data


def error_body(exc: CloudletError) -> dict[str, Any]:
    """The error envelope's inside: what the API answers and what a failed operation keeps."""
    return {"code": exc.code, "message": exc.message, "hint": exc.hint}


def _loads(text: str | None) -> Any:
    return json.loads(text) if text is not None else None


def _view(row: ApiOperationRow) -> OperationView:
    return OperationView(
        id=row.id,
        kind=row.kind,
        status=row.status,
        progress=_loads(row.progress_json),
        resources=json.loads(row.resources_json),
        may_cancel=row.may_cancel and row.status == RUNNING,
        error=_loads(row.error_json),
        result=_loads(row.result_json),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _instance_of(resources: dict[str, list[str]]) -> str:
    """The VM an operation works on ("" for none): the name ending its first path."""
    paths = resources.get("instances") or [""]
    return paths[0].rsplit("/", 1)[-1]


def status_event(row: ApiOperationRow) -> EventRow:
    """The event that says an operation is now in ``row.status`` (for the stream)."""
    error = _loads(row.error_json)
    message = f"{row.kind} {row.status}"
    if error:
        message += f": {error.get('message')}"
    return EventRow(
        instance_name=_instance_of(json.loads(row.resources_json)),
        kind=row.status,
        message=message,
        category="operation",
        requester=row.requester,
        api_operation=row.id,
        at=row.updated_at,
    )


def check_id(op_id: str) -> str:
    """An operation id is a UUID; anything else is refused before the database sees it."""
    try:
        return str(uuid.UUID(op_id))
    except (ValueError, TypeError):
        raise InvalidInput(
            f"invalid operation id {op_id[:40]!r}", hint="use the id an operation was given"
        ) from None


class OperationRecords:
    """Rows of the API's operations: begin, progress, finish, read, mark interrupted."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    def begin(
        self,
        kind: str,
        resources: dict[str, list[str]],
        *,
        may_cancel: bool,
        requester: str = LOCAL,
    ) -> OperationView:
        pid = os.getpid()
        now = utcnow()
        row = ApiOperationRow(
            id=str(uuid.uuid4()),
            kind=kind,
            status=RUNNING,
            resources_json=json.dumps(resources),
            may_cancel=may_cancel,
            owner_pid=pid,
            owner_start=processes.start_time(pid),
            created_at=now,
            updated_at=now,
            requester=requester,
        )
        with self.ctx.db.session() as s:
            s.add(row)
            s.add(status_event(row))
        return _view(row)

    def progress(self, op_id: str, event: ProgressEvent) -> None:
        with self.ctx.db.session() as s:
            row = s.get(ApiOperationRow, op_id)
            if row is not None and row.status == RUNNING:
                row.progress_json = json.dumps(asdict(event))
                row.updated_at = utcnow()

    def finish(
        self, op_id: str, status: str, *, result: Any = None, error: dict[str, Any] | None = None
    ) -> OperationView:
        with self.ctx.db.session() as s:
            row = s.get(ApiOperationRow, op_id)
            if row is None:
                raise NotFound(f"no operation {op_id}")
            row.status = status
            row.result_json = json.dumps(result) if result is not None else None
            row.error_json = json.dumps(error) if error is not None else None
            row.updated_at = utcnow()
            s.add(status_event(row))
        return _view(row)

    def get(self, op_id: str) -> OperationView:
        op_id = check_id(op_id)
        with self.ctx.db.session() as s:
            row = s.get(ApiOperationRow, op_id)
        if row is None:
            raise NotFound(f"no operation {op_id}", hint="operations are kept by id; check the id")
        return _view(row)

    def mark_interrupted(self) -> list[str]:
        """Operations still running whose server process is gone: now "interrupted"."""
        marked = []
        with self.ctx.db.session() as s:
            rows = s.scalars(select(ApiOperationRow).where(ApiOperationRow.status == RUNNING))
            for row in rows:
                if processes.is_alive(row.owner_pid, row.owner_start):
                    continue
                row.status = INTERRUPTED
                row.error_json = json.dumps(
                    {
                        "code": INTERRUPTED,
                        "message": "the server stopped while this operation ran",
                        "hint": "read the resources' state and run the action again if needed",
                    }
                )
                row.updated_at = utcnow()
                s.add(status_event(row))
                marked.append(row.id)
        return marked
