"""Per-VM locks across processes (flock): two CLIs never act on one VM at once.

flock locks vanish with their process, so a CLI killed with SIGKILL never leaves
a VM locked.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cloudlet.engine import call_options
from cloudlet.errors import Busy
from cloudlet.progress import CancelToken, check, pause
from cloudlet.spec.names import name_path

DEFAULT_WAIT = 300.0
POLL_INTERVAL = 0.05
# Held while capacity and licence seats are checked and claimed in one step.
HOST_KEY = ".host"


@contextmanager
def hold(
    lock_dir: Path,
    key: str,
    *,
    wait: float | None = None,
    what: str = "",
    cancel: CancelToken | None = None,
) -> Iterator[None]:
    """Hold the lock named ``key``, waiting up to ``wait`` seconds for another holder.

    ``wait`` (0: fail at once when held) defaults to the call's ``lock_wait`` (see
    call_options), else DEFAULT_WAIT. A cancelled ``cancel`` (default: the call's
    token) ends the wait with ``Cancelled``, the lock not taken.
    """
    options = call_options.current()
    if wait is None:
        wait = DEFAULT_WAIT if options.lock_wait is None else options.lock_wait
    cancel = call_options.cancel_token(cancel)
    check(cancel)
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(name_path(lock_dir, key, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Busy(
                        f"{what or key} is busy with another cloudlet command",
                        hint="wait for it to finish and try again",
                    ) from None
                pause(cancel, POLL_INTERVAL)
        yield
    finally:
        os.close(fd)


@contextmanager
def try_hold(lock_dir: Path, key: str) -> Iterator[bool]:
    """Hold the lock if nobody does right now (yields True), else yield False at once.

    Checking ``is_free`` and then acting is a race: another thread or process may take
    the lock in between. This holds it for the whole of the work instead.
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(name_path(lock_dir, key, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def is_free(lock_dir: Path, key: str) -> bool:
    """True when nobody holds the lock right now (used to spot abandoned operations)."""
    path = name_path(lock_dir, key, ".lock")
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
