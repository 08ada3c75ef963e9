"""Notices a user should hear, kept per call rather than per object.

One engine (and one driver) serves many threads at once, so what a call wants to tell
its caller cannot live in a list on the object: another thread would read it, and it
would grow for the life of a server. Each thread (and each asyncio task, which copies
its context) sees its own list; ``collect`` gives one call a fresh list of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class CallNotices:
    """A list of notices per execution context (thread or task)."""

    def __init__(self, name: str) -> None:
        self._current: ContextVar[list[str] | None] = ContextVar(name, default=None)

    @property
    def current(self) -> list[str]:
        """The list this context collects into (made on first use)."""
        found = self._current.get()
        if found is None:
            found = []
            self._current.set(found)
        return found

    def add(self, notice: str) -> None:
        """Append once: the same notice twice in one call says nothing new."""
        current = self.current
        if notice not in current:
            current.append(notice)

    def take(self) -> list[str]:
        """The notices so far, leaving an empty list behind."""
        current = self.current
        taken = list(current)
        current.clear()
        return taken

    @contextmanager
    def collect(self) -> Iterator[list[str]]:
        """A fresh list for the calls inside the block; the outer list comes back after."""
        fresh: list[str] = []
        token = self._current.set(fresh)
        try:
            yield fresh
        finally:
            self._current.reset(token)
