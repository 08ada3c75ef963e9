"""The host side of a process VM's I/O: the CLI's stdio to and from the guest's ports.

One thread per stream, each copying 64 KiB at a time, so memory stays flat however
much flows and a slow reader slows the guest down (virtio-serial has flow
control) instead of filling memory. The status port says when the program ended,
its exit code and how many bytes each stream carried; the relay reads until it has
them all, then tells the guest it may power off.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from dataclasses import dataclass, field

from cloudlet.errors import CloudletError
from cloudlet.guest.landing import CopyLimits
from cloudlet.process import copies
from cloudlet.process import guest_init as g
from cloudlet.spec.process import CopySpec

CHUNK = 64 * 1024
# The status port carries short lines ("exit 0 12 0"); a guest may send anything.
MAX_STATUS_LINE = 4096
MAX_NOTES = 20


@dataclass
class Outcome:
    """How a run ended: the program's exit code, or why there is none."""

    exit_code: int | None = None
    timed_out: bool = False
    failure: str | None = None
    copy_out: dict[int, str] = field(default_factory=dict)  # index -> ok|missing|failed|error
    notes: list[str] = field(default_factory=list)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Pump(threading.Thread):
    """Socket -> fd until EOF or until ``expect`` bytes (once known) have arrived."""

    def __init__(self, name: str, conn: socket.socket, fd: int) -> None:
        super().__init__(name=f"relay-{name}", daemon=True)
        self.conn = conn
        self.fd = fd
        self.received = 0
        self.expect: int | None = None
        self.broken = False

    def run(self) -> None:
        try:
            while self.expect is None or self.received < self.expect:
                ready, _, _ = select.select([self.conn], [], [], 0.1)
                if not ready:
                    continue
                data = self.conn.recv(CHUNK)
                if not data:
                    return
                if not self.broken:
                    try:
                        _write_all(self.fd, data)
                    except (BrokenPipeError, OSError):
                        # The reader went away (| head): keep draining so the guest finishes.
                        self.broken = True
                # Counted once written: ``received`` reaching ``expect`` means all is out.
                self.received += len(data)
        except OSError:
            return

    def expect_total(self, count: int) -> None:
        """The guest sent ``count`` bytes in all: stop once they are here.

        When they all are, the pump may sit in its wait for more: shutting the
        socket's reading side wakes it at once (the guest writes no more)."""
        self.expect = count
        if self.received >= count:
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RD)


class _Feed(threading.Thread):
    """fd -> socket until EOF on the fd; then the socket is shut so the guest reads EOF."""

    def __init__(self, fd: int, conn: socket.socket) -> None:
        super().__init__(name="relay-stdin", daemon=True)
        self.fd = fd
        self.conn = conn

    def run(self) -> None:
        try:
            while True:
                data = os.read(self.fd, CHUNK)
                if not data:
                    break
                self.conn.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_WR)


class _Job(threading.Thread):
    """Runs one copy (a tar stream) and keeps its error for the report."""

    def __init__(self, name: str, work: copies.CopyWork) -> None:
        super().__init__(name=name, daemon=True)
        self.work = work
        self.error: str | None = None

    def run(self) -> None:
        try:
            self.work()
        except CloudletError as exc:  # reported with its hint (how to raise a limit, say)
            self.error = f"{exc.message}; {exc.hint}" if exc.hint else exc.message
        except Exception as exc:  # reported, not raised: the run's result still counts
            self.error = str(exc) or type(exc).__name__


class Relay:
    """Wires connected port sockets to the CLI's fds and follows the status port."""

    def __init__(
        self,
        conns: dict[str, socket.socket],
        *,
        stdin_fd: int | None,
        stdout_fd: int,
        stderr_fd: int,
        tty: bool,
        copy_in: tuple[CopySpec, ...] = (),
        copy_out: tuple[CopySpec, ...] = (),
        copy_limits: CopyLimits | None = None,
    ) -> None:
        self.status = conns[g.PORT_STATUS]
        self.pumps: list[_Pump] = []
        self.jobs: list[_Job] = []
        self.copy_out = copy_out
        self._out_jobs: dict[int, _Job] = {}
        if tty:
            self.pumps.append(_Pump("tty", conns[g.PORT_TTY], stdout_fd))
            self.feeds = [_Feed(stdin_fd, conns[g.PORT_TTY])] if stdin_fd is not None else []
        else:
            self.pumps.append(_Pump("stdout", conns[g.PORT_STDOUT], stdout_fd))
            self.pumps.append(_Pump("stderr", conns[g.PORT_STDERR], stderr_fd))
            stdin = conns[g.PORT_STDIN]
            if stdin_fd is None:
                stdin.shutdown(socket.SHUT_WR)
                self.feeds = []
            else:
                self.feeds = [_Feed(stdin_fd, stdin)]
        for index, spec in enumerate(copy_in):
            conn = conns[g.copy_in_port(index)]
            self.jobs.append(_Job(f"copy-in-{index}", copies.send_copy(spec, conn)))
        for index, spec in enumerate(copy_out):
            conn = conns[g.copy_out_port(index)]
            job = _Job(f"copy-out-{index}", copies.receive_tree(conn, spec, copy_limits))
            self._out_jobs[index] = job
            self.jobs.append(job)

    def run(self, timeout: float | None) -> Outcome:
        for thread in [*self.pumps, *self.feeds, *self.jobs]:
            thread.start()
        outcome = self._follow_status(timeout)
        if outcome.exit_code is None:
            return outcome
        for pump in self.pumps:
            pump.join()
        for index, job in self._out_jobs.items():
            if outcome.copy_out.get(index) == "ok":
                job.join()
                if job.error:
                    outcome.copy_out[index] = "error"
                    outcome.notes.append(f"copy-out {self.copy_out[index].guest}: {job.error}")
        with contextlib.suppress(OSError):
            self.status.sendall(b"done\n")
        return outcome

    def _follow_status(self, timeout: float | None) -> Outcome:
        outcome = Outcome()
        deadline = None if timeout is None else time.monotonic() + timeout
        buffer = b""
        while True:
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            ready, _, _ = select.select([self.status], [], [], wait)
            if deadline is not None and time.monotonic() >= deadline and not ready:
                outcome.timed_out = True
                return outcome
            if not ready:
                continue
            data = self.status.recv(4096)
            if not data:
                outcome.failure = "the VM stopped before the program finished"
                return outcome
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if self._status_line(line.decode(errors="replace").split(), outcome):
                    return outcome
            if len(buffer) > MAX_STATUS_LINE:
                # The guest writes this port: a line without end must not grow our memory.
                outcome.failure = f"the guest sent a status line over {MAX_STATUS_LINE} bytes"
                return outcome

    def _status_line(self, words: list[str], outcome: Outcome) -> bool:
        """Apply one status line; True when it was the last one."""
        if not words:
            return False
        if words[0] == "copyout" and len(words) == 3 and words[1].isdigit():
            outcome.copy_out[int(words[1])] = words[2]
            return False
        if words[0] == "fail":
            outcome.failure = " ".join(words[1:]) or "the guest could not start the program"
            return True
        if words[0] == "exit" and len(words) == 4 and all(w.isdigit() for w in words[1:]):
            outcome.exit_code = int(words[1])
            for pump, count in zip(self.pumps, (int(words[2]), int(words[3])), strict=False):
                pump.expect_total(count)
            return True
        if len(outcome.notes) < MAX_NOTES:
            outcome.notes.append(f"unexpected status from the guest: {' '.join(words)[:80]}")
        return False
