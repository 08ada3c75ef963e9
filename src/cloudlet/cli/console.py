"""Relay the terminal to a byte stream in the VM (serial console, guest terminal)."""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys
import termios
import time
import tty
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

DETACH_BYTE = b"\x1d"  # Ctrl-]
DETACH_KEY = "Ctrl-]"
# After the far side said it ended, its last output is read until it pauses this long.
DRAIN_QUIET = 0.3
DRAIN_MAX = 3.0


class Stream(Protocol):
    """Bytes both ways; ``read`` returns b"" at the end."""

    def fileno(self) -> int: ...
    def read(self, size: int = 65536) -> bytes: ...
    def write(self, data: bytes) -> None: ...


class _SocketStream:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, size: int = 65536) -> bytes:
        return self.sock.recv(size)

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)


def attach(socket_path: Path) -> None:
    """Relay bytes both ways until the user detaches, stdin ends, or the VM goes away."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(socket_path))
    try:
        stream = _SocketStream(sock)
        stream.write(b"\r")  # wake the shell so the user sees a prompt
        relay(stream)
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def relay(
    stream: Stream, *, ended: Callable[[], bool] | None = None, interval: float = 0.5
) -> bool:
    """Relay stdin to ``stream`` and its bytes to stdout, stdin in raw mode when it is a
    terminal, until the stream ends, stdin ends, ``ended()`` (asked every ``interval``
    seconds) says the far side is done, or the user presses Ctrl-]. True: detached."""
    stdin_fd = sys.stdin.fileno()
    stdout_fd = sys.stdout.fileno()
    saved = termios.tcgetattr(stdin_fd) if os.isatty(stdin_fd) else None
    selector = selectors.DefaultSelector()
    selector.register(stream.fileno(), selectors.EVENT_READ, "stream")
    selector.register(stdin_fd, selectors.EVENT_READ, "stdin")
    try:
        if saved is not None:
            tty.setraw(stdin_fd)
        asked = time.monotonic()
        while True:
            for key, _ in selector.select(interval if ended else None):
                if key.data == "stream":
                    data = stream.read(65536)
                    if not data:
                        return False
                    _write_all(stdout_fd, data)
                    continue
                data = os.read(stdin_fd, 4096)
                if not data:
                    return False
                if DETACH_BYTE in data:
                    before = data.split(DETACH_BYTE, 1)[0]
                    if before:
                        stream.write(before)
                    return True
                stream.write(data)
            if ended is not None and time.monotonic() - asked >= interval:
                asked = time.monotonic()
                if ended():
                    _drain(stream, stdout_fd)
                    return False
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
        selector.close()


def _drain(stream: Stream, stdout_fd: int) -> None:
    """The far side ended: what it wrote last may still be on its way."""
    selector = selectors.DefaultSelector()
    selector.register(stream.fileno(), selectors.EVENT_READ)
    deadline = time.monotonic() + DRAIN_MAX
    try:
        while time.monotonic() < deadline and selector.select(DRAIN_QUIET):
            data = stream.read(65536)
            if not data:
                return
            _write_all(stdout_fd, data)
    finally:
        selector.close()
