"""/api/v1/events: lifecycle and operation events as server-sent events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from cloudlet.api.auth import Caller, EngineDep
from cloudlet.api.event_stream import Streams, start_id

router = APIRouter(prefix="/api/v1/events", tags=["events"])
EVENT_STREAM: dict[str, Any] = {
    "description": (
        "text/event-stream: each event has an id, a type (lifecycle or operation) and "
        "data {id, at, kind, instance, message, operation, requester}; a comment every "
        "15 s keeps the connection open"
    ),
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


def streams_of(request: Request) -> Streams:
    streams: Streams = request.app.state.streams
    return streams


@router.get("", responses={200: EVENT_STREAM}, response_class=StreamingResponse)
def events(
    request: Request,
    engine: EngineDep,
    caller: Caller,
    since: Annotated[int | None, Query(ge=0, description="replay the events after this id")] = None,
    last_event_id: Annotated[
        str | None, Header(description="replay the events after this id (a reconnect)")
    ] = None,
) -> StreamingResponse:
    """Follow what happens: the events after ``Last-Event-ID`` (or ``since``) first,
    then new ones as they come, from this server and from the local CLI alike."""
    last = start_id(engine.events, last_event_id, since)
    return StreamingResponse(
        streams_of(request).stream(engine.events, caller, last),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
