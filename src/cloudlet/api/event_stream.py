"""Server-sent events from the events table: one polling reader per connected client.

Each stream replays what came after the client's last event id, then polls for new
rows (so events written by any process, the local CLI too, reach it within
``POLL`` seconds) and sends a keep-alive comment when it has been quiet for
``KEEPALIVE`` seconds. A client that goes away cancels its reader (Starlette listens
for the disconnect); the server's stop ends every reader at its next poll.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator

import anyio

from cloudlet.engine.events import EventFeed, EventView
from cloudlet.engine.tokens import TokenView
from cloudlet.errors import InvalidInput

POLL = 0.25  # seconds between reads of the table while nothing is new
KEEPALIVE = 15.0  # seconds of silence before a comment keeps proxies from closing it
RETRY_MS = 2000  # how soon a client's EventSource reconnects


def visible(caller: TokenView, event: EventView) -> bool:
    """Whether ``caller`` may see ``event``. Projects are not there yet: every token
    sees every event. Once events carry a project, filter here (and in the query)."""
    del caller, event
    return True


def frame(event: EventView) -> str:
    """One event in SSE form: its id, its category as the type, its data as JSON."""
    data = json.dumps(event.to_dict(), separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.category}\ndata: {data}\n\n"


class Streams:
    """The open streams of one server: counted, and all ended by ``close``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = 0
        self.closed = threading.Event()

    @property
    def open(self) -> int:
        with self._lock:
            return self._open

    def close(self) -> None:
        self.closed.set()

    async def stream(self, feed: EventFeed, caller: TokenView, last_id: int) -> AsyncIterator[str]:
        """The events after ``last_id``, then the new ones as they come."""
        with self._lock:
            self._open += 1
        try:
            yield f": connected\nretry: {RETRY_MS}\n\n"
            quiet_since = time.monotonic()
            while not self.closed.is_set():
                events = await anyio.to_thread.run_sync(feed.after, last_id)
                for event in events:
                    last_id = event.id
                    if visible(caller, event):
                        yield frame(event)
                        quiet_since = time.monotonic()
                if events:
                    continue
                if time.monotonic() - quiet_since >= KEEPALIVE:
                    yield ": keep-alive\n\n"
                    quiet_since = time.monotonic()
                await anyio.sleep(POLL)
        finally:
            with self._lock:
                self._open -= 1


def start_id(feed: EventFeed, last_event_id: str | None, since: int | None) -> int:
    """Where a stream starts: after the client's last event (header first, then
    ``since``), or after the newest event when it names none. An id beyond the newest
    (another database's) starts at the newest."""
    latest = feed.latest_id()
    asked = _parse_last(last_event_id) if last_event_id is not None else since
    return latest if asked is None else min(asked, latest)


def _parse_last(text: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise InvalidInput(
            f"invalid Last-Event-ID {text[:40]!r}",
            hint="send the id of the last event received (a whole number)",
        )
    return int(text)
