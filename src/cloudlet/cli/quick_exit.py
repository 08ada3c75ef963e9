"""Ending the CLI process without the interpreter's teardown.

Once a command has finished (its output written, its threads joined, the exit
handlers registered while it ran called), what the interpreter still does is free
every object and module one by one: with SQLAlchemy, pydantic and Typer loaded that
took 0.1 s on an idle host and up to 0.7 s on a busy one, on every command, for
memory the kernel frees at once anyway. So the CLI's entry point arms an exit
handler that runs after those others (Python calls them last registered, first run;
non-daemon threads are joined before any) and ends the process with the command's
exit status.

Only the entry point arms it: code that calls ``main()`` in-process (tests) keeps the
ordinary ``SystemExit``.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys

_status: list[int] = []


def exit_status(code: object) -> int:
    """The status ``SystemExit(code)`` ends a process with (None: 0, text: 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1


def arm() -> None:
    """Register the quick exit; it acts only once ``finish`` has set the status."""
    atexit.register(exit_now)


def finish(code: object) -> None:
    """The command ended with ``SystemExit(code)``: end the process with its status."""
    _status[:] = [exit_status(code)]


def exit_now() -> None:
    """The exit handler: flush the log and the output, then end with the status."""
    if not _status:
        return  # an error nobody turned into an exit status: let Python report it
    # The log file's handler was registered before this one, so it would not run.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            return  # Python's own exit reports the failed write (and sets status 120)
    os._exit(_status[0])
