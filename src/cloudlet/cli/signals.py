"""SIGTERM and SIGHUP as an exception, so a command unwinds and cleans up before it exits."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloudlet.progress import CancelToken

SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(Exception):
    """SIGTERM or SIGHUP (the terminal closed): unwind, then exit 128+N."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def unwind_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise Terminated; the old handlers come back."""
    previous = {s: signal.signal(s, raise_terminated) for s in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def cancel_on_interrupt() -> Iterator[CancelToken]:
    """Within the block, the first Ctrl-C cancels the engine call's token (the call stops
    at its next stage and cleans up, raising Cancelled); a second one interrupts at once."""
    from cloudlet.engine import call_options
    from cloudlet.progress import CancelToken

    token = CancelToken()
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # not ours to catch: another thread's call, or Ctrl-C ignored (a background job)
        with call_options.per_call(cancel=token):
            yield token
        return

    def interrupted(signum: int, frame: FrameType | None) -> None:
        if token.cancelled:
            signal.default_int_handler(signum, frame)
        token.cancel("interrupted (Ctrl-C)")

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        with call_options.per_call(cancel=token):
            yield token
    finally:
        signal.signal(signal.SIGINT, previous)
