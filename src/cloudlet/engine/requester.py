"""Who a call of the engine acts for, so the events it records can name them.

A frontend sets it around the calls it makes for someone (the API server for a
token's operation); anything else is ``local``: the CLI run on this host. It lives in
a ``ContextVar`` like the call options: each thread sees only its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

LOCAL = "local"


@dataclass(frozen=True)
class Requester:
    """``name``: an API token's name, or ``local``; ``operation``: the API operation
    the calls belong to, if any."""

    name: str = LOCAL
    operation: str | None = None


_LOCAL = Requester()
_CURRENT: ContextVar[Requester | None] = ContextVar("cloudlet_requester", default=None)


def current() -> Requester:
    return _CURRENT.get() or _LOCAL


@contextmanager
def acting_for(name: str, operation: str | None = None) -> Iterator[Requester]:
    """The calls made inside the block act for ``name`` (within ``operation``)."""
    token = _CURRENT.set(Requester(name, operation))
    try:
        yield current()
    finally:
        _CURRENT.reset(token)
