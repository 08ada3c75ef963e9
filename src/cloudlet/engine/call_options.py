"""Options that belong to one call of the engine, not to the engine object.

One ``Engine`` serves many callers at once (CLI threads, the server's request
threads), so how long a call may wait for a lock, or the token that cancels it, cannot
be attributes of the engine. A frontend sets them around one call::

    with call_options.per_call(lock_wait=0, cancel=token):
        engine.start("web1")

They live in a ``ContextVar``: each thread (and each asyncio task) sees only its own,
and nothing is left behind when the block ends. Every lock wait reads them; the waits
that take an explicit ``cancel=`` fall back to the call's token.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from cloudlet.errors import InvalidInput
from cloudlet.progress import CancelToken, ProgressSink, Tracker


@dataclass(frozen=True)
class CallOptions:
    """``lock_wait``: seconds to wait for a lock another caller holds (0: fail at once
    with Busy; None: the engine's default). ``cancel``: ends this call's waits."""

    lock_wait: float | None = None
    cancel: CancelToken | None = None


_NONE = CallOptions()
_CURRENT: ContextVar[CallOptions | None] = ContextVar("cloudlet_call_options", default=None)


def current() -> CallOptions:
    return _CURRENT.get() or _NONE


def cancel_token(explicit: CancelToken | None = None) -> CancelToken | None:
    """The token a wait should honour: its own if given, else the call's."""
    return explicit if explicit is not None else current().cancel


def tracker(progress: ProgressSink | None = None, cancel: CancelToken | None = None) -> Tracker:
    """The sink and token of one long use case (its token: the call's unless given)."""
    return Tracker(progress, cancel_token(cancel))


@contextmanager
def per_call(
    *, lock_wait: float | None = None, cancel: CancelToken | None = None
) -> Iterator[CallOptions]:
    """Set this thread's options for the calls made inside the block; nested blocks
    replace only what they name."""
    if lock_wait is not None and not 0 <= lock_wait <= 86400:
        raise InvalidInput(
            f"a lock wait of {lock_wait} s is out of range",
            hint="give 0 (fail at once) to 86400 seconds",
        )
    outer = current()
    options = CallOptions(
        lock_wait=outer.lock_wait if lock_wait is None else lock_wait,
        cancel=outer.cancel if cancel is None else cancel,
    )
    token = _CURRENT.set(options)
    try:
        yield options
    finally:
        _CURRENT.reset(token)
