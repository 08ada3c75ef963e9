"""Keep a VM's serial log under a size cap: QEMU writes a pipe, a small pump rotates.

QEMU's chardev ``logfile`` grows forever and QEMU cannot cap it, while the guest
decides how much it prints. So QEMU gets the write end of a pipe (``-add-fd`` and
``logfile=/dev/fdset/N``) and a detached pump, started before QEMU, holds the read
end: it appends to serial.log and, when that reaches the cap, renames it to
serial.log.1 (replacing the older one), so the two never hold more than twice the
cap. QEMU outlives the CLI and so does the pump; it needs nothing else resident and
exits when QEMU closes the pipe (on a stop, a kill or a crash), so nothing is left
behind. If the pump dies, QEMU's writes fail with EPIPE and are dropped.

Run as ``python -m cloudlet.driver.qemu.serial_pump LOG MAX_BYTES`` with the pipe
on stdin.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
from pathlib import Path

from cloudlet.host import processes
from cloudlet.host.run import spawn
from cloudlet.spec.units import KIB, MIB

DEFAULT_MAX = 1 * MIB
MIN_MAX = 64 * KIB
READ_SIZE = 64 * KIB
# A larger pipe lets the guest print a burst while the pump starts (Python takes a
# moment); unprivileged users are limited to /proc/sys/fs/pipe-max-size (1 MiB).
PIPE_SIZE = 1 * MIB
LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
LOG_MODE = 0o640


def rotated(log: Path) -> Path:
    """Where the previous part of a capped log is kept."""
    return log.with_name(log.name + ".1")


def start(log: Path, max_bytes: int, pid_file: Path) -> int:
    """Start a pump for ``log``; return the pipe's write end for QEMU (the caller closes it).

    The pump's pid and start time go to ``pid_file`` so that ``finish`` can wait for it.
    """
    read_fd, write_fd = os.pipe()
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        argv = [sys.executable, "-m", "cloudlet.driver.qemu.serial_pump", str(log), str(max_bytes)]
        proc = spawn(argv, stdin=read_fd, detach=True)
        pid_file.write_text(f"{proc.pid} {processes.start_time(proc.pid) or 0}\n")
    except BaseException:
        os.close(write_fd)
        raise
    finally:
        os.close(read_fd)
    return write_fd


def finish(pid_file: Path, timeout: float = 10.0) -> None:
    """After QEMU is gone: wait until the pump has written the last bytes and exited.

    So a log read right after a stop is complete, and no pump outlives its VM (one
    stuck for ``timeout`` seconds is killed).
    """
    try:
        pid_text, start_text = pid_file.read_text().split()
        pid, started = int(pid_text), int(start_text) or None
    except (OSError, ValueError):
        return
    if not processes.wait_gone(pid, timeout, started):
        processes.kill_and_wait(pid, started)


class CappedLog:
    """Appends to a file, rotating it to ``.1`` before it would pass ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max(max_bytes, MIN_MAX)
        self.fd = os.open(path, LOG_FLAGS, LOG_MODE)
        self.size = os.fstat(self.fd).st_size

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = self.max_bytes - self.size
            if room <= 0:
                self._rotate()
                continue
            written = os.write(self.fd, view[:room])
            self.size += written
            view = view[written:]

    def _rotate(self) -> None:
        os.close(self.fd)
        os.replace(self.path, rotated(self.path))
        self.fd = os.open(self.path, LOG_FLAGS, LOG_MODE)
        self.size = 0

    def close(self) -> None:
        os.close(self.fd)


def pump(source: int, log: CappedLog) -> None:
    """Copy ``source`` into ``log`` until end of file."""
    while data := os.read(source, READ_SIZE):
        log.write(data)


def main(argv: list[str]) -> int:
    """The pump process: quiet, and gone when QEMU closes its end of the pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if len(argv) != 2 or not argv[1].isdigit():
        return 2
    try:
        log = CappedLog(Path(argv[0]), int(argv[1]))
    except OSError:
        return 1
    try:
        pump(0, log)
    except OSError:
        # The instance directory went away (the VM was deleted): nothing left to keep.
        return 1
    finally:
        with contextlib.suppress(OSError):
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
