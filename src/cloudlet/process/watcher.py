"""Waiting for a process to end, for the watcher of a `cloudlet run`.

The watcher itself (cloudlet.engine.run_watcher) opens the engine once the run is
gone; this module only waits, so process/ never imports the engine.
"""

from __future__ import annotations

import os
import select
import time

from cloudlet.host import processes


def wait_for_exit(pid: int, start: int | None) -> None:
    """Block until the process is gone: a pidfd where the kernel has them, else polling."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        while processes.is_alive(pid, start):
            time.sleep(0.2)
        return
    try:
        if processes.is_alive(pid, start):
            select.select([fd], [], [])
    finally:
        os.close(fd)
