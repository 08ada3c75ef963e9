"""Cancel a wait from a second thread and check that it stopped promptly."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cloudlet.errors import Cancelled
from cloudlet.progress import CancelToken

REASON = "the client went away"


@contextmanager
def cancelled_soon(after: float = 0.3, bound: float = 5.0) -> Iterator[CancelToken]:
    """A token another thread cancels ``after`` seconds in; the block must raise
    Cancelled (with the token's reason) within ``bound`` seconds of that."""
    token = CancelToken()
    timer = threading.Timer(after, token.cancel, args=(REASON,))
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(Cancelled, match=REASON):
            yield token
    finally:
        timer.cancel()
    elapsed = time.monotonic() - start
    assert token.cancelled and elapsed < after + bound, f"took {elapsed:.1f} s"
