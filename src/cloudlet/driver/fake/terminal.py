"""The fake driver's terminal: a socket pair whose far end a small fake shell serves.

It echoes what is typed (as a pty does), answers ``tty``, ``id -un``, ``id -u``,
``echo`` (with the account's environment) and ``exit N``, and runs other commands
through the fake guest's exec. Enough for the contract suite and engine tests.
"""

from __future__ import annotations

import contextlib
import shlex
import socket
import threading
from collections.abc import Callable

from cloudlet.driver.base import ExecResult, GuestTerminal
from cloudlet.guest.run_as import GuestAccount, split_run_as

FakeExec = Callable[[list[str]], ExecResult]


class FakeTerminal(GuestTerminal):
    def __init__(self, argv: list[str], run: FakeExec, on_close: Callable[[], None]) -> None:
        self._ours, self._theirs = socket.socketpair()
        self._code: int | None = None
        self._closed = False
        self._on_close = on_close
        parsed = split_run_as(argv)
        account = parsed[0] if parsed else GuestAccount("root", 0, 0, "/root", "/bin/sh")
        term = parsed[1] if parsed else ""
        program = parsed[2] if parsed else argv
        self._env = {
            "HOME": account.home,
            "USER": account.name,
            "LOGNAME": account.name,
            "SHELL": account.shell,
            "TERM": term,
        }
        self._account = account
        self._run = run
        self._thread = threading.Thread(target=self._serve, args=(program,), daemon=True)
        self._thread.start()

    # the guest side ------------------------------------------------------
    def _say(self, text: str) -> None:
        with contextlib.suppress(OSError):
            self._theirs.sendall(text.replace("\n", "\r\n").encode())

    def _command(self, words: list[str]) -> int | None:
        """Run one command; an int from ``exit`` ends the shell."""
        if not words:
            return None
        if words[0] == "exit":
            return int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
        if words == ["tty"]:
            self._say("/dev/pts/0\n")
        elif words == ["id", "-un"]:
            self._say(f"{self._account.name}\n")
        elif words == ["id", "-u"]:
            self._say(f"{self._account.uid}\n")
        elif words[0] == "echo":
            line = " ".join(words[1:])
            for key, value in self._env.items():
                line = line.replace(f"${key}", value)
            self._say(line + "\n")
        else:
            result = self._run(words)
            self._say((result.stdout + result.stderr).decode("utf-8", "replace"))
        return None

    def _line(self, line: str) -> int | None:
        for part in line.split(";"):
            try:
                words = shlex.split(part)
            except ValueError:
                continue
            ended = self._command(words)
            if ended is not None:
                return ended
        return None

    def _serve(self, program: list[str]) -> None:
        if program:
            line = program[2] if program[:2] == ["sh", "-c"] else shlex.join(program)
            ended = self._line(line)
            self._code = 0 if ended is None else ended
        else:
            self._shell()
        with contextlib.suppress(OSError):
            self._theirs.close()

    def _shell(self) -> None:
        pending = b""
        self._say("$ ")
        while True:
            try:
                data = self._theirs.recv(4096)
            except OSError:
                data = b""
            if not data:
                self._code = 129  # hung up
                return
            self._say(data.decode("utf-8", "replace").replace("\r", "\n"))
            pending += data.replace(b"\r", b"\n")
            while b"\n" in pending:
                raw, pending = pending.split(b"\n", 1)
                ended = self._line(raw.decode("utf-8", "replace"))
                if ended is not None:
                    self._code = ended
                    return
                self._say("$ ")

    # the host side -------------------------------------------------------
    def fileno(self) -> int:
        return self._ours.fileno()

    def read(self, size: int = 65536) -> bytes:
        try:
            return self._ours.recv(size)
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self._ours.sendall(data)

    def exit_code(self) -> int | None:
        self._thread.join(0.05)
        return None if self._thread.is_alive() else self._code

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self._ours.shutdown(socket.SHUT_RDWR)
        self._ours.close()
        self._thread.join(5.0)
        self._on_close()
