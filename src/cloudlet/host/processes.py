"""Process identity and signals, by pid only (never by name).

A pid alone can be reused; a pid plus its kernel start time names one process.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from pathlib import Path


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has finished its work
        return None
    return int(fields[19])


def is_alive(pid: int, expected_start: int | None = None) -> bool:
    """True when ``pid`` runs and (if given) is the same process that started then."""
    current = start_time(pid)
    if current is None:
        return False
    return expected_start is None or current == expected_start


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def signal_pid(pid: int, sig: int, expected_start: int | None = None) -> bool:
    """Send ``sig`` only if the pid is still the process we mean; True if sent."""
    if not is_alive(pid, expected_start):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int, timeout: float, expected_start: int | None = None) -> bool:
    """Wait until the process is gone (reaping it if it is our child).

    Woken by a pidfd the moment it exits where the kernel has them (a stop's wait is
    on the path of every command that ends a VM), else polled."""
    deadline = time.monotonic() + timeout
    try:
        fd: int | None = os.pidfd_open(pid)
    except OSError:  # gone already, or no pidfds here
        fd = None
    try:
        while True:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            if not is_alive(pid, expected_start):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if fd is None:
                time.sleep(min(0.05, left))
                continue
            ready, _, _ = select.select([fd], [], [], left)
            if ready:  # it exited; should it still look alive, poll from here on
                os.close(fd)
                fd = None
    finally:
        if fd is not None:
            os.close(fd)


def kill_and_wait(pid: int, expected_start: int | None = None, timeout: float = 10.0) -> bool:
    """SIGKILL a process we own and wait for it to go."""
    signal_pid(pid, signal.SIGKILL, expected_start)
    return wait_gone(pid, timeout, expected_start)
