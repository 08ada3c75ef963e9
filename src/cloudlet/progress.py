"""One progress type for every long operation, and a token that cancels its waits.

Long work reports ``ProgressEvent(stage, done, total)`` to a ``ProgressSink``: a stage
alone ("booting"), or a stage with a count ("downloading", 3 MiB of 200 MiB). Older
layers still take a stage callback or a byte callback; the adapters here turn one sink
into either shape, so a caller needs only one.

A ``CancelToken`` is handed to waits that may block for long (agent, shutdown, exec,
cloud-init, locks, downloads, backup copies). Another thread (a server whose client went
away, a signal handler) calls ``cancel``; the wait notices within a poll interval, leaves
nothing half-done at its own level, and raises ``Cancelled``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cloudlet.errors import Cancelled

DEFAULT_REASON = "the operation was cancelled"


@dataclass(frozen=True)
class ProgressEvent:
    """Where a long operation is: its stage and, when it counts, how far of how much."""

    stage: str
    done: int | None = None
    total: int | None = None


ProgressSink = Callable[[ProgressEvent], None]
StageCallback = Callable[[str], None]
ByteCallback = Callable[[int, int | None], None]


def stage_callback(sink: ProgressSink | None) -> StageCallback | None:
    """A ``Callable[[str], None]`` (images' stage messages) that feeds ``sink``."""
    if sink is None:
        return None
    return lambda stage: sink(ProgressEvent(stage))


def byte_callback(sink: ProgressSink | None, stage: str) -> ByteCallback | None:
    """A ``(done, total)`` callback (downloads, copies) that feeds ``sink`` as ``stage``."""
    if sink is None:
        return None
    return lambda done, total: sink(ProgressEvent(stage, done, total))


class CancelToken:
    """Thread-safe: one thread cancels, the threads waiting on it stop promptly."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._reason = ""

    def cancel(self, reason: str = DEFAULT_REASON) -> None:
        """Ask every wait holding this token to stop; the first reason given is kept."""
        with self._lock:
            if not self._event.is_set():
                self._reason = reason or DEFAULT_REASON
                self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str:
        with self._lock:
            return self._reason

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason, hint="run the command again when you want it done")

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True (at once) when the token is or gets cancelled."""
        return self._event.wait(max(0.0, seconds))


def phase(sink: ProgressSink | None, cancel: CancelToken | None, stage: str) -> None:
    """Enter ``stage`` of a long operation: stop here if cancelled, else tell the sink."""
    check(cancel)
    if sink is not None:
        sink(ProgressEvent(stage))


def check(cancel: CancelToken | None) -> None:
    """``raise_if_cancelled`` for an optional token."""
    if cancel is not None:
        cancel.raise_if_cancelled()


def pause(cancel: CancelToken | None, seconds: float) -> None:
    """``time.sleep`` that a token cuts short: raises ``Cancelled`` once cancelled."""
    if cancel is None:
        time.sleep(seconds)
        return
    cancel.wait(seconds)
    cancel.raise_if_cancelled()


@dataclass(frozen=True)
class Tracker:
    """A long operation's sink and token as one value, handed down its layers.

    ``phase`` and ``count`` are stage boundaries: they stop with ``Cancelled`` first, so
    call them only where the caller's cleanup undoes everything made so far. ``tell``
    only reports: for stages past the point where stopping would leave something half made.
    """

    sink: ProgressSink | None = None
    cancel: CancelToken | None = None

    def phase(self, stage: str) -> None:
        phase(self.sink, self.cancel, stage)

    def count(self, stage: str, done: int, total: int | None) -> None:
        check(self.cancel)
        self.tell(stage, done, total)

    def tell(self, stage: str, done: int | None = None, total: int | None = None) -> None:
        if self.sink is not None:
            self.sink(ProgressEvent(stage, done, total))

    def check(self) -> None:
        check(self.cancel)

    def counter(self, stage: str, total: int, before: int = 0) -> Callable[[int], None]:
        """A ``done`` callback for one part of ``stage`` that starts ``before`` bytes in."""
        return lambda done: self.tell(stage, before + done, total)
