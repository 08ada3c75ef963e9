"""Type into a guest terminal session and read what comes back until its program ends."""

from __future__ import annotations

import select
import time

from cloudlet.driver.base import GuestTerminal


def talk(term: GuestTerminal, typed: bytes, timeout: float = 60) -> tuple[bytes, int | None]:
    """Type ``typed``; return the output and the exit code (None: still running)."""
    term.write(typed)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([term], [], [], 0.2)
        if ready:
            data = term.read()
            out += data
            if not data:
                break
        elif term.exit_code() is not None:
            break
    return out, term.exit_code()
